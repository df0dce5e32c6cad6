"""Derive the official key maps of glnet_4g_tklb and glnet_9g_tklb from glnet_4g.json.

Facts used (official ``models/glnet_tklb.py``): ``GLNet_tklb`` subclasses ``GLNet`` without
changing the backbone, and adds one module, ``tklb_aux_head = nn.Linear(embed_dim[-1],
num_classes)``. ``glnet_4g_tklb`` has glnet_4g's arguments, ``glnet_9g_tklb`` glnet_9g's (same
depths, mixing modes and kernels; widths 96-192-384-768 instead of 64-128-256-512).

So: 4g_tklb = glnet_4g's keys + ``tklb_aux_head.weight`` [1000, 512] and ``.bias`` [1000].
9g_tklb = the same keys with every width-derived dimension scaled by 3/2. Every width-derived
dimension of the 4G family is a multiple of 32 (the stem's C1/2 = 32, the widths, 3C projections,
MLP hidden 3C), and every other dimension is not (RGB 3, kernels 1/3/5, 1000 classes), so the rule
is "multiply dimensions divisible by 32 by 3/2". The result is checked against independent facts
in tests/models/test_glnet_tklb.py: 643 keys and the parameter counts 27,514,593 and 60,779,617
reported by instantiating the official classes (glnet_summary.json).

Run from the repository root: ``python tests/official_keys/derive_tklb.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent


def derive() -> dict[str, dict[str, list[int]]]:
    base = json.loads((HERE / "glnet_4g.json").read_text())
    g4 = dict(base)
    g4["tklb_aux_head.weight"] = [1000, 512]
    g4["tklb_aux_head.bias"] = [1000]
    g9 = {k: [d * 3 // 2 if d % 32 == 0 else d for d in shape] for k, shape in g4.items()}
    return {"glnet_4g_tklb": g4, "glnet_9g_tklb": g9}


if __name__ == "__main__":
    for name, shapes in derive().items():
        (HERE / f"{name}.json").write_text(json.dumps(shapes, indent=1) + "\n")
        print(name, len(shapes), "keys")
