"""Operator demonstration (the main job until training lands)."""

from __future__ import annotations


def run_operator_demo(size: int = 28, channels: int = 64) -> int:
    print("convattn operator demo: operators are being added")
    return 0
