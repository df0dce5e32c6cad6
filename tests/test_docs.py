"""The documentation site builds offline with ``mkdocs build --strict`` (no warnings).

The build also checks what a reader relies on: every public name of every package has an entry in
the API reference, equations were converted to MathML (no raw LaTeX left), and the generated
figures and included tables are in the site. Skipped only when MkDocs is not installed (the
``docs`` and ``test`` extras install it).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ["layers", "models", "data", "train", "bench", "deploy", "viz"]

pytest.importorskip("mkdocs", reason="MkDocs is not installed (pip install -e '.[docs]')")
pytest.importorskip("material", reason="mkdocs-material is not installed")
pytest.importorskip("mkdocstrings_handlers.python", reason="mkdocstrings[python] is not installed")
pytest.importorskip("latex2mathml", reason="latex2mathml is not installed")


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1", MPLBACKEND="Agg")
    cmd = [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)]
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log
    assert "WARNING" not in log, log
    return out


def _page(site: Path, path: str) -> str:
    return (site / path / "index.html").read_text(encoding="utf-8")


def test_build_is_strict_clean(site):
    assert (site / "index.html").is_file()
    assert (site / "search" / "search_index.json").is_file()


def test_every_public_name_is_in_the_api_reference(site):
    missing = []
    for package in ["convattn", *(f"convattn.{p}" for p in PACKAGES)]:
        module = importlib.import_module(package)
        page = _page(site, f"reference/{package.rpartition('.')[2]}")
        for name in module.__all__:
            documented = f'id="{package}.{name}"' in page
            if package == "convattn" and name in ("__version__", *PACKAGES):
                documented = f"convattn.{name}" in page or name in page
            if not documented:
                missing.append(f"{package}.{name}")
    assert not missing, f"public names without an API reference entry: {missing}"


def test_math_is_mathml_and_nothing_needs_the_network(site):
    pages = sorted(site.rglob("*.html"))
    maths = 0
    for path in pages:
        html = path.read_text(encoding="utf-8")
        maths += html.count("<math ")
        # arithmatex's generic wrappers must all have been converted by docs/hooks.py.
        assert not re.search(r'class="arithmatex">\\[(\[]', html), path
        # No CDN scripts or web fonts: the site works offline.
        for needle in ("cdn.jsdelivr", "unpkg.com", "fonts.googleapis", "mathjax", "katex"):
            assert needle not in html.lower(), (path, needle)
    assert maths > 50


def test_figures_tables_and_includes_are_in_the_site(site):
    figures = sorted(p.name for p in (site / "assets" / "figures").glob("*.png"))
    assert figures == [
        "acmix_paths.png",
        "glmix_slots.png",
        "operator_footprints.png",
        "viz_slots.png",
        "xvolution_directions.png",
    ]
    # MODELS.md is included as it is, so the zoo page cannot go stale.
    models = _page(site, "models")
    for name in ("glnet_4g", "acmix_swin_tiny", "xvolution_resnet50", "glnet_4g.pth"):
        assert name in models
    # Measurements come from benchmarks/results/ops.json at build time.
    assert "fwd+bwd ms" in _page(site, "operators/acmix")
    assert (site / "benchmarks" / "results" / "ops_scaling.png").is_file()
    assert "Operator benchmark" in _page(site, "benchmarks/results/ops")
    assert "Keep a Changelog" in _page(site, "changelog")


def _hooks():
    spec = importlib.util.spec_from_file_location("convattn_docs_hooks", ROOT / "docs" / "hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _Files:
    """The one method of ``mkdocs.structure.files.Files`` that link rewriting uses."""

    def __init__(self, paths: set[str]) -> None:
        self.paths = paths

    def get_file_from_path(self, path: str):
        return path if path in self.paths else None


def test_included_files_links_are_rewritten_for_the_site():
    rewrite = _hooks().rewrite_links
    files = _Files({"benchmarks/results/ops.md", "benchmarks/results/ops_scaling.png"})
    text = (
        "Tables: [ops](benchmarks/results/ops.md#targets), "
        "![plot](benchmarks/results/ops_scaling.png), [how](benchmarks/README.md), "
        "[zoo](MODELS.md), [code](src/convattn/bench/runner.py), [web](https://example.org), "
        "[here](#section)\n```text\n[kept](not/rewritten.md)\n```\n"
    )
    out = rewrite(text, "BENCHMARKS.md", "benchmarks.md", files)
    assert "[ops](benchmarks/results/ops.md#targets)" in out
    assert "![plot](benchmarks/results/ops_scaling.png)" in out
    assert "[how](benchmarks/methods.md)" in out
    assert "[zoo](models.md)" in out
    assert "code," in out and "runner.py" not in out  # no page for it: plain text
    assert "[web](https://example.org)" in out and "[here](#section)" in out
    assert "[kept](not/rewritten.md)" in out  # code blocks are left alone
    # From a mirrored page one level down, targets are relative to that page.
    out = rewrite(
        "[up](../README.md)", "benchmarks/results/ops.md", "benchmarks/results/ops.md", files
    )
    assert out == "[up](../methods.md)"
