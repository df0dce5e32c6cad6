"""parse_data_spec / DataSpec: every accepted form, round trips, and clear errors for bad specs."""

from pathlib import Path

import pytest

from convattn.data import DataSpec, parse_data_spec


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("digits", DataSpec("digits")),
        ("synthetic:shapes", DataSpec("synthetic", name="shapes")),
        ("synthetic:stripes:100", DataSpec("synthetic", name="stripes", train_size=100)),
        (
            "synthetic:shapes:64:16",
            DataSpec("synthetic", name="shapes", train_size=64, val_size=16),
        ),
        ("cifar10:/data/c10", DataSpec("cifar10", path=Path("/data/c10"))),
        ("cifar100:rel/c100", DataSpec("cifar100", path=Path("rel/c100"))),
        ("folder:/data/imgs", DataSpec("folder", path=Path("/data/imgs"))),
        ("/data/imagenette", DataSpec("folder", path=Path("/data/imagenette"))),
        ("some/relative/dir", DataSpec("folder", path=Path("some/relative/dir"))),
        ("C:/data", DataSpec("folder", path=Path("C:/data"))),  # a drive letter is not a kind
        ("  digits  ", DataSpec("digits")),
    ],
)
def test_accepted_forms(spec, expected):
    parsed = parse_data_spec(spec)
    assert parsed == expected
    assert parse_data_spec(str(parsed)) == parsed
    assert parse_data_spec(parsed) is parsed


def test_defaults_and_home_expansion():
    spec = parse_data_spec("synthetic:shapes")
    assert (spec.train_size, spec.val_size) == (512, 128)
    assert "~" not in str(parse_data_spec("cifar10:~/c10").path)


def test_colon_in_existing_folder_name_is_a_path(tmp_path):
    folder = tmp_path / "weird:name"
    folder.mkdir()
    assert parse_data_spec(str(folder)) == DataSpec("folder", path=folder)


@pytest.mark.parametrize(
    ("spec", "why"),
    [
        ("", "non-empty"),
        ("   ", "non-empty"),
        (None, "non-empty"),
        (3, "non-empty"),
        ("cifar:/data", "unknown kind 'cifar'"),
        ("imagenet:/data", "unknown kind"),
        ("synthetic:nope", "unknown synthetic task 'nope'"),
        ("synthetic:", "unknown synthetic task"),
        ("synthetic:shapes:0", "positive integers"),
        ("synthetic:shapes:10:x", "positive integers"),
        ("synthetic:shapes:1:2:3", "positive integers"),
        ("cifar10:", "needs a path"),
        ("folder:", "needs a path"),
        ("digits:extra", "takes no argument"),
    ],
)
def test_bad_specs_name_the_spec_and_list_forms(spec, why):
    with pytest.raises(ValueError) as info:
        parse_data_spec(spec)
    message = str(info.value)
    assert repr(spec) in message
    assert why in message
    for form in ("'digits'", "synthetic:NAME", "cifar10:PATH", "cifar100:PATH", "shapes, stripes"):
        assert form in message


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"kind": "mnist"}, "kind"),
        ({"kind": "folder"}, "path"),
        ({"kind": "synthetic"}, "name"),
        ({"kind": "synthetic", "name": "shapes", "train_size": 0}, "train_size"),
        ({"kind": "synthetic", "name": "shapes", "val_size": True}, "val_size"),
    ],
)
def test_dataspec_validates_fields(kwargs, field):
    with pytest.raises(ValueError, match=field):
        DataSpec(**kwargs)


def test_dataspec_path_coerced_to_path():
    assert DataSpec("folder", path="x/y").path == Path("x/y")
