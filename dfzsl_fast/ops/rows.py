"""`dfzsl_fast::gather_rows`: a training batch's rows from several sources, one pass.

Row i of the result is ``sources[part[i]][local[i]]`` converted to ``dtype``. The streamed final
classifier reads its batches through it (`synthesis.rows`: the virtual base features in memory
and the synthetic rows in float16 shards, memory-mapped), where a composition of torch ops costs
a gather per source, a conversion and a scatter back into batch order.

Kernels: C++ CPU (`csrc/cpu/gather_rows_cpu.cpp`, rows in parallel, converted in registers) and
the default below (torch ops; any device), which is also the "torch" backend. Not
differentiable: training rows are data.

This module holds the fake kernel, the default kernel, the "torch" entry of the backend table
and `gather_rows`, the checked wrapper.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .. import _backend, _load  # noqa: F401  (_load fills the backend table)
from . import _library  # noqa: F401  (defines the schema)

__all__ = ["gather_rows"]

_OP = "gather_rows"
#: output dtypes (float sources gather into a float dtype, int64 sources into int64)
_DTYPES = (torch.float32, torch.float64, torch.int64)
_FLOAT_SOURCES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


@torch.library.register_fake("dfzsl_fast::gather_rows")
def _fake(sources, part, local, dtype):
    return sources[0].new_empty((part.shape[0],) + tuple(sources[0].shape[1:]), dtype=dtype)


def _gather_default(sources, part, local, dtype):
    """The reference: per source, its rows gathered and written into place."""
    out = torch.empty((part.shape[0],) + tuple(sources[0].shape[1:]), dtype=dtype,
                      device=part.device)
    for k in torch.unique(part).tolist():
        sel = (part == k).nonzero().flatten()
        out[sel] = sources[k].index_select(0, local[sel].to(sources[k].device)).to(
            device=out.device, dtype=dtype)
    return out


@torch.library.register_kernel("dfzsl_fast::gather_rows", "default")
def _default(sources, part, local, dtype):
    return _gather_default(sources, part, local, dtype)


_backend.register(_OP, "torch", _gather_default, devices={"cpu": _DTYPES, "cuda": _DTYPES})


def gather_rows(
    sources: Sequence[torch.Tensor],
    part: torch.Tensor,
    local: torch.Tensor,
    dtype: torch.dtype,
    *,
    backend: str | None = None,
    check_inputs: bool = True,
) -> torch.Tensor:
    """Rows ``sources[part[i]][local[i]]`` for every i, in ``dtype``.

    Args:
        sources: K >= 1 tensors on the CPU, all (n_k, D) with one D, or all (n_k,); float16,
            bfloat16, float32 or float64 for a float ``dtype``, int64 for int64.
        part: (n,) int64 source of each row, in [0, K).
        local: (n,) int64 row within its source, in [0, n_part).
        dtype: float32, float64 or int64.
        backend: None (auto: the native kernel where loaded), "native" or "torch".
        check_inputs: False skips the per-source checks and those of the indices' values, for
            callers that built them consistent (`synthesis.rows`, once per batch over sources
            that may be hundreds of shards); the native kernel checks all of it again before
            reading a row.

    Returns:
        (n, D) or (n,) tensor of ``dtype`` on the CPU.

    Raises:
        TypeError / ValueError: bad sources, indices or dtype (named), before any row is read.

    Example:
        >>> gather_rows([torch.zeros(2, 3), torch.ones(4, 3, dtype=torch.float16)],
        ...             torch.tensor([1, 0]), torch.tensor([3, 1]), torch.float32)
        tensor([[1., 1., 1.],
                [0., 0., 0.]])
    """
    if dtype not in _DTYPES:
        raise ValueError(f"dtype: expected float32, float64 or int64, got {dtype}")
    if isinstance(sources, torch.Tensor) or not sources or not all(
            isinstance(s, torch.Tensor) for s in sources):
        raise TypeError("sources: expected a non-empty sequence of tensors")
    dim = sources[0].dim()
    allowed = (torch.int64,) if dtype == torch.int64 else _FLOAT_SOURCES
    for k, s in enumerate(sources if check_inputs else ()):
        if s.device.type != "cpu":
            raise ValueError(f"sources: source {k} is on {s.device}; expected the CPU")
        if s.dim() not in (1, 2) or s.dim() != dim or s.shape[1:] != sources[0].shape[1:]:
            raise ValueError(f"sources: expected every source shaped like source 0 "
                             f"{tuple(sources[0].shape)} but for its rows, got source {k} "
                             f"{tuple(s.shape)}")
        if s.dtype not in allowed:
            raise TypeError(f"sources: source {k} is {s.dtype}; a {dtype} batch gathers from "
                            f"{', '.join(str(a) for a in allowed)}")
    for name, t in (("part", part), ("local", local)):
        if not isinstance(t, torch.Tensor) or t.dtype != torch.int64 or t.dim() != 1 \
                or t.device.type != "cpu":
            raise TypeError(f"{name}: expected a 1-D int64 CPU tensor")
    if part.shape != local.shape:
        raise ValueError(f"part and local: expected one length, got {part.numel()} and "
                         f"{local.numel()}")
    if part.numel() and check_inputs:
        if int(part.min()) < 0 or int(part.max()) >= len(sources):
            raise ValueError(f"part: expected source indices in [0, {len(sources)})")
        rows = torch.tensor([s.shape[0] for s in sources], dtype=torch.int64)
        if int(local.min()) < 0 or bool((local >= rows[part]).any()):
            raise ValueError("local: expected each row index within its source's rows")
    _, fn = _backend.select(_OP, torch.device("cpu"), dtype, backend)
    return fn(list(sources), part, local, dtype)
