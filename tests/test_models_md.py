"""MODELS.md is generated; it must list every registered model."""

from pathlib import Path

import convattn

ROOT = Path(__file__).resolve().parents[1]


def test_models_md_lists_every_registered_model():
    text = (ROOT / "MODELS.md").read_text()
    missing = [n for n in convattn.list_models() if f"| `{n}` |" not in text]
    assert not missing, (
        f"MODELS.md is stale; run python scripts/gen_models_md.py (missing {missing})"
    )
