"""Fused cosine-classifier ops: logits, cross-entropy, top-k and logit MSE.

Ops (schemas in `ops/_library.py`):

- `dfzsl_fast::cosine_logits(x, w, scale, eps) -> logits` and its backward op
  `cosine_logits_backward(grad, x, w, scale, eps) -> (grad_x, grad_w)`;
- `dfzsl_fast::cosine_cross_entropy(x, w, target, logit_adjustment, scale, eps, label_smoothing,
  reduction, compute_grad, compute_grad_x=True, rows=None) -> (loss, lse, grad_x, grad_w)` (the
  loss of the batch x[rows] when rows is given) and `cosine_cross_entropy_backward`;
- `dfzsl_fast::cosine_topk(x, w, k, scale, eps) -> (scores, indices)`;
- `dfzsl_fast::cosine_logit_mse(x, w_student, w_teacher, scale_s, scale_t, eps, compute_grad)
  -> (loss, grad_x, grad_w_student)`.

This module holds the fake kernels, the registration of the default kernels
(`reference/cosine_chunked.py`, pure PyTorch, never holding the (N, C) logits of the loss, top-k
and MSE ops) and of the autograd formulas (`autograd/cosine.py`, shared with the Triton custom
ops), the "torch" entries of the backend table, and the public wrappers. Native kernels
(`_C`, registered by `_extension`) and Triton kernels (`triton/cosine.py`: float32, float16,
bfloat16; top-k up to k = 16) fill their own entries; `_backend.select` picks one per call.
"""

from __future__ import annotations

import math

import torch

from .. import _backend, _load  # noqa: F401  (_load fills the backend table)
from ..autograd import cosine as ag
from ..reference import cosine_chunked as kern
from . import (
    _checks,
    _library,  # noqa: F401  (defines the schemas)
)

__all__ = [
    "cosine_logits",
    "cosine_cross_entropy",
    "cosine_cross_entropy_and_grad_w",
    "cosine_topk",
    "cosine_logit_mse",
]

_REDUCTIONS = {"none": 0, "mean": 1, "sum": 2}
_ALL_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


# ================================================================================ fake kernels
@torch.library.register_fake("dfzsl_fast::cosine_logits")
def _cosine_logits_fake(x, w, scale, eps):
    torch._check(x.dim() == 2 and w.dim() == 2, lambda: "cosine_logits: x (N, d), w (C, d)")
    torch._check(x.shape[1] == w.shape[1], lambda: "cosine_logits: x and w differ in d")
    return x.new_empty(x.shape[0], w.shape[0])


@torch.library.register_fake("dfzsl_fast::cosine_logits_backward")
def _cosine_logits_backward_fake(grad, x, w, scale, eps):
    return torch.empty_like(x), torch.empty_like(w)


@torch.library.register_fake("dfzsl_fast::cosine_cross_entropy")
def _ce_fake(x, w, target, logit_adjustment, scale, eps, label_smoothing, reduction, compute_grad,
             compute_grad_x=True, rows=None):
    torch._check(x.dim() == 2 and w.dim() == 2, lambda: "cosine_cross_entropy: x (N, d), w (C, d)")
    ag.check_rows_meta(rows, x, "cosine_cross_entropy")
    N = x.shape[0] if rows is None else rows.shape[0]
    loss = x.new_empty(N) if reduction == 0 else x.new_empty(())
    lse = x.new_empty(N)
    if compute_grad and reduction != 0:
        gx = x.new_empty(N, x.shape[1]) if compute_grad_x else kern.empty_grad(x, x.dtype)
        return loss, lse, gx, torch.empty_like(w)
    return loss, lse, kern.empty_grad(x, x.dtype), kern.empty_grad(w, w.dtype)


@torch.library.register_fake("dfzsl_fast::cosine_cross_entropy_backward")
def _ce_backward_fake(grad_loss, x, w, target, logit_adjustment, lse, scale, eps, label_smoothing):
    return torch.empty_like(x), torch.empty_like(w)


@torch.library.register_fake("dfzsl_fast::cosine_topk")
def _cosine_topk_fake(x, w, k, scale, eps):
    torch._check(x.dim() == 2 and w.dim() == 2, lambda: "cosine_topk: x (N, d), w (C, d)")
    N = x.shape[0]
    return x.new_empty(N, k), x.new_empty(N, k, dtype=torch.int64)


@torch.library.register_fake("dfzsl_fast::cosine_logit_mse")
def _mse_fake(x, w_student, w_teacher, scale_s, scale_t, eps, compute_grad):
    torch._check(x.dim() == 2 and w_student.dim() == 2, lambda: "cosine_logit_mse: 2-D inputs")
    loss = x.new_empty(())
    if compute_grad:
        return loss, torch.empty_like(x), torch.empty_like(w_student)
    return loss, kern.empty_grad(x, x.dtype), kern.empty_grad(w_student, w_student.dtype)


# ============================================================ default kernels, autograd, table
_DEFAULTS = {
    "cosine_logits": kern.cosine_logits,
    "cosine_logits_backward": kern.cosine_logits_backward,
    "cosine_cross_entropy": kern.cosine_cross_entropy,
    "cosine_cross_entropy_backward": kern.cosine_cross_entropy_backward,
    "cosine_topk": kern.cosine_topk,
    "cosine_logit_mse": kern.cosine_logit_mse,
}
_AUTOGRAD = {
    "cosine_logits": (ag.logits_setup, ag.logits_backward),
    "cosine_cross_entropy": (ag.ce_setup, ag.ce_backward),
    "cosine_topk": (ag.topk_setup, ag.topk_backward),
    "cosine_logit_mse": (ag.mse_setup, ag.mse_backward),
}
for _name, _fn in _DEFAULTS.items():
    torch.library.register_kernel(f"dfzsl_fast::{_name}", "default", _fn)
for _name, (_setup, _bwd) in _AUTOGRAD.items():
    torch.library.register_autograd(f"dfzsl_fast::{_name}", _bwd, setup_context=_setup)


def _torch_entry(op: str):
    """The "torch" backend of `op`: the default kernel through the dispatcher when no native
    kernel is registered for the device, else called directly (with the same autograd)."""
    dispatcher = getattr(torch.ops.dfzsl_fast, op)
    kernel = _DEFAULTS[op]
    setup, backward = _AUTOGRAD[op]

    def run(*args):
        if _backend.native_reasons(op, args[0].device):
            return dispatcher(*args)
        return ag.call_direct(kernel, setup, backward, args)

    run.__name__ = f"{op}_torch"
    return run


for _name in _AUTOGRAD:
    _backend.register(
        _name, "torch", _torch_entry(_name), devices={"cpu": _ALL_DTYPES, "cuda": _ALL_DTYPES}
    )


# ================================================================================ input checks
def _finfo_max(dtype: torch.dtype) -> float:
    return float(torch.finfo(dtype).max)


def _prepare(x, w, eps, check_inputs, wname="w", xname="x"):
    """Shared checks of x and w; returns (x, w, eps) with overflow-safe rows."""
    _checks.check_pair(x, w, wname)
    eps = _checks.check_eps(eps, x.dtype, x.shape[1])
    x = _checks.safe_rows(x, xname, check_inputs)
    w = _checks.safe_rows(w, wname, check_inputs)
    return x, w, eps


def _check_flag(value, name: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name}: expected True or False, got {type(value).__name__}")
    return value


# ================================================================================== public API
def cosine_logits(
    x: torch.Tensor,
    w: torch.Tensor,
    scale: float = 1.0,
    eps: float = 1e-12,
    backend: str | None = None,
    *,
    check_inputs: bool = True,
) -> torch.Tensor:
    """Cosine logits: scale * normalize(x) @ normalize(w).T.

    Args:
        x: (N, d) float tensor (float32/float64; float16/bfloat16 computed in float32), CPU or CUDA.
        w: (C, d) class weights, same dtype and device as x, C >= 1.
        scale: finite logit scale s; a scale whose logits or loss overflow x's dtype is an
            error.
        eps: normalisation floor (> 0, at least about sqrt(tiny * d) of the compute dtype, so
            that no row of norm >= eps underflows): rows are divided by max(|row|, eps) as in
            `torch.nn.functional.normalize` (a zero row gives zero logits).
        backend: "auto" (default), "native", "triton" or "torch" (see `dfzsl_fast._backend`).
            "triton" serves float32/float16/bfloat16 (CUDA, or CPU under TRITON_INTERPRET=1).
        check_inputs: reject NaN/Inf inputs and rescale rows whose norm would overflow (one
            read of each input; one host sync on CUDA). False skips these value checks.

    Returns:
        (N, C) logits in x's dtype.

    Differentiable: yes, in x and w (backward op `dfzsl_fast::cosine_logits_backward`).

    Example:
        >>> x, w = torch.randn(8, 512), torch.randn(200, 512)
        >>> dfzsl_fast.cosine_logits(x, w, scale=16.0).shape
        torch.Size([8, 200])
    """
    _check_flag(check_inputs, "check_inputs")
    x, w, eps = _prepare(x, w, eps, check_inputs)
    # |logit| <= |scale| (to rounding), stored in x's dtype
    scale = _checks.check_scale(scale, "scale", _finfo_max(x.dtype) / 2, x.dtype, "logits")
    _, fn = _backend.select("cosine_logits", x.device, x.dtype, backend)
    return fn(x, w, scale, eps)


def cosine_cross_entropy(
    x: torch.Tensor,
    w: torch.Tensor,
    target: torch.Tensor,
    scale: float,
    logit_adjustment: torch.Tensor | None = None,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    eps: float = 1e-12,
    backend: str | None = None,
    *,
    check_inputs: bool = True,
    rows: torch.Tensor | None = None,
) -> torch.Tensor:
    """Cross-entropy of cosine logits without materialising the (N, C) logits.

    Equals `F.cross_entropy(cosine_logits(x, w, scale) + logit_adjustment, target,
    reduction=reduction, label_smoothing=label_smoothing)`, computed over row chunks. For
    "mean"/"sum" with gradients required, the gradients in x and w are computed in the forward
    pass and scaled in the backward (the extra memory is one (N, d) and one (C, d) tensor).

    Args:
        x: (N, d) float features, CPU or CUDA. w: (C, d) class weights, same dtype/device.
        target: (N,) int64 class indices in [0, C).
        scale: finite logit scale s; a scale whose logits or loss overflow x's dtype is an
            error.
        logit_adjustment: optional (C,) float additive bias on the logits inside the loss only
            (DFZSL's prior adjustment); not differentiable.
        reduction: "mean" (default; NaN for N = 0, as torch), "sum" or "none" ((N,) losses).
        label_smoothing: in [0, 1], as `torch.nn.functional.cross_entropy` defines it.
        eps: normalisation floor (see `cosine_logits`).
        backend: "auto", "native", "triton" or "torch".
        check_inputs: reject NaN/Inf inputs and rescale rows whose norm would overflow (one
            read of each input; one host sync on CUDA). False skips these value checks.
        rows: optional (M,) int64 indices into x's rows: the loss is that of the batch
            x[rows] (then target is (M,) and N = M above), as if called on
            ``x.index_select(0, rows)``. A training loop's shuffled batch without the copy:
            with check_inputs=False and a contiguous float32/float64 x, the native CPU kernel
            reads the rows in place (the other kernels, and the native one on a half x, gather
            them first; with check_inputs the batch is gathered once and checked, never all of
            x). The indices are always range-checked (one host sync on CUDA, even with
            check_inputs=False).

    Returns:
        () loss for "mean"/"sum", (N,) for "none", in x's dtype.

    Differentiable: yes, in x and w (not in target or logit_adjustment); with rows, x's
    gradient is zero outside the batch (summed over repeated indices).

    Example:
        >>> x, w = torch.randn(64, 512, requires_grad=True), torch.randn(200, 512)
        >>> y = torch.randint(0, 200, (64,))
        >>> dfzsl_fast.cosine_cross_entropy(x, w, y, scale=16.0).backward()
    """
    compute_grad = torch.is_grad_enabled() and (x.requires_grad or w.requires_grad)
    # fixed features (the usual classifier training): the forward skips the gradient in x
    args, fn = _ce_call(x, w, target, scale, logit_adjustment, reduction, label_smoothing, eps,
                        backend, check_inputs, compute_grad, x.requires_grad, rows)
    return fn(*args)[0]


def cosine_cross_entropy_and_grad_w(
    x: torch.Tensor,
    w: torch.Tensor,
    target: torch.Tensor,
    scale: float,
    logit_adjustment: torch.Tensor | None = None,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    eps: float = 1e-12,
    backend: str | None = None,
    *,
    check_inputs: bool = True,
    rows: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`cosine_cross_entropy` and its gradient in w, in one call, without autograd.

    For training loops over fixed features (DFZSL's final classifier): the kernel computes the
    weight gradient in its forward anyway, so recording a graph and running ``backward()``
    only adds per-step Python overhead (about 0.2 ms a step on the CPU, 5% of the AWA2-size
    classifier epoch). Same arguments, checks and kernels as `cosine_cross_entropy`; the
    gradient in x is not computed. With ``rows`` (and check_inputs=False) the native CPU
    kernel reads the batch in place from a contiguous float32/float64 x: the loop need not
    gather it first (see `cosine_cross_entropy`).

    Returns:
        (loss, grad_w): the () loss ("mean" or "sum") and d loss / d w, (C, d), both detached,
        in x's and w's dtypes; equal to ``loss.backward()``'s w.grad to float rounding.

    Raises:
        ValueError: reduction "none" (no scalar loss to differentiate), and every error of
            `cosine_cross_entropy`.

    Example:
        >>> x, w = torch.randn(64, 512), torch.randn(200, 512)
        >>> loss, gw = dfzsl_fast.cosine_cross_entropy_and_grad_w(
        ...     x, w, torch.randint(0, 200, (64,)), scale=16.0)
        >>> gw.shape
        torch.Size([200, 512])
    """
    if reduction == "none":
        raise ValueError("reduction: expected 'mean' or 'sum' (a scalar loss), got 'none'")
    args, fn = _ce_call(x, w, target, scale, logit_adjustment, reduction, label_smoothing, eps,
                        backend, check_inputs, True, False, rows)
    with torch.no_grad():  # no graph: the kernel returns the gradient
        loss, _, _, grad_w = fn(*args)
    return loss, grad_w


def _ce_call(x, w, target, scale, logit_adjustment, reduction, label_smoothing, eps, backend,
             check_inputs, compute_grad, compute_grad_x, rows):
    """The checked arguments of the cross-entropy kernel and the kernel the router picks."""
    _check_flag(check_inputs, "check_inputs")
    xname = "x"
    if rows is not None:
        _checks.check_pair(x, w)  # x's shape first: rows index it
        rows = _checks.check_rows(rows, x.shape[0], x.device)
        if check_inputs or not x.is_contiguous():
            # the value checks read the batch (not all of x); a strided x would be copied whole
            x, rows, xname = x.index_select(0, rows), None, "x[rows]"
    x, w, eps = _prepare(x, w, eps, check_inputs, xname=xname)
    N, C = (x.shape[0] if rows is None else rows.shape[0]), w.shape[0]
    _checks.check_target(target, N, C, x.device, check_inputs)
    label_smoothing = _checks.check_float(label_smoothing, "label_smoothing", low=0.0, high=1.0)
    if not isinstance(reduction, str) or reduction not in _REDUCTIONS:
        raise ValueError(f"reduction: expected 'mean', 'sum' or 'none', got {reduction!r}")
    red = _REDUCTIONS[reduction]
    adj, adj_max = _checks.check_adjustment(logit_adjustment, C, x, check_inputs)
    # |z| <= |scale| + max|adj|; a row's loss <= 2 max|z| + log C (in x's dtype, summed over N
    # rows for "sum"); label smoothing sums C logits (in the compute dtype).
    cdt = _checks.compute_dtype(x.dtype)
    summed = N if red == 2 else 1
    bound = min(
        (_finfo_max(x.dtype) / (2 * max(summed, 1)) - math.log(C)) / 2,
        _finfo_max(cdt) / (4 * (C + 2) * max(N, 1)),
    )
    scale = _checks.check_scale(scale, "scale", max(bound - adj_max, 0.0), x.dtype, "losses")
    args = (x, w, target, adj, scale, eps, label_smoothing, red, compute_grad, compute_grad_x,
            rows)
    _, fn = _backend.select("cosine_cross_entropy", x.device, x.dtype, backend)
    return args, fn


def cosine_topk(
    x: torch.Tensor,
    w: torch.Tensor,
    k: int = 1,
    scale: float = 1.0,
    eps: float = 1e-12,
    backend: str | None = None,
    *,
    check_inputs: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The k best classes of each row without materialising the (N, C) logits.

    Args:
        x: (N, d) float features. w: (C, d) class weights, same dtype/device.
        k: 1 <= k <= C. scale: finite logit scale. eps: normalisation floor.
        backend: "auto", "native", "triton" or "torch".
        check_inputs: reject NaN/Inf inputs and rescale rows whose norm would overflow (one
            read of each input; one host sync on CUDA). False skips these value checks.

    Returns:
        (scores, indices): (N, k) logits in x's dtype, descending, and their (N, k) int64 class
        indices.

    Differentiable: the scores, in x and w (the indices are not).

    Example:
        >>> scores, idx = dfzsl_fast.cosine_topk(torch.randn(8, 512), torch.randn(200, 512), k=5)
        >>> idx.shape
        torch.Size([8, 5])
    """
    _check_flag(check_inputs, "check_inputs")
    _checks.check_pair(x, w)
    C = w.shape[0]
    k = _checks.check_int(k, "k")
    if not 1 <= k <= C:
        raise ValueError(f"k: expected 1 <= k <= C = {C}, got {k}")
    x, w, eps = _prepare(x, w, eps, check_inputs)
    scale = _checks.check_scale(scale, "scale", _finfo_max(x.dtype) / 2, x.dtype, "scores")
    _, fn = _backend.select("cosine_topk", x.device, x.dtype, backend, k=k)
    return fn(x, w, k, scale, eps)


def cosine_logit_mse(
    x: torch.Tensor,
    w_student: torch.Tensor,
    w_teacher: torch.Tensor,
    scale_s: float,
    scale_t: float,
    eps: float = 1e-12,
    backend: str | None = None,
    *,
    check_inputs: bool = True,
) -> torch.Tensor:
    """Mean squared error between the cosine logits of two weight sets on the same features.

    mean over the N*C entries of (cosine_logits(x, w_student, scale_s) -
    cosine_logits(x, w_teacher, scale_t))^2, the teacher logits detached; computed over row chunks
    with one GEMM per chunk (against s_s ws_hat - s_t wt_hat).

    Args:
        x: (N, d) float features. w_student, w_teacher: (C, d), same dtype/device as x.
        scale_s, scale_t: finite logit scales. eps: normalisation floor.
        backend: "auto", "native", "triton" or "torch".
        check_inputs: reject NaN/Inf inputs and rescale rows whose norm would overflow (one
            read of each input; one host sync on CUDA). False skips these value checks.

    Returns:
        () loss in x's dtype (NaN when N = 0).

    Differentiable: in x (through the student logits) and w_student; w_teacher gets no gradient.

    Example:
        >>> x, wt = torch.randn(64, 512), torch.randn(50, 512)
        >>> ws = torch.randn(50, 512, requires_grad=True)
        >>> dfzsl_fast.cosine_logit_mse(x, ws, wt, 16.0, 100.0).backward()
    """
    _check_flag(check_inputs, "check_inputs")
    _checks.check_pair(x, w_student, "w_student")
    _checks.check_pair(x, w_teacher, "w_teacher")
    if w_student.shape != w_teacher.shape:
        raise ValueError(
            f"w_student and w_teacher: shapes differ ({tuple(w_student.shape)} and "
            f"{tuple(w_teacher.shape)})"
        )
    x, w_student, eps = _prepare(x, w_student, eps, check_inputs, "w_student")
    w_teacher = _checks.safe_rows(w_teacher, "w_teacher", check_inputs)
    # every squared difference <= (|s_s| + |s_t|)^2; their sum over N*C entries in the compute
    # dtype, the mean in x's dtype
    N, C = x.shape[0], w_student.shape[0]
    cdt = _checks.compute_dtype(x.dtype)
    bound = min(
        math.sqrt(_finfo_max(x.dtype) / 2), math.sqrt(_finfo_max(cdt) / (2 * max(N * C, 1)))
    )
    scale_s = _checks.check_scale(scale_s, "scale_s", bound, x.dtype, "squared logit differences")
    scale_t = _checks.check_scale(
        scale_t, "scale_t", bound - abs(scale_s), x.dtype, "squared logit differences"
    )
    compute_grad = torch.is_grad_enabled() and (x.requires_grad or w_student.requires_grad)
    args = (x, w_student, w_teacher.detach(), scale_s, scale_t, eps, compute_grad)
    _, fn = _backend.select("cosine_logit_mse", x.device, x.dtype, backend)
    return fn(*args)[0]
