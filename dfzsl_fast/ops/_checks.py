"""Argument checks of the public entry points of the kernel layer (ops/, nn/).

Every check raises TypeError (wrong kind or dtype) or ValueError (wrong shape, range or value)
whose message starts with the argument's name, before any work is done.

Value checks (NaN/Inf, target range, overflowing magnitudes) read the tensor once: one
reduction (`abs().amax()`) per input, plus one host synchronisation on CUDA. The public ops take
`check_inputs=True`; pass False in a hot CUDA loop whose inputs are known to be finite. Value
checks are skipped for meta/fake tensors and while torch.compile traces (shapes, dtypes and
devices are still checked).
"""

from __future__ import annotations

import math
import numbers

import torch

__all__ = [
    "is_tracing",
    "check_matrix",
    "check_pair",
    "check_float",
    "check_int",
    "check_scale",
    "check_eps",
    "check_target",
    "check_rows",
    "check_adjustment",
    "safe_rows",
    "compute_dtype",
]


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the kernels compute in: float32 for half inputs, else the input dtype."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def is_tracing(*tensors) -> bool:
    """True while torch.compile traces, or when a tensor is meta/fake (no values to check)."""
    try:
        if torch.compiler.is_compiling():
            return True
    except Exception:  # pragma: no cover
        pass
    for t in tensors:
        if isinstance(t, torch.Tensor):
            if t.device.type == "meta" or type(t) is not torch.Tensor and not isinstance(
                t, torch.nn.Parameter
            ):
                return True
    return False


def _dtype_name(dtype) -> str:
    return str(dtype)


def check_matrix(t, name: str, rows: str) -> torch.Tensor:
    """A 2-D real floating-point tensor."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise TypeError(
            f"{name}: expected a floating-point tensor (float16, bfloat16, float32 or "
            f"float64), got dtype {_dtype_name(t.dtype)}"
        )
    if t.dim() != 2:
        raise ValueError(f"{name}: expected shape ({rows}, d), got {tuple(t.shape)}")
    return t


def check_pair(x, w, wname: str = "w") -> None:
    """x (N, d) and w (C, d): same d, dtype and device, C >= 1."""
    check_matrix(x, "x", "N")
    check_matrix(w, wname, "C")
    if w.shape[0] < 1:
        raise ValueError(
            f"{wname}: expected at least one class (C >= 1), got shape {tuple(w.shape)}"
        )
    if x.shape[1] != w.shape[1]:
        raise ValueError(
            f"x and {wname}: feature dimensions differ: x is {tuple(x.shape)}, "
            f"{wname} is {tuple(w.shape)} (expected (N, d) and (C, d) with the same d)"
        )
    if x.device != w.device:
        raise ValueError(f"x and {wname}: on different devices ({x.device} and {w.device})")
    if x.dtype != w.dtype:
        raise TypeError(
            f"x and {wname}: dtypes differ ({_dtype_name(x.dtype)} and "
            f"{_dtype_name(w.dtype)}); cast one"
        )


def check_float(value, name: str, *, low: float | None = None, high: float | None = None) -> float:
    """A finite real number (Python/NumPy number or one-element tensor) in [low, high]."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"{name}: expected a Python number or a one-element tensor")
        if value.requires_grad:
            raise ValueError(f"{name}: no gradient flows to {name}; pass a float (or .detach())")
        if value.is_complex() or value.dtype == torch.bool or value.device.type == "meta":
            raise TypeError(f"{name}: expected a real number, got a {value.dtype} tensor")
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: expected a real number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name}: expected a finite number, got {value}")
    if low is not None and value < low:
        raise ValueError(f"{name}: expected >= {low}, got {value}")
    if high is not None and value > high:
        raise ValueError(f"{name}: expected <= {high}, got {value}")
    return value


def check_int(value, name: str, *, low: int | None = None, high: int | None = None) -> int:
    """A Python/NumPy integer (not bool) in [low, high]."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}: expected an int, got {type(value).__name__}")
    value = int(value)
    if low is not None and value < low:
        raise ValueError(f"{name}: expected an int >= {low}, got {value}")
    if high is not None and value > high:
        raise ValueError(f"{name}: expected an int <= {high}, got {value}")
    return value


def check_scale(value, name: str, bound: float, dtype: torch.dtype, what: str) -> float:
    """A finite scale with |value| <= bound (the largest scale whose `what` fits `dtype`)."""
    value = check_float(value, name)
    if abs(value) > bound:
        raise ValueError(
            f"{name}: |{name}| = {abs(value):.4g} overflows {_dtype_name(dtype)} {what}; "
            f"expected |{name}| <= {bound:.4g} for these shapes and dtype"
        )
    return value


def _row_norm_limit(dtype: torch.dtype, d: int) -> float:
    """Largest entry magnitude whose squared row sum stays finite in `dtype` (with margin)."""
    return math.sqrt(torch.finfo(dtype).max / max(int(d), 1)) / 4.0


def check_eps(eps, dtype: torch.dtype, d: int) -> float:
    """The normalisation floor: finite, > 0, and large enough that a row of norm >= eps has no
    squared entry below the dtype's smallest normal (else its norm would read as 0)."""
    eps = check_float(eps, "eps")
    cdt = compute_dtype(dtype)
    lo = 2.0 * math.sqrt(torch.finfo(cdt).tiny * max(int(d), 1))
    hi = _row_norm_limit(cdt, d) / 8.0
    if not lo <= eps <= hi:
        raise ValueError(
            f"eps: expected {lo:.3g} <= eps <= {hi:.3g} for {_dtype_name(dtype)} rows of d = {d} "
            f"(rows are divided by max(|row|, eps); 0 would turn zero rows into NaN), got {eps}"
        )
    return eps


def _amax(t: torch.Tensor) -> float:
    if t.numel() == 0:
        return 0.0
    return float(t.detach().abs().amax())


def safe_rows(t: torch.Tensor, name: str, check_inputs: bool = True) -> torch.Tensor:
    """Rejects NaN/Inf in `t` and rescales rows whose squared norm would overflow.

    A row whose entries exceed `sqrt(max / d) / 4` of the compute dtype is multiplied by an
    exact power of two that brings it below that bound: its direction (all that the cosine ops
    use, since such a row is far above any valid eps) is unchanged, and autograd sees the
    multiplication. Costs one read of `t` (and one host sync on CUDA); rows are rescaled only
    when needed.
    """
    if not check_inputs or is_tracing(t):
        return t
    m = _amax(t)
    if not math.isfinite(m):
        bad = ~torch.isfinite(t.detach()).all(dim=1)
        row = int(bad.nonzero()[0, 0])
        raise ValueError(f"{name}: row {row} contains NaN or Inf")
    limit = _row_norm_limit(compute_dtype(t.dtype), t.shape[1])
    if m <= limit:
        return t
    amax_rows = t.detach().abs().amax(dim=1)
    _, e_rows = torch.frexp(amax_rows.float())
    _, e_lim = math.frexp(limit)
    shift = torch.where(amax_rows > limit, e_rows - (e_lim - 1), torch.zeros_like(e_rows))
    factor = torch.pow(2.0, -shift.to(torch.float64)).to(t.dtype)
    return t * factor.unsqueeze(1)


def check_target(target, N: int, C: int, device, check_inputs: bool = True) -> torch.Tensor:
    """(N,) int64 class indices in [0, C) on `device`."""
    if not isinstance(target, torch.Tensor):
        raise TypeError(f"target: expected an int64 tensor, got {type(target).__name__}")
    if target.dtype != torch.int64:
        raise TypeError(
            f"target: expected dtype torch.int64 (class indices), got {_dtype_name(target.dtype)}"
        )
    if target.shape != (N,):
        raise ValueError(f"target: expected shape ({N},), got {tuple(target.shape)}")
    if target.device != device:
        raise ValueError(f"target: expected device {device}, got {target.device}")
    if N and not is_tracing(target):
        # the range check is not optional: an out-of-range index reads out of bounds in the
        # native kernels
        lo, hi = torch.aminmax(target)
        lo, hi = int(lo), int(hi)
        if lo < 0 or hi >= C:
            raise ValueError(f"target: expected class indices in [0, {C}), got range [{lo}, {hi}]")
    return target


def check_rows(rows, n: int, device) -> torch.Tensor:
    """(M,) int64 indices of rows of an (n, d) x, in [0, n), on `device` (M = 0 allowed)."""
    if not isinstance(rows, torch.Tensor):
        raise TypeError(f"rows: expected an int64 tensor of row indices, got {type(rows).__name__}")
    if rows.dtype != torch.int64:
        raise TypeError(f"rows: expected dtype torch.int64 (row indices), got {rows.dtype}")
    if rows.dim() != 1:
        raise ValueError(f"rows: expected shape (M,), got {tuple(rows.shape)}")
    if rows.device != device:
        raise ValueError(f"rows: expected device {device} (x's), got {rows.device}")
    if rows.numel() and not is_tracing(rows):
        # not optional, as for target: an index out of range would read outside x
        lo, hi = (int(v) for v in torch.aminmax(rows))
        if lo < 0 or hi >= n:
            raise ValueError(f"rows: expected row indices of x in [0, {n}), got range [{lo}, {hi}]")
    return rows


def check_adjustment(adj, C: int, x: torch.Tensor, check_inputs: bool = True):
    """None, or a (C,) float tensor on x's device, not requiring grad, without NaN or +inf
    (-inf masks a class); returns (adj, max |finite adj|)."""
    if adj is None:
        return None, 0.0
    if not isinstance(adj, torch.Tensor):
        raise TypeError(f"logit_adjustment: expected a ({C},) tensor, got {type(adj).__name__}")
    if not adj.is_floating_point():
        raise TypeError(
            f"logit_adjustment: expected a real floating-point tensor, got "
            f"{_dtype_name(adj.dtype)}"
        )
    if adj.shape != (C,):
        raise ValueError(f"logit_adjustment: expected shape ({C},), got {tuple(adj.shape)}")
    if adj.device != x.device:
        raise ValueError(f"logit_adjustment: expected device {x.device}, got {adj.device}")
    if adj.requires_grad:
        raise ValueError(
            "logit_adjustment: no gradient flows to the logit adjustment; pass .detach()"
        )
    m = 0.0
    if check_inputs and not is_tracing(adj) and adj.numel():
        a = adj.detach()
        if bool((torch.isnan(a) | (a == math.inf)).any()):
            raise ValueError(
                "logit_adjustment: contains NaN or +Inf (only -inf, which masks a class, is "
                "allowed)"
            )
        finite = a[torch.isfinite(a)]
        m = _amax(finite)
    return adj.contiguous(), m
