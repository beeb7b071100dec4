"""Autograd of the cosine-classifier ops, shared by the dispatcher ops (`dfzsl_fast::cosine_*`,
registered in dfzsl_fast/ops/cosine.py), the Triton custom ops (dfzsl_fast/triton/cosine.py)
and the direct pure-PyTorch path (`call_direct`). It sits below both ops/ and triton/.

Each op has a `*_setup` (setup_context) and a `*_backward`; the backward ops are called through
the dispatcher (`torch.ops.dfzsl_fast.*_backward`), so a native backward kernel serves them
where one is registered.
"""

from __future__ import annotations

import torch

from ..ops import _library  # noqa: F401  (defines the schemas of the backward ops)
from ..reference.cosine_chunked import compute_dtype, mse_impl, normalize, normalize_backward

__all__ = [
    "logits_setup",
    "logits_backward",
    "check_rows_meta",
    "ce_setup",
    "ce_backward",
    "topk_setup",
    "topk_backward",
    "mse_setup",
    "mse_backward",
    "call_direct",
]


def logits_setup(ctx, inputs, output):
    x, w, scale, eps = inputs
    ctx.save_for_backward(x, w)
    ctx.scale, ctx.eps = scale, eps


def logits_backward(ctx, grad):
    x, w = ctx.saved_tensors
    gx, gw = torch.ops.dfzsl_fast.cosine_logits_backward(grad, x, w, ctx.scale, ctx.eps)
    return (
        gx if ctx.needs_input_grad[0] else None,
        gw if ctx.needs_input_grad[1] else None,
        None,
        None,
    )



def _hold_precomputed(ctx, *grads) -> None:
    # The forward already computed the gradients (compute_grad=True). They are kept on ctx, not
    # in save_for_backward, so that the first backward can hand them to autograd without a copy
    # (autograd steals a gradient tensor nobody else references) and drop them right away.
    ctx.precomputed_grads = grads
    # Without this, autograd would allocate zero (N, d) gradients for the unused outputs.
    ctx.set_materialize_grads(False)


def _take_precomputed(ctx, g_loss):
    """Scaled precomputed gradients on the first backward; None afterwards (then recompute)."""
    grads = getattr(ctx, "precomputed_grads", None)
    if grads is None:
        return None
    ctx.precomputed_grads = None
    # The usual loss.backward() on CPU: no copy at all. (Only for plain tensors: a traced or
    # fake g_loss has no value to compare, and on CUDA the comparison would synchronise.)
    if type(g_loss) is torch.Tensor and g_loss.device.type == "cpu" and bool(g_loss == 1):
        return grads
    return tuple(g * g_loss for g in grads)


def check_rows_meta(rows, x, op: str) -> None:
    """The shape, dtype and device contract of the cross-entropy's optional `rows`, for the fake
    kernels (ops/ and triton/; the real kernels check it themselves)."""
    if rows is not None:
        torch._check(rows.dim() == 1 and rows.dtype == torch.int64,
                     lambda: f"{op}: rows must be an (M,) int64 tensor")
        torch._check(rows.device == x.device, lambda: f"{op}: rows must be on x's device")


def ce_setup(ctx, inputs, output):
    x, w, target, adj, scale, eps, ls, reduction, compute_grad = inputs[:9]
    rows = inputs[10] if len(inputs) > 10 else None  # the batch is x[rows] (optional 11th input)
    loss, lse, grad_x, grad_w = output
    ctx.reduction = reduction
    ctx.n_inputs = len(inputs)
    ctx.has_rows = rows is not None
    ctx.x_numel = (rows.numel() if rows is not None else x.shape[0]) * x.shape[1]
    ctx.scale, ctx.eps, ctx.ls = scale, eps, ls
    ctx.has_adj = adj is not None
    if bool(compute_grad) and reduction != 0:
        _hold_precomputed(ctx, grad_x, grad_w)
    else:
        ctx.set_materialize_grads(False)
    # Inputs cost nothing to save; they serve a second backward (retain_graph) or
    # compute_grad=False.
    ctx.save_for_backward(x, w, target, adj if adj is not None else x.new_empty(0), lse,
                          rows if rows is not None else target.new_empty(0))
    ctx.mark_non_differentiable(lse, grad_x, grad_w)


def ce_backward(ctx, g_loss, g_lse, g_gx, g_gw):
    # one gradient slot per input of the forward (compute_grad_x and rows, the 10th and
    # 11th, are optional)
    none = (None,) * ctx.n_inputs
    if g_loss is None:
        return none
    pre = _take_precomputed(ctx, g_loss)
    if pre is not None and ctx.needs_input_grad[0] and pre[0].numel() != ctx.x_numel:
        pre = None  # the forward skipped grad_x (compute_grad_x=False) yet x needs it: recompute
    x, w, target, adj, lse, rows = ctx.saved_tensors
    if pre is not None:
        gx, gw = pre
    else:
        xb = x.index_select(0, rows) if ctx.has_rows else x
        N = xb.shape[0]
        if ctx.reduction == 0:
            per_row = g_loss
        elif ctx.reduction == 1:
            per_row = (g_loss / max(N, 1)).expand(N)
        else:
            per_row = g_loss.expand(N)
        gx, gw = torch.ops.dfzsl_fast.cosine_cross_entropy_backward(
            per_row.contiguous(), xb, w, target, adj if ctx.has_adj else None, lse,
            ctx.scale, ctx.eps, ctx.ls,
        )
    if ctx.has_rows and ctx.needs_input_grad[0]:  # the batch's rows back into x's shape
        gx = torch.zeros_like(x).index_add_(0, rows, gx.to(x.dtype))
    return (
        gx if ctx.needs_input_grad[0] else None,
        gw if ctx.needs_input_grad[1] else None,
    ) + none[2:]



def topk_setup(ctx, inputs, output):
    x, w, k, scale, eps = inputs
    scores, idx = output
    ctx.save_for_backward(x, w, idx)
    ctx.scale, ctx.eps = scale, eps
    ctx.mark_non_differentiable(idx)


def topk_backward(ctx, g_scores, g_idx):
    # scores[i, j] = s * x_hat_i . w_hat_{idx[i, j]}: a sparse (N, C) gradient with k entries a row.
    x, w, idx = ctx.saved_tensors
    cdt = compute_dtype(x.dtype)
    xh, xd, xm = normalize(x.to(cdt), ctx.eps)
    wh, wd, wm = normalize(w.to(cdt), ctx.eps)
    g = g_scores.to(cdt) * ctx.scale  # (N, k)
    gx = gw = None
    if ctx.needs_input_grad[0]:
        g_xh = torch.einsum("nk,nkd->nd", g, wh[idx])
        gx = normalize_backward(g_xh, xh, xd, xm).to(x.dtype)
    if ctx.needs_input_grad[1]:
        d = x.shape[1]
        contrib = (g.unsqueeze(2) * xh.unsqueeze(1)).reshape(-1, d)
        g_wh = torch.zeros_like(wh).index_add_(0, idx.reshape(-1), contrib)
        gw = normalize_backward(g_wh, wh, wd, wm).to(w.dtype)
    return gx, gw, None, None, None



def mse_setup(ctx, inputs, output):
    x, ws, wt, scale_s, scale_t, eps, compute_grad = inputs
    loss, grad_x, grad_w = output
    ctx.args = (scale_s, scale_t, eps)
    if bool(compute_grad):
        _hold_precomputed(ctx, grad_x, grad_w)
    else:
        ctx.set_materialize_grads(False)
    ctx.save_for_backward(x, ws, wt)
    ctx.mark_non_differentiable(grad_x, grad_w)


def mse_backward(ctx, g_loss, g_gx, g_gw):
    if g_loss is None:
        return (None,) * 7
    pre = _take_precomputed(ctx, g_loss)
    if pre is not None:
        gx, gw = pre
    else:  # closed form, recomputed chunk by chunk (forward ran without compute_grad)
        x, ws, wt = ctx.saved_tensors
        _, gx, gw = mse_impl(x, ws, wt, *ctx.args, True)
        gx, gw = gx * g_loss, gw * g_loss
    return (
        gx if ctx.needs_input_grad[0] else None,
        gw if ctx.needs_input_grad[1] else None,
        None, None, None, None, None,
    )



def call_direct(kernel, setup, backward, inputs):
    """Calls a default kernel with autograd but without the dispatcher (backend='torch' when a
    native kernel is registered)."""

    class _Fn(torch.autograd.Function):
        @staticmethod
        def forward(ctx, *args):
            with torch.no_grad():
                out = kernel(*args)
            setup(ctx, args, out)
            return out

        @staticmethod
        def backward(ctx, *grads):
            return backward(ctx, *grads)

    return _Fn.apply(*inputs)
