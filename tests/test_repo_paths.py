"""Files outside docs/ only cite paths that exist in the repository.

The repository explains itself: code, tests and the top-level pages may point at a file of the
repository (``docs/notes/acmix.md``, ``tests/layers/ref_*.py``), never at one outside it (the
development machine's shared folder, a parent folder, an absolute path). A path counts when it
starts with a top-level folder of the repository (``src/``, ``tests/``, ``docs/``, ``benchmarks/``,
``scripts/``, ``.ci/``), climbs out of its file's folder (``../``), names the ``shared/`` folder of
the development machine, or is an absolute path under ``/work/``. It must then exist relative to the
repository root or to the citing file's folder (``*`` patterns must match a file). Templates
(``{run}``, ``<name>``) are skipped. docs/ is left to ``mkdocs build --strict`` (tests/test_docs.py),
whose links are relative to the page, and so are the files that name pages of the built site
(:data:`SITE_RELATIVE`).
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOP_FOLDERS = ("src", "tests", "docs", "benchmarks", "scripts", ".ci")
_CHAR = r"[\w.*/+-]"
PATH = re.compile(
    rf"(?<![\w./-])("
    rf"(?:\.\./)+{_CHAR}+"  # climbs out of the file's folder
    rf"|/work/{_CHAR}*"  # an absolute path on the development machine
    rf"|shared/{_CHAR}+"  # the development machine's shared folder
    rf"|(?:{'|'.join(re.escape(f) for f in TOP_FOLDERS)})/{_CHAR}+"  # a repository folder
    rf")"
)
_TEMPLATE = re.compile(r"[{}<>$]")
# Files whose paths are pages of the built documentation site (relative to docs/, some generated
# at build time by docs/hooks.py); mkdocs build --strict checks them.
SITE_RELATIVE = {"mkdocs.yml", "tests/test_docs.py"}
# This file names missing paths on purpose (the planted citations below).
SELF = Path(__file__).resolve().relative_to(ROOT).as_posix()


def tracked_files() -> list[Path]:
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True, text=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    return [ROOT / name for name in out.split("\0") if name]


def cited_paths(text: str) -> list[str]:
    """The path-like tokens of ``text`` (trailing punctuation and ``:line`` suffixes removed)."""
    found = []
    for match in PATH.finditer(text):
        end = match.end()
        if end < len(text) and _TEMPLATE.match(text[end]):
            continue  # benchmarks/results/models/{run}/...: a template, not a path
        found.append(match.group(1).rstrip(".,;:)/") or match.group(1))
    return found


def exists(path: str, citing_file: Path) -> bool:
    if path.startswith(("/work/", "shared/")) or path == "/work/":
        return False
    for base in (ROOT, citing_file.parent):
        candidate = base / path
        if "*" in path:
            if any(base.glob(path)):
                return True
        elif candidate.exists() and candidate.resolve().is_relative_to(ROOT):
            return True
    return False


def missing_paths(files: list[Path]) -> list[str]:
    problems = []
    for file in files:
        rel = file.relative_to(ROOT)
        skipped = rel.parts[0] == "docs" or rel.as_posix() in SITE_RELATIVE | {SELF}
        if skipped or not file.is_file():
            continue
        try:
            text = file.read_text()
        except UnicodeDecodeError:
            continue  # images and other binary files
        for number, line in enumerate(text.splitlines(), 1):
            for path in cited_paths(line):
                if not exists(path, file):
                    problems.append(f"{rel}:{number}: {path}")
    return problems


def test_every_cited_path_exists():
    assert missing_paths(tracked_files()) == []


@pytest.mark.parametrize(
    ("line", "bad"),
    [
        # Outside paths are assembled here, so this file names none itself.
        ('"""Literal references, from the spec ({S}/specs/acmix.md 1.1-1.5)."""', True),
        ("# see ../{S}/specs/xvolution.md section 3", True),
        ("Written from /work/{S}/specs/glmix.md, section 1.", True),
        ("The oracle lives in tests/layers/ref_nothing.py.", True),
        ("See ``docs/notes/missing.md`` for the details.", True),
        ("The class is in src/convattn/layers/nowhere.py:12.", True),
        ("The oracle is tests/layers/ref_acmix.py (section 1).", False),
        ("See ``docs/notes/acmix.md`` §3 and tests/layers/ref_*.py.", False),
        ("python benchmarks/bench_ops.py --out /tmp/bench_ops_quick", False),
        ('where = f"benchmarks/results/models/{run}/results.md"', False),
        ("torch.nn.functional.scaled_dot_product_attention / sqrt(d)", False),
    ],
)
def test_the_check_catches_planted_citations(tmp_path, line, bad):
    planted = ROOT / "src" / "convattn" / "planted_citation.py"  # never written to disk
    line = line.replace("{S}", "sha" + "red")
    problems = [p for p in cited_paths(line) if not exists(p, planted)]
    assert bool(problems) is bad, (line, problems)
