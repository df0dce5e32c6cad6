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
    """The tests that need the official layouts read them from the repository, not ../shared."""
    names = {p.name for p in (ROOT / "tests" / "official_keys").glob("*.json")}
    assert {"acmix_resnet26.json", "acmix_swin_tiny.json", "glnet_4g.json"} <= names
