"""Dependencies inside the package point one way: layers <- models <- data/train/bench/deploy/viz <- cli.

The import graph is read from the source (module-level and function-level imports, relative or
absolute, and ``importlib.import_module("convattn...")`` with a literal name), so a lazy import
inside a function counts as much as one at the top of a file.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

# Lower rank = lower layer. A module may import its own rank or lower ones.
RANK = {
    "_io": 0,
    "_numerics": 0,
    "layers": 0,
    "models": 1,
    **dict.fromkeys(("data", "train", "bench", "deploy", "viz"), 2),
    **dict.fromkeys(("cli", "demo", "__main__"), 3),
    "root": 3,  # convattn/__init__.py re-exports the public API of every layer
}
# Constants any module may read from the package root.
ROOT_CONSTANTS = {"convattn", "convattn.__version__"}
# Same-rank imports that are not allowed either (issue 15: the benchmark must not need training).
FORBIDDEN = {("bench", "train")}
# Sibling modules that import each other lazily (inside functions), not named by issue 15.
KNOWN_CYCLES = {
    ("convattn.models._builder", "convattn.models._init_from"),
    ("convattn.models._builder", "convattn.models._serialization"),
    ("convattn.models._builder", "convattn.models.hub"),
}


def _module_name(path: Path, src: Path) -> str:
    parts = path.relative_to(src).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(src: Path = SRC) -> dict[str, set[str]]:
    """``convattn.x.y`` -> the ``convattn`` modules (or module attributes) it imports."""
    graph = {}
    for path in sorted((src / "convattn").rglob("*.py")):
        name = _module_name(path, src)
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                targets |= {target} | {f"{target}.{alias.name}" for alias in node.names}
            elif isinstance(node, ast.Import):
                targets |= {alias.name for alias in node.names}
            elif (
                isinstance(node, ast.Call)
                and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"
                and node.args
                and isinstance(node.args[0], ast.Constant)
            ):
                targets.add(str(node.args[0].value))
        graph[name] = {t for t in targets if t == "convattn" or t.startswith("convattn.")}
    return graph


def _area(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "root"


def layering_violations(graph: dict[str, set[str]]) -> list[str]:
    found = []
    for module, targets in graph.items():
        area = _area(module)
        for target in sorted(targets - ROOT_CONSTANTS):
            other = _area(target)
            if other == area or other not in RANK:
                continue
            upward = RANK[other] > RANK.get(area, 3)
            if upward or (area, other) in FORBIDDEN:
                found.append(f"{module} imports {target}")
    return found


def cycles_within_packages(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    """Pairs of sibling modules of one subpackage that import each other (directly)."""
    modules = set(graph)

    def resolve(target: str) -> str | None:
        while target and target not in modules:
            target = target.rpartition(".")[0]
        return target or None

    edges = {m: {r for t in ts if (r := resolve(t)) and r != m} for m, ts in graph.items()}
    pairs = []
    for a, targets in edges.items():
        for b in targets:
            same_package = a.rpartition(".")[0] == b.rpartition(".")[0]
            if same_package and a < b and a in edges.get(b, set()):
                pairs.append((a, b))
    return pairs


def test_dependencies_point_one_way():
    assert layering_violations(import_graph()) == []


def test_no_two_modules_of_a_subpackage_import_each_other():
    assert set(cycles_within_packages(import_graph())) <= KNOWN_CYCLES


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("from ..train import engine\n", "convattn.bench.catalog imports convattn.train"),
        ("import convattn.cli\n", "convattn.bench.catalog imports convattn.cli"),
        (
            "import importlib\nimportlib.import_module('convattn.demo')\n",
            "convattn.bench.catalog imports convattn.demo",
        ),
    ],
)
def test_the_checks_catch_a_planted_violation(tmp_path, source, expected):
    package = tmp_path / "convattn" / "bench"
    package.mkdir(parents=True)
    for init in (tmp_path / "convattn" / "__init__.py", package / "__init__.py"):
        init.write_text("")
    (package / "catalog.py").write_text(source)
    assert expected in layering_violations(import_graph(tmp_path))


def test_the_cycle_check_catches_a_planted_cycle(tmp_path):
    package = tmp_path / "convattn" / "bench"
    package.mkdir(parents=True)
    (tmp_path / "convattn" / "__init__.py").write_text("")
    (package / "__init__.py").write_text("")
    (package / "plots.py").write_text("from .report import mode_label\n")
    (package / "report.py").write_text("def f():\n    from .plots import write_plots\n")
    assert cycles_within_packages(import_graph(tmp_path)) == [
        ("convattn.bench.plots", "convattn.bench.report")
    ]


TEST_IMPORT = re.compile(
    r"^\s*(from|import)\s+(tests\b|ref_\w+)"  # a test module or a literal test oracle
    r"|[\"']ref_\w+[\"']"  # an oracle imported by name (importlib)
    r"|/\s*[\"']tests[\"']|[\"']tests/",  # a path into the tests folder (for sys.path)
    re.MULTILINE,
)


def test_the_package_benchmarks_and_scripts_do_not_import_the_tests():
    """The test oracles stay independent: nothing outside tests/ imports them."""
    root = SRC.parent
    offenders = [
        str(path.relative_to(root))
        for folder in ("src", "benchmarks", "scripts", "docs")
        for path in sorted((root / folder).rglob("*.py"))
        if TEST_IMPORT.search(path.read_text())
    ]
    assert offenders == []


@pytest.mark.parametrize(
    "line",
    [
        "from ref_acmix import acmix_reference\n",
        "import tests.helpers\n",
        'sys.path.insert(0, str(ROOT / "tests" / "layers"))\n',
        'REF_DIR = ROOT / "tests" / "layers"\n',
        'ref = importlib.import_module("ref_xvolution")\n',
    ],
)
def test_the_test_import_check_catches_a_planted_import(line):
    assert TEST_IMPORT.search("import sys\n" + line)
