"""Argument checks shared by the models and pipeline stages (one message format everywhere)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

__all__ = ["check_matrix", "check_int", "check_seed", "check_class_indices", "numeric_tensor"]


def check_matrix(t: Any, name: str, what: str = "(C, d)") -> torch.Tensor:
    """A non-empty 2-D floating tensor with finite, non-zero rows (so rows can be normalised).

    Returns ``t.detach()``. Raises TypeError (not a float tensor) or ValueError (wrong rank,
    empty, a NaN/Inf row, an all-zero row), naming the argument and the offending row.
    """
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a {what} tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise TypeError(f"{name}: expected a floating-point tensor, got dtype {t.dtype}")
    if t.device.type == "meta":
        raise ValueError(f"{name}: a meta tensor holds no values")
    if t.dim() != 2:
        raise ValueError(f"{name}: expected shape {what}, got {tuple(t.shape)}")
    if t.shape[0] == 0 or t.shape[1] == 0:
        raise ValueError(f"{name}: is empty (shape {tuple(t.shape)})")
    t = t.detach()
    finite = torch.isfinite(t).all(dim=1)
    if not bool(finite.all()):
        i = int((~finite).nonzero()[0, 0])
        raise ValueError(f"{name}: row {i} contains NaN or Inf")
    zero = (t == 0).all(dim=1)
    if bool(zero.any()):
        i = int(zero.nonzero()[0, 0])
        raise ValueError(f"{name}: row {i} is all zero and cannot be L2-normalised")
    return t


def check_int(v: Any, name: str, low: int) -> int:
    """An int (Python or numpy, not bool) >= ``low``; TypeError / ValueError naming ``name``."""
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise TypeError(f"{name}: expected an int, got {type(v).__name__}")
    if v < low:
        raise ValueError(f"{name}: expected an int >= {low}, got {v}")
    return int(v)


def check_seed(seed: Any, name: str = "seed") -> int:
    """An int seed (Python or numpy, not bool) in [0, 2^63): what torch.Generator accepts."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"{name}: expected an int, got {type(seed).__name__}")
    if not 0 <= int(seed) < 2**63:
        raise ValueError(f"{name}: expected an int in [0, 2**63), got {seed}")
    return int(seed)


def numeric_tensor(x: Any, what: str, src: str) -> torch.Tensor:
    """``x`` (tensor, array or nested numbers) as a tensor of a real or bool dtype, else a
    ValueError naming ``what`` and ``src``."""
    if isinstance(x, torch.Tensor):
        if x.is_complex():
            raise ValueError(f"{src}: `{what}` must hold real numbers, got {x.dtype}")
        if x.device.type == "meta":
            raise ValueError(f"{src}: `{what}` is a meta tensor (it holds no values)")
        return x.detach()
    if isinstance(x, (str, bytes, dict)) or x is None:
        raise ValueError(f"{src}: `{what}` must be an array of numbers, got {type(x).__name__}")
    try:
        a = np.asarray(x)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{src}: `{what}` must be an array of numbers ({exc})") from None
    if a.dtype.kind not in "biuf":
        raise ValueError(f"{src}: `{what}` must be an array of real numbers, got dtype {a.dtype}")
    return torch.from_numpy(np.ascontiguousarray(a))


def check_class_indices(v: Any, name: str, C: int) -> torch.Tensor:
    """(K,) int64 CPU tensor of distinct class indices in [0, C) from a 1-D sequence/tensor of
    integers; TypeError (not integers) or ValueError (range, duplicates) naming ``name``."""
    t = None
    if not isinstance(v, (str, bytes, dict)) and v is not None:
        try:
            t = v.detach() if isinstance(v, torch.Tensor) else torch.as_tensor(v)
        except (TypeError, ValueError, RuntimeError, OverflowError):
            t = None
    if t is None or t.device.type == "meta" or t.dim() != 1 or not (
        t.numel() == 0 or (not t.is_floating_point() and not t.is_complex()
                           and t.dtype != torch.bool)
    ):
        raise TypeError(f"{name}: expected a 1-D sequence of integer class indices")
    t = t.to(torch.int64).cpu()
    if t.numel() and (int(t.min()) < 0 or int(t.max()) >= C):
        raise ValueError(
            f"{name}: class indices must lie in [0, {C}), got range [{int(t.min())}, "
            f"{int(t.max())}]"
        )
    if t.unique().numel() != t.numel():
        raise ValueError(f"{name}: contains duplicate class indices")
    return t


def check_index_vector(t: Any, name: str, n: int | None, high: int) -> torch.Tensor:
    """(n,) int64 tensor of indices in [0, high) from a 1-D integer tensor or list/tuple/range
    (the row and class ids of synthesis); TypeError / ValueError naming ``name``. ``n``: the
    required length (None: any)."""
    if isinstance(t, (list, tuple, range)):
        t = torch.as_tensor(list(t), dtype=torch.int64)
    if not isinstance(t, torch.Tensor) or t.dim() != 1 or t.is_floating_point() or \
            t.is_complex() or t.dtype == torch.bool or t.device.type == "meta":
        what = type(t).__name__ if not isinstance(t, torch.Tensor) else \
            f"{t.dtype} tensor of shape {tuple(t.shape)}"
        raise TypeError(f"{name}: expected a 1-D integer tensor, got {what}")
    if n is not None and t.numel() != n:
        raise ValueError(f"{name}: expected {n} entries (one per row), got {t.numel()}")
    t = t.to(torch.int64)
    if t.numel() and (int(t.min()) < 0 or int(t.max()) >= high):
        raise ValueError(f"{name}: values must lie in [0, {high}), got range "
                         f"[{int(t.min())}, {int(t.max())}]")
    return t
