"""torch.distributed in one place: the process group of a torchrun launch, this process's rank.

Scale-out is torchrun's (`torchrun --nproc_per_node=N -m dfzsl_fast <command> ...`): it starts
the processes and sets WORLD_SIZE, RANK, LOCAL_RANK and the rendezvous; `init_from_env` joins
the group (gloo for CPU work, nccl for CUDA with device cuda:LOCAL_RANK). Library code asks
`rank_world()` and works alone when no group is initialised. No process pool of our own.
"""

from __future__ import annotations

import os
from typing import Any

import torch

__all__ = ["init_from_env", "shutdown", "rank_world", "barrier", "all_reduce_sum",
           "broadcast_object", "group"]


def group() -> Any | None:
    """torch.distributed when a process group is initialised, else None."""
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() else None


def rank_world() -> tuple[int, int]:
    """(rank, world size) of the initialised process group, else (0, 1)."""
    dist = group()
    return (dist.get_rank(), dist.get_world_size()) if dist is not None else (0, 1)


def init_from_env(device: torch.device) -> tuple[torch.device, bool]:
    """Join the torchrun process group when WORLD_SIZE > 1 and none is initialised yet.

    gloo on CPU; nccl on CUDA, where a bare "cuda" becomes cuda:LOCAL_RANK (one GPU per
    process). Returns (device, whether the group was initialised here: the caller then
    ends it with `shutdown()` when done).
    """
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return device, False
    if device.type == "cuda":
        if device.index is None:
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
    else:
        dist.init_process_group("gloo")
    return device, True


def shutdown(*, sync: bool = True) -> None:
    """Destroy the process group (no-op without one).

    With `sync` the ranks first meet at a barrier: gloo aborts a process ("terminate called
    without an active exception") when it tears its pairs down while a peer is still using
    them, e.g. rank 0 still saving while rank 1 exits. Pass sync=False on an error path, where
    the other ranks may never arrive.
    """
    dist = group()
    if dist is None:
        return
    if sync:
        barrier()
    dist.destroy_process_group()


def barrier() -> None:
    """Wait for every rank (no-op without a group)."""
    dist = group()
    if dist is None:
        return
    if dist.get_backend() == "nccl":
        dist.barrier(device_ids=[torch.cuda.current_device()])
    else:
        dist.barrier()


def all_reduce_sum(t: torch.Tensor) -> None:
    """In-place sum of `t` over the ranks (no-op without a group)."""
    dist = group()
    if dist is not None:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank `src`'s `obj` (picklable) on every rank (itself without a group)."""
    dist = group()
    if dist is None:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]
