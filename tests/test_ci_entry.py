"""CI runs .ci/run; it must run exactly the test command the README gives."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    commands = re.findall(r"^pip install .*&& python -m pytest.*$", readme, re.M)
    assert len(commands) == 1, commands
    lines = [ln.strip() for ln in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert commands[0] in lines


def test_official_key_maps_ship_with_the_tests():
    """The tests that need the official layouts read them from the repository."""
    names = {p.name for p in (ROOT / "tests" / "official_keys").glob("*.json")}
    assert {"acmix_resnet26.json", "acmix_swin_tiny.json", "glnet_4g.json"} <= names


def test_the_test_command_installs_the_timm_of_the_timm_extra():
    """The README installs timm without its torchvision requirement, at the `timm` extra's range."""
    readme = (ROOT / "README.md").read_text()
    command = re.findall(r"^pip install .*&& python -m pytest.*$", readme, re.M)[0]
    pyproject = (ROOT / "pyproject.toml").read_text()
    (spec,) = re.findall(r'^timm = \["([^"]+)"\]$', pyproject, re.M)
    assert f'pip install --no-deps "{spec}"' in command
    test_extra = re.search(r"^test = \[(.*?)^\]", pyproject, re.M | re.S)[1]
    assert "timm" not in test_extra  # as a requirement it would pull in torchvision
