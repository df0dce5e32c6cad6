"""Cost measurement: parameters, MACs, latency and memory."""

from .flops import count_macs, count_params

__all__ = ["count_macs", "count_params"]
