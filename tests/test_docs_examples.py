"""Every ```python block of the documentation runs: docs/**/*.md and README.md.

The blocks of one page run in order in one namespace (later blocks use names from earlier ones),
in a fresh temporary working directory. A block is skipped only when the line before its fence
is exactly ``<!-- skip-test -->`` (for things that cannot run here: multi-node jobs, downloads).
```bash blocks are not run.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SKIP_MARKER = "<!-- skip-test -->"
_FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>`{3,}|~{3,})\s*(?P<lang>[\w+-]*)")


@dataclass
class Block:
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    skipped: bool


def extract_blocks(text: str) -> list[Block]:
    """Fenced code blocks of a markdown text (indented ones in admonitions and tabs included)."""
    blocks: list[Block] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if m is None:
            i += 1
            continue
        indent, fence, lang = len(m["indent"]), m["fence"], m["lang"].lower()
        previous = next((ln.strip() for ln in reversed(lines[:i]) if ln.strip()), "")
        body, j = [], i + 1
        while j < len(lines) and not lines[j].strip().startswith(fence):
            line = lines[j]
            body.append(line[indent:] if not line[:indent].strip() else line.lstrip())
            j += 1
        if j == len(lines):
            raise ValueError(f"unclosed code fence at line {i + 1}")
        blocks.append(Block(i + 1, lang, "\n".join(body) + "\n", previous == SKIP_MARKER))
        i = j + 1
    return blocks


def _pages() -> list[Path]:
    return [*sorted((ROOT / "docs").rglob("*.md")), ROOT / "README.md"]


PAGES = [p for p in _pages() if any(b.lang == "python" for b in extract_blocks(p.read_text()))]


def test_extract_blocks_finds_fences_and_markers():
    text = (
        "intro\n\n```python\na = 1\n```\n\n<!-- skip-test -->\n```python\nraise SystemExit\n```\n"
        "\n!!! note\n    ```python\n    b = a + 1\n    ```\n\n```bash\nls\n```\n"
    )
    blocks = extract_blocks(text)
    assert [(b.lang, b.skipped) for b in blocks] == [
        ("python", False),
        ("python", True),
        ("python", False),
        ("bash", False),
    ]
    assert blocks[2].code == "b = a + 1\n"
    assert blocks[0].line == 3


def test_documentation_has_examples():
    names = {p.relative_to(ROOT).as_posix() for p in PAGES}
    assert "README.md" in names
    for page in ("docs/getting-started.md", "docs/operators/xvolution.md"):
        assert page in names


def test_skip_markers_only_before_python_blocks():
    """A marker elsewhere would silently skip nothing; keep the opt-outs visible and rare."""
    skipped = []
    for page in _pages():
        text = page.read_text()
        blocks = extract_blocks(text)
        skipped += [f"{page.name}:{b.line}" for b in blocks if b.skipped]
        assert text.count(SKIP_MARKER) == sum(b.skipped and b.lang == "python" for b in blocks), (
            f"{page}: '{SKIP_MARKER}' must directly precede a ```python block"
        )
    assert len(skipped) <= 5, f"too many skipped examples: {skipped}"


def test_examples_are_ruff_formatted(tmp_path):
    """Examples are code people copy: the project's formatting (ruff, 100 columns) applies."""
    for page in PAGES:
        for block in extract_blocks(page.read_text()):
            if block.lang == "python":
                name = page.relative_to(ROOT).as_posix().replace("/", "__")
                (tmp_path / f"{name}__line{block.line}.py").write_text(block.code)
    exe = shutil.which("ruff")
    cmd = [exe] if exe else [sys.executable, "-m", "ruff"]
    args = ["format", "--check", "--diff", "--no-cache", "--line-length", "100", "."]
    result = subprocess.run([*cmd, *args], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("page", PAGES, ids=[p.relative_to(ROOT).as_posix() for p in PAGES])
def test_page_examples_run(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small examples: one thread is as fast and leaves the CPU alone
    namespace: dict = {"__name__": "__docs_example__"}
    try:
        for block in extract_blocks(page.read_text()):
            if block.lang != "python" or block.skipped:
                continue
            # Leading newlines: line numbers in tracebacks are the page's own.
            code = "\n" * block.line + block.code
            exec(compile(code, str(page.relative_to(ROOT)), "exec"), namespace)
    finally:
        torch.set_num_threads(threads)
