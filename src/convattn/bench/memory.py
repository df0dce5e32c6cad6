"""Peak memory of one step: CUDA allocator peak on GPU, peak RSS growth on CPU.

On the CPU the peak resident set size (``VmHWM``) is reset to the current RSS through
``/proc/self/clear_refs`` just before the step, so the measured growth is the step's own transient
memory (activations, workspace, gradients) on top of what already lives in the process (weights,
input, optimiser state, thread pools). glibc would otherwise keep freed blocks in its heap and hide
later peaks, so :func:`return_freed_memory_to_os` first gives the free heap back (``malloc_trim``)
and lowers the mmap threshold, after which every large block is mapped when allocated and unmapped
when freed. That makes allocation slow (fresh pages are faulted in at every step, 3-4x slower
models were measured), so it is done only after all timing. Run it in a fresh process per model so
that nothing measured before pollutes the baseline.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import resource
from collections.abc import Callable

import torch

__all__ = [
    "MMAP_THRESHOLD",
    "current_rss_mib",
    "peak_memory_mib",
    "return_freed_memory_to_os",
]

MMAP_THRESHOLD = 65536  # bytes; blocks above it are mmapped and unmapped again when freed


def return_freed_memory_to_os(threshold: int = MMAP_THRESHOLD) -> bool:
    """Release glibc's free heap and serve blocks above ``threshold`` bytes with mmap from now on.

    For memory measurements only: it slows every later large allocation down. True if glibc
    accepted.
    """
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim(0)
        return bool(libc.mallopt(-3, threshold))  # -3: M_MMAP_THRESHOLD
    return False


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not found in /proc/self/status")


def current_rss_mib() -> float:
    """Resident set size of this process in MiB."""
    return _status_kib("VmRSS") / 1024.0


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # 5: reset the peak RSS (VmHWM) to the current RSS
        return True
    except OSError:
        return False


def peak_memory_mib(step: Callable[[], object], device: torch.device | str) -> dict:
    """Run ``step`` once and measure the memory it needed beyond what was already allocated.

    Args:
        step: the work to measure (already warmed up, so one-time allocations are excluded).
        device: where the step runs.

    Returns:
        ``peak_memory_mib`` (growth over the state before the step), ``memory_method`` and, on
        CUDA, ``cuda_peak_allocated_mib`` (the allocator's absolute peak, weights included).
    """
    device = torch.device(device)
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        step()
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
        return {
            "peak_memory_mib": (peak - base) / 2**20,
            "cuda_peak_allocated_mib": peak / 2**20,
            "memory_method": "CUDA allocator peak minus allocated before the step",
        }
    base_kib = _status_kib("VmRSS")
    if _reset_peak_rss():
        step()
        peak_kib = _status_kib("VmHWM")
        method = "peak RSS growth (VmHWM reset via /proc/self/clear_refs)"
    else:  # no clear_refs (e.g. restricted /proc): the lifetime peak, only valid in a fresh process
        step()
        peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        method = "lifetime peak RSS (ru_maxrss) minus RSS before the step"
    return {"peak_memory_mib": max(0, peak_kib - base_kib) / 1024.0, "memory_method": method}
