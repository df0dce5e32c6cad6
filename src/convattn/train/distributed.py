"""Distributed data parallel set-up from torchrun's environment, and small collective helpers.

``torchrun --nproc_per_node N [--nnodes M --rdzv-endpoint HOST:PORT ...] -m convattn train ...``
sets ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT``; the process
group is initialised from them (``env://``) with NCCL on CUDA and Gloo on CPU. Without those
variables (or with ``WORLD_SIZE=1``) everything here degrades to single-process no-ops.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

__all__ = [
    "DistContext",
    "all_gather_objects",
    "all_reduce_sum",
    "average_buffers",
    "barrier",
    "cleanup_distributed",
    "init_distributed",
    "resolve_device",
]


_CPU = torch.device("cpu")


@dataclass(frozen=True)
class DistContext:
    """Where this process sits in the job.

    Attributes:
        rank: global rank (0 on a single process).
        world_size: number of processes.
        local_rank: rank on this node (selects the GPU).
        device: the device this process trains on.
        owns_group: True when :func:`init_distributed` created the process group.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = _CPU
    owns_group: bool = False

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(device: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> CUDA if available (the local rank's GPU) else CPU; ``cuda`` -> the local GPU."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RuntimeError(f"device {device!r} requested but CUDA is not available")
        return torch.device(device if ":" in device else f"cuda:{local_rank}")
    if device != "cpu":
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {device!r}")
    return torch.device("cpu")


def init_distributed(device: str = "auto") -> DistContext:
    """Initialise the process group if launched by torchrun; return this process's context.

    An already initialised group (e.g. set up by the caller) is reused and left alone at the end.
    """
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        local_rank = int(os.environ.get("LOCAL_RANK", rank))
        dev = resolve_device(device, local_rank)
        return DistContext(rank, world, local_rank, dev, owns_group=False)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if world <= 1:
        return DistContext(device=dev)
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but torch.distributed is not available in this build")
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return DistContext(dist.get_rank(), dist.get_world_size(), local_rank, dev, owns_group=True)


# How long the main thread sleeps, holding no GIL, before the interpreter may exit: a Gloo worker
# thread finishing a collective needs the GIL for a moment (see cleanup_distributed).
_GLOO_QUIESCE_S = 0.25


def cleanup_distributed(ctx: DistContext, *, completed: bool = True) -> None:
    """Destroy the process group if :func:`init_distributed` created it.

    After a ``completed`` run every rank first waits at a barrier, so no collective is in flight
    (after a failure it does not: the other ranks may never arrive). On the CPU, Gloo's worker
    threads release each finished collective after the caller has been told it is done; when the
    collective held tensors that Python has seen, that release takes the GIL. A process that goes
    straight on to interpreter shutdown makes the worker wait for a GIL that is never handed back,
    and the process aborts ("terminate called without an active exception",
    https://github.com/pytorch/pytorch/pull/179291). DistributedDataParallel keeps the group's
    threads alive past ``destroy_process_group``, so they cannot be joined; instead the main thread
    sleeps briefly without the GIL to let them finish.
    """
    if not (ctx.owns_group and dist.is_initialized()):
        return
    if completed:
        barrier(ctx)
    dist.destroy_process_group()
    if completed and ctx.device.type == "cpu":
        time.sleep(_GLOO_QUIESCE_S)


def all_reduce_sum(values: Sequence[float] | torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Sum ``values`` over all ranks (float64, returned on the CPU)."""
    tensor = torch.as_tensor(values, dtype=torch.float64)
    if ctx.distributed:
        # NCCL reduces device tensors only; Gloo takes CPU tensors.
        tensor = tensor.to(ctx.device)
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.cpu()


def all_gather_objects(obj: Any, ctx: DistContext) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` (just ``[obj]`` on a single process)."""
    if not ctx.distributed:
        return [obj]
    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


@torch.no_grad()
def average_buffers(module: torch.nn.Module, ctx: DistContext) -> None:
    """Make ``module``'s buffers equal on every rank: floating ones averaged, others rank 0's.

    DDP averages gradients but not buffers, so BatchNorm running statistics drift apart on each
    rank's own batches; after this every rank holds one model (the one rank 0 saves).
    """
    if not ctx.distributed:
        return
    world = ctx.world_size
    for buf in module.buffers():
        tensor = buf.detach()
        if tensor.is_floating_point() or tensor.is_complex():
            # NCCL reduces device tensors only; Gloo takes CPU tensors: both are buf's device.
            reduced = tensor.clone()
            dist.all_reduce(reduced, op=dist.ReduceOp.SUM)
            tensor.copy_(reduced / world)
        else:
            dist.broadcast(tensor, src=0)


def barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        if ctx.device.type == "cuda":
            dist.barrier(device_ids=[ctx.device.index])
        else:
            dist.barrier()
