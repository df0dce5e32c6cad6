"""MkDocs hooks of the convattn site (``hooks:`` in ``mkdocs.yml``); everything works offline.

1. Includes. A line ``--8<-- "PATH"`` (PATH relative to the repository root, the syntax of
   ``pymdownx.snippets``) is replaced by that file, so generated files such as ``MODELS.md`` are
   shown as they are and never go stale. Relative links inside the included file are rewritten for
   the including page: to the page that shows the target when there is one (see ``REPO_PAGES``
   and the mirrored benchmark results), otherwise to plain text.
2. Mirrors. ``benchmarks/results/**`` (tables, plots, JSON/CSV) is added to the site under the same
   path and ``benchmarks/README.md`` as ``benchmarks/methods.md``, so the pages can link to and embed
   the committed measurements.
3. Figures. ``docs/gen_figures.py`` renders the operator figures from the library itself at build
   time (once per process) into ``assets/figures/``.
4. Measurements. A line ``<!-- ops-KIND: NAME ... -->`` is replaced by a table rendered from
   ``benchmarks/results/ops.json`` (the committed operator benchmark), so quoted numbers follow
   the latest run: ``ops-env`` (the machine and date), ``ops-table: OP ...`` (per stage shape:
   GMACs, forward and forward+backward time, ratios to the 3x3 conv, peak memory, and the speed-up
   over ``OP_ref`` when that is listed too), ``ops-overview: OP ...`` (forward time as a multiple
   of the conv per shape, and the resolution exponent), ``ops-scaling: OP ...`` (the resolution
   sweep) and ``ops-targets: TEXT`` (the benchmark's PASS/FAIL checks whose name contains TEXT).
5. Math. ``pymdownx.arithmatex`` (generic mode) marks ``$...$`` and ``$$...$$``; this hook
   converts them to MathML with ``latex2mathml``, which browsers render natively: no JavaScript,
   no CDN. A formula that does not convert fails the build.
"""

from __future__ import annotations

import atexit
import html
import importlib.util
import json
import posixpath
import re
import shutil
import tempfile
from pathlib import Path

from latex2mathml.converter import convert as latex_to_mathml
from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[1]
DOCS = Path(__file__).resolve().parent
FIGURES_URI = "assets/figures"

# Repository files that the site shows as a page: repository path -> docs path.
REPO_PAGES = {
    "README.md": "index.md",
    "MODELS.md": "models.md",
    "BENCHMARKS.md": "benchmarks.md",
    "CHANGELOG.md": "changelog.md",
    "benchmarks/README.md": "benchmarks/methods.md",
}
MIRRORED_DIRS = ("benchmarks/results",)
MIRRORED_SUFFIXES = {".md", ".png", ".svg", ".json", ".csv"}

_INCLUDE = re.compile(r'^--8<--\s+"([^"]+)"\s*$')
_OPS = re.compile(r"^<!--\s*ops-(env|table|overview|scaling|targets)(?::\s*(.*?))?\s*-->\s*$")
_FENCE = re.compile(r"^\s*(```|~~~)")
_LINK = re.compile(r'(!?)\[([^\]]*)\]\(\s*([^)\s]+)(\s+"[^"]*")?\s*\)')
_INLINE_MATH = re.compile(r'<span class="arithmatex">\\\((.*?)\\\)</span>', re.S)
_BLOCK_MATH = re.compile(r'<div class="arithmatex">\\\[(.*?)\\\]</div>', re.S)

# docs path of a mirrored page -> its repository path (for rewriting its own links).
_mirrored_pages: dict[str, str] = {}
_figures_dir: Path | None = None


# --- 2 and 3: files ---------------------------------------------------------------------------
def _mirrors() -> dict[str, Path]:
    """docs path -> repository file of everything mirrored into the site."""
    out = {}
    for folder in MIRRORED_DIRS:
        for path in sorted((ROOT / folder).rglob("*")):
            if path.is_file() and path.suffix in MIRRORED_SUFFIXES:
                out[path.relative_to(ROOT).as_posix()] = path
    for repo, docs in REPO_PAGES.items():
        if docs.startswith("benchmarks/") and (ROOT / repo).is_file():
            out[docs] = ROOT / repo
    return out


def _render_figures() -> Path:
    """Run ``docs/gen_figures.py`` once per process into a temporary folder."""
    global _figures_dir
    if _figures_dir is None:
        spec = importlib.util.spec_from_file_location(
            "convattn_docs_figures", DOCS / "gen_figures.py"
        )
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        out = Path(tempfile.mkdtemp(prefix="convattn-docs-figures-"))
        atexit.register(shutil.rmtree, out, ignore_errors=True)
        module.generate(out)
        _figures_dir = out
    return _figures_dir


def on_files(files: Files, config) -> Files:
    _mirrored_pages.clear()
    for uri, path in _mirrors().items():
        if files.get_file_from_path(uri) is None:
            files.append(File.generated(config, uri, abs_src_path=str(path)))
            if path.suffix == ".md":
                _mirrored_pages[uri] = path.relative_to(ROOT).as_posix()
    for path in sorted(_render_figures().glob("*.png")):
        files.append(File.generated(config, f"{FIGURES_URI}/{path.name}", abs_src_path=str(path)))
    return files


# --- 1: includes and link rewriting ----------------------------------------------------------
def _docs_target(repo_path: str, files: Files) -> str | None:
    """The docs path showing repository file ``repo_path``, if the site has one."""
    if repo_path in REPO_PAGES:
        return REPO_PAGES[repo_path]
    if files.get_file_from_path(repo_path) is not None:
        return repo_path
    return None


def rewrite_links(text: str, source: str, page_uri: str, files: Files) -> str:
    """Re-point the relative links of ``text`` (written at repository path ``source``) for the docs
    page ``page_uri``: to the docs file showing the target, else plain text. Code is left alone."""

    def fix(match: re.Match) -> str:
        bang, label, target, title = match.groups()
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I) or target.startswith(("#", "/")):
            return match.group(0)
        path, _, anchor = target.partition("#")
        repo_path = posixpath.normpath(posixpath.join(posixpath.dirname(source), path))
        docs = _docs_target(repo_path, files)
        if docs is None:
            return label
        new = posixpath.relpath(docs, posixpath.dirname(page_uri) or ".")
        return f"{bang}[{label}]({new}{'#' + anchor if anchor else ''}{title or ''})"

    out, fence = [], None
    for line in text.splitlines(keepends=True):
        m = _FENCE.match(line)
        if m and fence is None:
            fence = m.group(1)
        elif m and line.strip().startswith(fence):
            fence = None
        elif fence is None:
            line = _LINK.sub(fix, line)
        out.append(line)
    return "".join(out)


def on_page_markdown(markdown: str, page, config, files: Files) -> str:
    uri = page.file.src_uri
    if uri in _mirrored_pages:
        return rewrite_links(markdown, _mirrored_pages[uri], uri, files)
    lines = []
    for line in markdown.splitlines(keepends=True):
        ops = _OPS.match(line)
        if ops is not None:
            lines.append(render_ops(ops.group(1), ops.group(2) or "", uri) + "\n")
            continue
        m = _INCLUDE.match(line)
        if m is None:
            lines.append(line)
            continue
        source = m.group(1)
        path = ROOT / source
        if not path.is_file():
            raise PluginError(f"{uri}: included file {source!r} does not exist")
        included = path.read_text(encoding="utf-8")
        lines.append(rewrite_links(included, source, uri, files).rstrip("\n") + "\n")
    return "".join(lines)


# --- 4: measurements from benchmarks/results/ops.json -----------------------------------------
OPS_JSON = ROOT / "benchmarks" / "results" / "ops.json"
OP_LABELS = {
    "conv3x3": "conv 3x3 (BN fused)",
    "xvolution": "X-volution, training form",
    "xvolution_deploy": "X-volution, deploy form",
    "acmix": "ACmix",
    "glmix": "GLMix mixer",
    "global_attention": "global self-attention",
    "involution": "involution",
    "xvolution_ref": "X-volution training form, literal loops",
    "xvolution_deploy_ref": "X-volution deploy form, literal loops",
    "acmix_ref": "ACmix, official formulation (unfold)",
    "glmix_ref": "GLMix, literal loops",
    "global_attention_ref": "global attention, literal N x N",
    "involution_ref": "involution, literal unfold",
}


def _ms(entry: dict | None, mode: str) -> float | None:
    timing = (entry or {}).get(mode) or {}
    return timing.get("median_ms")


def _fmt(value: float | None, spec: str = ".2f", suffix: str = "") -> str:
    return "n/a" if value is None else f"{value:{spec}}{suffix}"


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def _ops_env(data: dict) -> str:
    env, cfg = data["environment"], data["config"]
    start, end = env["load_average_start"][0], env["load_average_end"][0]
    return (
        f"Measured by `benchmarks/bench_ops.py` on {env['date'][:10]}: torch {env['torch']}, "
        f"{cfg['threads']} intra-op threads, {env['cpu_model']} ({env['cpu_count']} cores, "
        f"{env['cpu_capability']}), {env['dtype']}, batch {cfg['batch']}, median of up to "
        f"{cfg['repeats']} timed calls; load average {start:.2f} at the start and {end:.2f} at the "
        "end (other processes shared the machine: ratios are more reliable than absolute times)."
    )


def _ops_table(data: dict, names: list[str]) -> str:
    stage = {(e["op"], e["channels"], e["size"]): e for e in data["stage"]}
    refs = any(n.endswith("_ref") for n in names)
    head = "| shape | operator | GMACs | fwd ms | x conv | fwd+bwd ms | x conv | peak MiB fwd / fwd+bwd |"
    rule = "|---|---|---:|---:|---:|---:|---:|---:|"
    if refs:
        head += " literal / this, fwd | fwd+bwd |"
        rule += "---:|---:|"
    lines = [head, rule]
    for channels, size in data["config"]["stage_shapes"]:
        conv = stage.get(("conv3x3", channels, size))
        for name in names:
            entry = stage.get((name, channels, size))
            if entry is None:
                continue
            macs = entry.get("macs")
            fwd, train = _ms(entry, "forward"), _ms(entry, "forward_backward")
            memory = (
                f"{_fmt(entry.get('memory_forward_mib'), '.1f')} / "
                f"{_fmt(entry.get('memory_train_mib'), '.1f')}"
            )
            cells = [
                f"{channels} ch @ {size}x{size}",
                OP_LABELS.get(name, name),
                "" if macs is None else f"{macs / 1e9:.3f}",
                _fmt(fwd),
                _fmt(_ratio(fwd, _ms(conv, "forward"))),
                _fmt(train),
                _fmt(_ratio(train, _ms(conv, "forward_backward"))),
                memory,
            ]
            if refs:
                ref = stage.get((name + "_ref", channels, size))
                speed = [
                    _ratio(_ms(ref, m), _ms(entry, m)) for m in ("forward", "forward_backward")
                ]
                cells += ["" if ref is None else _fmt(v, ".2f", "x") for v in speed]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _ops_overview(data: dict, names: list[str]) -> str:
    stage = {(e["op"], e["channels"], e["size"]): e for e in data["stage"]}
    shapes = data["config"]["stage_shapes"]
    exponents = data["scaling"].get("exponents", {})
    head = "| operator | " + " | ".join(f"{c} ch @ {s}x{s}" for c, s in shapes)
    lines = [head + " | time vs pixels exponent |", "|---|" + "---:|" * (len(shapes) + 1)]
    for name in names:
        cells = [OP_LABELS.get(name, name)]
        for channels, size in shapes:
            fwd = _ms(stage.get((name, channels, size)), "forward")
            ratio = _ratio(fwd, _ms(stage.get(("conv3x3", channels, size)), "forward"))
            text = _fmt(ratio)
            cells.append(f"{text} ({_fmt(fwd)} ms)" if name == "conv3x3" else text)
        cells.append(_fmt(exponents.get(name), ".3f"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _ops_scaling(data: dict, names: list[str]) -> str:
    scaling = data["scaling"]
    sizes = scaling["sizes"]
    found = {(e["op"], e["size"]): e for e in scaling["results"]}
    head = "| operator | " + " | ".join(f"{s}x{s}" for s in sizes) + " | exponent |"
    lines = [head, "|---|" + "---:|" * (len(sizes) + 1)]
    for name in names:
        cells = [OP_LABELS.get(name, name)]
        cells += [_fmt(_ms(found.get((name, s)), "forward")) for s in sizes]
        cells.append(_fmt(scaling.get("exponents", {}).get(name), ".3f"))
        lines.append("| " + " | ".join(cells) + " |")
    caption = (
        f"\n\nForward ms at {scaling['channels']} channels, batch {scaling['batch']}; exponent: "
        "least-squares slope of log(time) against log(pixels) (1 = linear, 2 = quadratic)."
    )
    return "\n".join(lines) + caption


def _ops_targets(data: dict, text: str) -> str:
    lines = [
        f"- **{t['status']}** {t['name']}: {t['detail']}"
        for t in data["targets"]
        if text.lower() in t["name"].lower()
    ]
    return "\n".join(lines) or "(no matching target)"


def render_ops(kind: str, args: str, uri: str) -> str:
    """The markdown for one ``<!-- ops-KIND: args -->`` line."""
    if not OPS_JSON.is_file():
        return "*(No operator benchmark results in `benchmarks/results/ops.json`.)*"
    data = json.loads(OPS_JSON.read_text(encoding="utf-8"))
    names = args.split()
    unknown = [n for n in names if n not in data["config"]["names"]] if kind != "targets" else []
    if unknown:
        raise PluginError(f"{uri}: ops-{kind}: unknown operator names {unknown}")
    if kind == "env":
        return _ops_env(data)
    if kind == "table":
        return _ops_table(data, names)
    if kind == "overview":
        return _ops_overview(data, names)
    if kind == "scaling":
        return _ops_scaling(data, names)
    return _ops_targets(data, args)


# --- 5: math ---------------------------------------------------------------------------------
def _mathml(tex: str, display: str, uri: str) -> str:
    tex = html.unescape(tex).strip()
    try:
        return latex_to_mathml(tex, display=display)
    except Exception as err:  # latex2mathml raises several exception types
        raise PluginError(f"{uri}: cannot convert LaTeX to MathML: {tex!r} ({err})") from err


def on_page_content(content: str, page, config, files: Files) -> str:
    uri = page.file.src_uri
    content = _BLOCK_MATH.sub(
        lambda m: f'<div class="arithmatex">{_mathml(m.group(1), "block", uri)}</div>', content
    )
    return _INLINE_MATH.sub(
        lambda m: f'<span class="arithmatex">{_mathml(m.group(1), "inline", uri)}</span>', content
    )
