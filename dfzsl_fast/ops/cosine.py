"""Fused cosine-classifier ops: logits, cross-entropy, top-k and logit MSE, routed to a backend.

Ops (schemas in `ops/_library.py`):

- `dfzsl_fast::cosine_logits(x, w, scale, eps) -> logits` and its backward op
  `cosine_logits_backward(grad, x, w, scale, eps) -> (grad_x, grad_w)`;
- `dfzsl_fast::cosine_cross_entropy(x, w, target, logit_adjustment, scale, eps, label_smoothing,
  reduction, compute_grad) -> (loss, lse, grad_x, grad_w)` and `cosine_cross_entropy_backward`;
- `dfzsl_fast::cosine_topk(x, w, k, scale, eps) -> (scores, indices)`;
- `dfzsl_fast::cosine_logit_mse(x, w_student, w_teacher, scale_s, scale_t, eps, compute_grad)
  -> (loss, grad_x, grad_w_student)`.

The "default" kernels below are pure PyTorch and never hold the (N, C) logits for the loss, top-k
and MSE ops: they walk over row chunks of at most `CHUNK_BYTES / (4 C)` rows, compute the chunk's
logits with one GEMM against the pre-normalised, pre-scaled weights, and reduce them right away.
For a mean/sum cross-entropy (and the MSE) with `compute_grad`, the gradients in x and w are
computed in the same pass (as Liger-Kernel does): the loss is usually the last op, so the
backward only scales them by the incoming scalar gradient. With reduction "none" (or when the
forward ran without `compute_grad`) the backward op recomputes the chunk logits from the saved
per-row log-sum-exp.

Normalisation follows `torch.nn.functional.normalize`: r_hat = r / max(|r|, eps). Its gradient is
(I - r_hat r_hat^T) / |r| when |r| >= eps and I / eps on the clamped branch.

Half inputs (float16, bfloat16) are computed in float32 and returned in the input dtype.
Triton kernels of cosine_logits, cosine_cross_entropy and cosine_topk (float32/float16/bfloat16,
top-k up to k = 16) are the custom ops `dfzsl_fast::<op>_triton` in dfzsl_fast/triton/cosine.py,
chosen by backend="triton" (or "auto" on CUDA tensors without a native kernel); they share the
autograd formulas below. Native kernels register against the same schemas.
"""

from __future__ import annotations

import math

import torch

from .. import _backend
from . import _library  # noqa: F401  (defines the schemas)

__all__ = [
    "cosine_logits",
    "cosine_cross_entropy",
    "cosine_topk",
    "cosine_logit_mse",
    "CHUNK_BYTES",
    "chunk_rows",
]

#: Upper bound on the bytes of one chunk of float32 logits (rows * C * 4) in the default kernels.
CHUNK_BYTES = 32 << 20
#: Debug hook: when set, called as `hook(op_name, start, stop)` for every row chunk processed.
_chunk_hook = None

_REDUCTIONS = {"none": 0, "mean": 1, "sum": 2}


def chunk_rows(C: int) -> int:
    """Rows per chunk of the default kernels: the largest r with r * C * 4 <= CHUNK_BYTES (>= 1)."""
    return max(1, CHUNK_BYTES // (4 * max(int(C), 1)))


def _chunks(op: str, N: int, C: int):
    step = chunk_rows(C)
    for start in range(0, N, step):
        stop = min(N, start + step)
        if _chunk_hook is not None:
            _chunk_hook(op, start, stop)
        yield start, stop


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _normalize(x: torch.Tensor, eps: float):
    """(x_hat, denom, mask): x_hat = x / denom, denom = max(|x|, eps), mask = |x| >= eps."""
    n = torch.linalg.vector_norm(x, dim=1)
    denom = n.clamp_min(eps)
    return x / denom.unsqueeze(1), denom, n >= eps


def _normalize_backward(g, x_hat, denom, mask):
    """Gradient in x of sum(g * x_hat), x_hat = x / max(|x|, eps)."""
    dot = (g * x_hat).sum(1) * mask.to(g.dtype)
    return (g - x_hat * dot.unsqueeze(1)) / denom.unsqueeze(1)


def _empty_grad(t: torch.Tensor, dtype) -> torch.Tensor:
    return t.new_empty(0, t.shape[1], dtype=dtype)


# ======================================================================= cosine_logits
@torch.library.register_fake("dfzsl_fast::cosine_logits")
def _cosine_logits_fake(x, w, scale, eps):
    torch._check(x.dim() == 2 and w.dim() == 2, lambda: "cosine_logits: x (N, d), w (C, d)")
    torch._check(x.shape[1] == w.shape[1], lambda: "cosine_logits: x and w differ in d")
    return x.new_empty(x.shape[0], w.shape[0])


def _cosine_logits_default(x, w, scale, eps):
    cdt = _compute_dtype(x.dtype)
    xh, _, _ = _normalize(x.to(cdt), eps)
    wh, _, _ = _normalize(w.to(cdt), eps)
    out = torch.mm(xh, (wh * scale).T)
    return out.to(x.dtype)


@torch.library.register_fake("dfzsl_fast::cosine_logits_backward")
def _cosine_logits_backward_fake(grad, x, w, scale, eps):
    return torch.empty_like(x), torch.empty_like(w)


def _cosine_logits_backward_default(grad, x, w, scale, eps):
    cdt = _compute_dtype(x.dtype)
    xh, xd, xm = _normalize(x.to(cdt), eps)
    wh, wd, wm = _normalize(w.to(cdt), eps)
    G = grad.to(cdt) * scale
    gx = _normalize_backward(torch.mm(G, wh), xh, xd, xm)
    gw = _normalize_backward(torch.mm(G.T, xh), wh, wd, wm)
    return gx.to(x.dtype), gw.to(w.dtype)


def _logits_setup(ctx, inputs, output):
    x, w, scale, eps = inputs
    ctx.save_for_backward(x, w)
    ctx.scale, ctx.eps = scale, eps


def _logits_backward(ctx, grad):
    x, w = ctx.saved_tensors
    gx, gw = torch.ops.dfzsl_fast.cosine_logits_backward(grad, x, w, ctx.scale, ctx.eps)
    return (
        gx if ctx.needs_input_grad[0] else None,
        gw if ctx.needs_input_grad[1] else None,
        None,
        None,
    )


torch.library.register_autograd(
    "dfzsl_fast::cosine_logits", _logits_backward, setup_context=_logits_setup
)


# ================================================================ cosine_cross_entropy
def _ce_fake_impl(x, w, target, logit_adjustment, scale, eps, label_smoothing, reduction, compute_grad):
    torch._check(x.dim() == 2 and w.dim() == 2, lambda: "cosine_cross_entropy: x (N, d), w (C, d)")
    N = x.shape[0]
    loss = x.new_empty(N) if reduction == 0 else x.new_empty(())
    lse = x.new_empty(N)
    if compute_grad and reduction != 0:
        return loss, lse, torch.empty_like(x), torch.empty_like(w)
    return loss, lse, _empty_grad(x, x.dtype), _empty_grad(w, w.dtype)


torch.library.register_fake("dfzsl_fast::cosine_cross_entropy")(_ce_fake_impl)


def _cosine_cross_entropy_default(
    x, w, target, logit_adjustment, scale, eps, label_smoothing, reduction, compute_grad
):
    N, d = x.shape
    C = w.shape[0]
    cdt = _compute_dtype(x.dtype)
    with_grad = bool(compute_grad) and reduction != 0
    wh, wd, wm = _normalize(w.to(cdt), eps)
    ws = wh * scale  # (C, d): logits = x_hat @ ws.T
    adj = None if logit_adjustment is None else logit_adjustment.to(cdt)
    ls = float(label_smoothing)
    loss_rows = torch.empty(N, dtype=cdt, device=x.device)
    lse = torch.empty(N, dtype=cdt, device=x.device)
    if with_grad:
        grad_x = torch.empty(N, d, dtype=cdt, device=x.device)
        g_ws = torch.zeros(C, d, dtype=cdt, device=x.device)
        row_weight = 1.0 / N if (reduction == 1 and N) else 1.0
    for a, b in _chunks("cosine_cross_entropy", N, C):
        xh, xd, xm = _normalize(x[a:b].to(cdt), eps)
        z = torch.mm(xh, ws.T)
        if adj is not None:
            z.add_(adj)
        lse_c = torch.logsumexp(z, dim=1)
        t = target[a:b]
        zt = z.gather(1, t.unsqueeze(1)).squeeze(1)
        loss_c = lse_c - (1.0 - ls) * zt
        if ls:
            loss_c = loss_c - (ls / C) * z.sum(1)
        loss_rows[a:b] = loss_c
        lse[a:b] = lse_c
        if with_grad:
            P = z.sub_(lse_c.unsqueeze(1)).exp_()  # softmax, in place of z
            if ls:  # smoothing first: for C = 1 the gradient is then exactly 0
                P.sub_(ls / C)
            P[torch.arange(b - a, device=x.device), t] -= 1.0 - ls
            if row_weight != 1.0:
                P.mul_(row_weight)
            grad_x[a:b] = _normalize_backward(torch.mm(P, ws), xh, xd, xm)
            g_ws.addmm_(P.T, xh)
    if reduction == 0:
        loss = loss_rows
    elif reduction == 1:
        loss = loss_rows.sum() / N if N else loss_rows.sum() * float("nan")
    else:
        loss = loss_rows.sum()
    if with_grad:
        grad_w = _normalize_backward(g_ws * scale, wh, wd, wm)
        return loss.to(x.dtype), lse.to(x.dtype), grad_x.to(x.dtype), grad_w.to(w.dtype)
    return loss.to(x.dtype), lse.to(x.dtype), _empty_grad(x, x.dtype), _empty_grad(w, w.dtype)


@torch.library.register_fake("dfzsl_fast::cosine_cross_entropy_backward")
def _ce_backward_fake(grad_loss, x, w, target, logit_adjustment, lse, scale, eps, label_smoothing):
    return torch.empty_like(x), torch.empty_like(w)


def _cosine_cross_entropy_backward_default(
    grad_loss, x, w, target, logit_adjustment, lse, scale, eps, label_smoothing
):
    N, d = x.shape
    C = w.shape[0]
    cdt = _compute_dtype(x.dtype)
    wh, wd, wm = _normalize(w.to(cdt), eps)
    ws = wh * scale
    adj = None if logit_adjustment is None else logit_adjustment.to(cdt)
    ls = float(label_smoothing)
    g = grad_loss.to(cdt)
    lse_c64 = lse.to(cdt)
    grad_x = torch.empty(N, d, dtype=cdt, device=x.device)
    g_ws = torch.zeros(C, d, dtype=cdt, device=x.device)
    for a, b in _chunks("cosine_cross_entropy_backward", N, C):
        xh, xd, xm = _normalize(x[a:b].to(cdt), eps)
        P = torch.mm(xh, ws.T)
        if adj is not None:
            P.add_(adj)
        P.sub_(lse_c64[a:b].unsqueeze(1)).exp_()
        if ls:
            P.sub_(ls / C)
        P[torch.arange(b - a, device=x.device), target[a:b]] -= 1.0 - ls
        P.mul_(g[a:b].unsqueeze(1))
        grad_x[a:b] = _normalize_backward(torch.mm(P, ws), xh, xd, xm)
        g_ws.addmm_(P.T, xh)
    grad_w = _normalize_backward(g_ws * scale, wh, wd, wm)
    return grad_x.to(x.dtype), grad_w.to(w.dtype)


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


def _ce_setup(ctx, inputs, output):
    x, w, target, adj, scale, eps, ls, reduction, compute_grad = inputs
    loss, lse, grad_x, grad_w = output
    ctx.reduction = reduction
    ctx.scale, ctx.eps, ctx.ls = scale, eps, ls
    ctx.has_adj = adj is not None
    if bool(compute_grad) and reduction != 0:
        _hold_precomputed(ctx, grad_x, grad_w)
    else:
        ctx.set_materialize_grads(False)
    # Inputs cost nothing to save; they serve a second backward (retain_graph) or compute_grad=False.
    ctx.save_for_backward(x, w, target, adj if adj is not None else x.new_empty(0), lse)
    ctx.mark_non_differentiable(lse, grad_x, grad_w)


def _ce_backward(ctx, g_loss, g_lse, g_gx, g_gw):
    none = (None,) * 9
    if g_loss is None:
        return none
    pre = _take_precomputed(ctx, g_loss)
    if pre is not None:
        gx, gw = pre
    else:
        x, w, target, adj, lse = ctx.saved_tensors
        N = x.shape[0]
        if ctx.reduction == 0:
            rows = g_loss
        elif ctx.reduction == 1:
            rows = (g_loss / max(N, 1)).expand(N)
        else:
            rows = g_loss.expand(N)
        gx, gw = torch.ops.dfzsl_fast.cosine_cross_entropy_backward(
            rows.contiguous(), x, w, target, adj if ctx.has_adj else None, lse,
            ctx.scale, ctx.eps, ctx.ls,
        )
    return (
        gx if ctx.needs_input_grad[0] else None,
        gw if ctx.needs_input_grad[1] else None,
    ) + none[2:]


torch.library.register_autograd(
    "dfzsl_fast::cosine_cross_entropy", _ce_backward, setup_context=_ce_setup
)


# ========================================================================= cosine_topk
@torch.library.register_fake("dfzsl_fast::cosine_topk")
def _cosine_topk_fake(x, w, k, scale, eps):
    torch._check(x.dim() == 2 and w.dim() == 2, lambda: "cosine_topk: x (N, d), w (C, d)")
    N = x.shape[0]
    return x.new_empty(N, k), x.new_empty(N, k, dtype=torch.int64)


def _cosine_topk_default(x, w, k, scale, eps):
    N = x.shape[0]
    C = w.shape[0]
    cdt = _compute_dtype(x.dtype)
    wh, _, _ = _normalize(w.to(cdt), eps)
    ws = wh * scale
    scores = torch.empty(N, k, dtype=cdt, device=x.device)
    idx = torch.empty(N, k, dtype=torch.int64, device=x.device)
    for a, b in _chunks("cosine_topk", N, C):
        xh, _, _ = _normalize(x[a:b].to(cdt), eps)
        v, i = torch.topk(torch.mm(xh, ws.T), k, dim=1, largest=True, sorted=True)
        scores[a:b] = v
        idx[a:b] = i
    return scores.to(x.dtype), idx


def _topk_setup(ctx, inputs, output):
    x, w, k, scale, eps = inputs
    scores, idx = output
    ctx.save_for_backward(x, w, idx)
    ctx.scale, ctx.eps = scale, eps
    ctx.mark_non_differentiable(idx)


def _topk_backward(ctx, g_scores, g_idx):
    # scores[i, j] = s * x_hat_i . w_hat_{idx[i, j]}: a sparse (N, C) gradient with k entries a row.
    x, w, idx = ctx.saved_tensors
    cdt = _compute_dtype(x.dtype)
    xh, xd, xm = _normalize(x.to(cdt), ctx.eps)
    wh, wd, wm = _normalize(w.to(cdt), ctx.eps)
    g = g_scores.to(cdt) * ctx.scale  # (N, k)
    gx = gw = None
    if ctx.needs_input_grad[0]:
        g_xh = torch.einsum("nk,nkd->nd", g, wh[idx])
        gx = _normalize_backward(g_xh, xh, xd, xm).to(x.dtype)
    if ctx.needs_input_grad[1]:
        d = x.shape[1]
        contrib = (g.unsqueeze(2) * xh.unsqueeze(1)).reshape(-1, d)
        g_wh = torch.zeros_like(wh).index_add_(0, idx.reshape(-1), contrib)
        gw = _normalize_backward(g_wh, wh, wd, wm).to(w.dtype)
    return gx, gw, None, None, None


torch.library.register_autograd("dfzsl_fast::cosine_topk", _topk_backward, setup_context=_topk_setup)


# ==================================================================== cosine_logit_mse
@torch.library.register_fake("dfzsl_fast::cosine_logit_mse")
def _mse_fake(x, w_student, w_teacher, scale_s, scale_t, eps, compute_grad):
    torch._check(x.dim() == 2 and w_student.dim() == 2, lambda: "cosine_logit_mse: 2-D inputs")
    loss = x.new_empty(())
    if compute_grad:
        return loss, torch.empty_like(x), torch.empty_like(w_student)
    return loss, _empty_grad(x, x.dtype), _empty_grad(w_student, w_student.dtype)


def _mse_impl(x, w_student, w_teacher, scale_s, scale_t, eps, compute_grad, row_scale=None):
    """Loss and (optionally) gradients; the (N, C) difference is only ever held one chunk at a time.

    student - teacher = x_hat @ D.T with D = s_s * ws_hat - s_t * wt_hat (C, d), so one GEMM per
    chunk serves both weight sets. `row_scale` (a () tensor) multiplies the gradients.
    """
    N, d = x.shape
    C = w_student.shape[0]
    cdt = _compute_dtype(x.dtype)
    wsh, wsd, wsm = _normalize(w_student.to(cdt), eps)
    wth, _, _ = _normalize(w_teacher.to(cdt), eps)
    Ws = wsh * scale_s
    D = Ws - wth * scale_t
    total = torch.zeros((), dtype=cdt, device=x.device)
    if compute_grad:
        grad_x = torch.empty(N, d, dtype=cdt, device=x.device)
        g_D = torch.zeros(C, d, dtype=cdt, device=x.device)
        coef = 2.0 / (N * C) if N * C else 0.0
    for a, b in _chunks("cosine_logit_mse", N, C):
        xh, xd, xm = _normalize(x[a:b].to(cdt), eps)
        E = torch.mm(xh, D.T)
        total = total + (E * E).sum()
        if compute_grad:
            E.mul_(coef if row_scale is None else coef * row_scale)
            # the teacher logits are detached: x's gradient flows through the student only
            grad_x[a:b] = _normalize_backward(torch.mm(E, Ws), xh, xd, xm)
            g_D.addmm_(E.T, xh)
    loss = total / (N * C) if N * C else total * float("nan")
    if compute_grad:
        grad_w = _normalize_backward(g_D * scale_s, wsh, wsd, wsm)
        return loss.to(x.dtype), grad_x.to(x.dtype), grad_w.to(w_student.dtype)
    return loss.to(x.dtype), _empty_grad(x, x.dtype), _empty_grad(w_student, w_student.dtype)


def _cosine_logit_mse_default(x, w_student, w_teacher, scale_s, scale_t, eps, compute_grad):
    return _mse_impl(x, w_student, w_teacher, scale_s, scale_t, eps, bool(compute_grad))


def _mse_setup(ctx, inputs, output):
    x, ws, wt, scale_s, scale_t, eps, compute_grad = inputs
    loss, grad_x, grad_w = output
    ctx.args = (scale_s, scale_t, eps)
    if bool(compute_grad):
        _hold_precomputed(ctx, grad_x, grad_w)
    else:
        ctx.set_materialize_grads(False)
    ctx.save_for_backward(x, ws, wt)
    ctx.mark_non_differentiable(grad_x, grad_w)


def _mse_backward(ctx, g_loss, g_gx, g_gw):
    if g_loss is None:
        return (None,) * 7
    pre = _take_precomputed(ctx, g_loss)
    if pre is not None:
        gx, gw = pre
    else:  # closed form, recomputed chunk by chunk (forward ran without compute_grad)
        x, ws, wt = ctx.saved_tensors
        _, gx, gw = _mse_impl(x, ws, wt, *ctx.args, True)
        gx, gw = gx * g_loss, gw * g_loss
    return (
        gx if ctx.needs_input_grad[0] else None,
        gw if ctx.needs_input_grad[1] else None,
        None, None, None, None, None,
    )


torch.library.register_autograd(
    "dfzsl_fast::cosine_logit_mse", _mse_backward, setup_context=_mse_setup
)


# ------------------------------------------------------------------------------ default kernels
# Registered here, not by decorator (register_kernel's decorator form returns None, and
# backend="torch" calls these functions directly).
for _name, _fn in (
    ("cosine_logits", _cosine_logits_default),
    ("cosine_logits_backward", _cosine_logits_backward_default),
    ("cosine_cross_entropy", _cosine_cross_entropy_default),
    ("cosine_cross_entropy_backward", _cosine_cross_entropy_backward_default),
    ("cosine_topk", _cosine_topk_default),
    ("cosine_logit_mse", _cosine_logit_mse_default),
):
    torch.library.register_kernel(f"dfzsl_fast::{_name}", "default", _fn)


# ---------------------------------------------------------------------------- argument checking
def _is_compiling() -> bool:
    try:
        return torch.compiler.is_compiling()
    except Exception:  # pragma: no cover
        return False


def _check_matrix(t, name: str, rows: str) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise TypeError(f"{name}: expected a floating-point tensor, got dtype {t.dtype}")
    if t.dim() != 2:
        raise ValueError(f"{name}: expected shape ({rows}, d), got {tuple(t.shape)}")
    return t


def _check_pair(x, w, wname: str = "w") -> None:
    _check_matrix(x, "x", "N")
    _check_matrix(w, wname, "C")
    if w.shape[0] < 1:
        raise ValueError(f"{wname}: expected at least one class (C >= 1), got shape {tuple(w.shape)}")
    if x.shape[1] != w.shape[1]:
        raise ValueError(
            f"x and {wname}: feature dimensions differ: x is {tuple(x.shape)}, "
            f"{wname} is {tuple(w.shape)} (expected (N, d) and (C, d) with the same d)"
        )
    if x.device != w.device:
        raise ValueError(f"x and {wname}: on different devices ({x.device} and {w.device})")
    if x.dtype != w.dtype:
        raise TypeError(f"x and {wname}: dtypes differ ({x.dtype} and {w.dtype}); cast one")


def _check_float(value, name: str, *, low: float | None = None, high: float | None = None) -> float:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"{name}: expected a Python number or a one-element tensor")
        if value.requires_grad:
            raise ValueError(f"{name}: no gradient flows to {name}; pass a float (or .detach())")
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name}: expected a real number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name}: expected a finite number, got {value}")
    if low is not None and value < low:
        raise ValueError(f"{name}: expected >= {low}, got {value}")
    if high is not None and value > high:
        raise ValueError(f"{name}: expected <= {high}, got {value}")
    return value


def _check_target(target, N: int, C: int, device) -> torch.Tensor:
    if not isinstance(target, torch.Tensor):
        raise TypeError(f"target: expected an int64 tensor, got {type(target).__name__}")
    if target.dtype != torch.int64:
        raise TypeError(f"target: expected dtype torch.int64 (class indices), got {target.dtype}")
    if target.shape != (N,):
        raise ValueError(f"target: expected shape ({N},), got {tuple(target.shape)}")
    if target.device != device:
        raise ValueError(f"target: expected device {device}, got {target.device}")
    if N and not _is_compiling():
        lo, hi = int(target.min()), int(target.max())
        if lo < 0 or hi >= C:
            raise ValueError(f"target: expected class indices in [0, {C}), got range [{lo}, {hi}]")
    return target


def _check_adjustment(adj, C: int, x: torch.Tensor) -> torch.Tensor | None:
    if adj is None:
        return None
    if not isinstance(adj, torch.Tensor):
        raise TypeError(f"logit_adjustment: expected a ({C},) tensor, got {type(adj).__name__}")
    if not adj.is_floating_point():
        raise TypeError(f"logit_adjustment: expected a floating-point tensor, got {adj.dtype}")
    if adj.shape != (C,):
        raise ValueError(f"logit_adjustment: expected shape ({C},), got {tuple(adj.shape)}")
    if adj.device != x.device:
        raise ValueError(f"logit_adjustment: expected device {x.device}, got {adj.device}")
    if adj.requires_grad:
        raise ValueError(
            "logit_adjustment: no gradient flows to the logit adjustment; pass .detach()"
        )
    return adj.contiguous()


_TRITON_OPS = ("cosine_logits", "cosine_cross_entropy", "cosine_topk")
_TRITON_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _triton_extra(op: str, dtype: torch.dtype, k: int | None = None) -> dict:
    """Reasons (beyond device/install) why the Triton kernel of `op` cannot serve this input."""
    if op not in _TRITON_OPS:
        return {"triton": [f"no Triton kernel for {op} yet"]}
    why = []
    if dtype not in _TRITON_DTYPES:
        why.append(f"Triton kernels take float32, float16 or bfloat16 inputs, got {dtype}")
    if k is not None and _backend._triton.HAS_TRITON:
        from ..triton import cosine as _tcos

        if k > _tcos.MAX_TOPK:
            why.append(f"k = {k} exceeds the Triton top-k limit of {_tcos.MAX_TOPK}")
    return {"triton": why}


def _route(backend: str | None, op: str, device: torch.device, extra: dict | None = None) -> str:
    """'op' (the dispatcher: native kernel if registered, else the default kernel), 'torch', or
    'triton' (the custom op `dfzsl_fast::<op>_triton`)."""
    if _is_compiling():
        return "op"
    name = _backend.resolve(backend, op, device, extra)
    if name == "triton":
        from ..triton import cosine as _tcos  # noqa: F401  (registers the *_triton ops)

        return "triton"
    if name == "torch" and not _backend.native_reasons(op, device):
        return "torch"  # a native kernel exists: bypass it, run the pure-PyTorch path
    return "op"


def _call_torch_path(kernel, setup, backward, inputs, n_tensor_inputs):
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


# ------------------------------------------------------------------------------------ public API
def cosine_logits(
    x: torch.Tensor,
    w: torch.Tensor,
    scale: float = 1.0,
    eps: float = 1e-12,
    backend: str | None = None,
) -> torch.Tensor:
    """Cosine logits: scale * normalize(x) @ normalize(w).T.

    Args:
        x: (N, d) float tensor (float32/float64; float16/bfloat16 computed in float32), CPU or CUDA.
        w: (C, d) class weights, same dtype and device as x, C >= 1.
        scale: finite logit scale s.
        eps: normalisation floor: rows are divided by max(|row|, eps) as in
            `torch.nn.functional.normalize` (a zero row gives zero logits).
        backend: "auto" (default), "native", "triton" or "torch" (see `dfzsl_fast._backend`).
            "triton" serves float32/float16/bfloat16 (CUDA, or CPU under TRITON_INTERPRET=1).

    Returns:
        (N, C) logits in x's dtype.

    Differentiable: yes, in x and w (backward op `dfzsl_fast::cosine_logits_backward`).

    Example:
        >>> x, w = torch.randn(8, 512), torch.randn(200, 512)
        >>> dfzsl_fast.cosine_logits(x, w, scale=16.0).shape
        torch.Size([8, 200])
    """
    _check_pair(x, w)
    scale = _check_float(scale, "scale")
    eps = _check_float(eps, "eps", low=0.0)
    route = _route(backend, "cosine_logits", x.device, _triton_extra("cosine_logits", x.dtype))
    if route == "torch":
        return _call_torch_path(
            _cosine_logits_default, _logits_setup, _logits_backward, (x, w, scale, eps), 2
        )
    if route == "triton":
        return torch.ops.dfzsl_fast.cosine_logits_triton(x, w, scale, eps)
    return torch.ops.dfzsl_fast.cosine_logits(x, w, scale, eps)


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
) -> torch.Tensor:
    """Cross-entropy of cosine logits without materialising the (N, C) logits.

    Equals `F.cross_entropy(cosine_logits(x, w, scale) + logit_adjustment, target,
    reduction=reduction, label_smoothing=label_smoothing)`, computed over row chunks. For
    "mean"/"sum" with gradients required, the gradients in x and w are computed in the forward
    pass and scaled in the backward (the extra memory is one (N, d) and one (C, d) tensor).

    Args:
        x: (N, d) float features, CPU or CUDA. w: (C, d) class weights, same dtype/device.
        target: (N,) int64 class indices in [0, C).
        scale: finite logit scale s.
        logit_adjustment: optional (C,) float additive bias on the logits inside the loss only
            (DFZSL's prior adjustment); not differentiable.
        reduction: "mean" (default; NaN for N = 0, as torch), "sum" or "none" ((N,) losses).
        label_smoothing: in [0, 1], as `torch.nn.functional.cross_entropy` defines it.
        eps: normalisation floor (see `cosine_logits`).
        backend: "auto", "native", "triton" or "torch".

    Returns:
        () loss for "mean"/"sum", (N,) for "none", in x's dtype.

    Differentiable: yes, in x and w (not in target or logit_adjustment).

    Example:
        >>> x, w = torch.randn(64, 512, requires_grad=True), torch.randn(200, 512)
        >>> y = torch.randint(0, 200, (64,))
        >>> dfzsl_fast.cosine_cross_entropy(x, w, y, scale=16.0).backward()
    """
    _check_pair(x, w)
    N, C = x.shape[0], w.shape[0]
    _check_target(target, N, C, x.device)
    scale = _check_float(scale, "scale")
    eps = _check_float(eps, "eps", low=0.0)
    label_smoothing = _check_float(label_smoothing, "label_smoothing", low=0.0, high=1.0)
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction: expected 'mean', 'sum' or 'none', got {reduction!r}")
    red = _REDUCTIONS[reduction]
    adj = _check_adjustment(logit_adjustment, C, x)
    compute_grad = torch.is_grad_enabled() and (x.requires_grad or w.requires_grad)
    args = (x, w, target, adj, scale, eps, label_smoothing, red, compute_grad)
    route = _route(
        backend, "cosine_cross_entropy", x.device, _triton_extra("cosine_cross_entropy", x.dtype)
    )
    if route == "torch":
        return _call_torch_path(_cosine_cross_entropy_default, _ce_setup, _ce_backward, args, 4)[0]
    if route == "triton":
        return torch.ops.dfzsl_fast.cosine_cross_entropy_triton(*args)[0]
    return torch.ops.dfzsl_fast.cosine_cross_entropy(*args)[0]


def cosine_topk(
    x: torch.Tensor,
    w: torch.Tensor,
    k: int = 1,
    scale: float = 1.0,
    eps: float = 1e-12,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The k best classes of each row without materialising the (N, C) logits.

    Args:
        x: (N, d) float features. w: (C, d) class weights, same dtype/device.
        k: 1 <= k <= C. scale: finite logit scale. eps: normalisation floor.
        backend: "auto", "native", "triton" or "torch".

    Returns:
        (scores, indices): (N, k) logits in x's dtype, descending, and their (N, k) int64 class
        indices.

    Differentiable: the scores, in x and w (the indices are not).

    Example:
        >>> scores, idx = dfzsl_fast.cosine_topk(torch.randn(8, 512), torch.randn(200, 512), k=5)
        >>> idx.shape
        torch.Size([8, 5])
    """
    _check_pair(x, w)
    C = w.shape[0]
    if isinstance(k, bool) or not isinstance(k, int):
        raise TypeError(f"k: expected an int, got {type(k).__name__}")
    if not 1 <= k <= C:
        raise ValueError(f"k: expected 1 <= k <= C = {C}, got {k}")
    scale = _check_float(scale, "scale")
    eps = _check_float(eps, "eps", low=0.0)
    args = (x, w, k, scale, eps)
    route = _route(backend, "cosine_topk", x.device, _triton_extra("cosine_topk", x.dtype, k))
    if route == "torch":
        return _call_torch_path(_cosine_topk_default, _topk_setup, _topk_backward, args, 2)
    if route == "triton":
        return torch.ops.dfzsl_fast.cosine_topk_triton(*args)
    return torch.ops.dfzsl_fast.cosine_topk(*args)


def cosine_logit_mse(
    x: torch.Tensor,
    w_student: torch.Tensor,
    w_teacher: torch.Tensor,
    scale_s: float,
    scale_t: float,
    eps: float = 1e-12,
    backend: str | None = None,
) -> torch.Tensor:
    """Mean squared error between the cosine logits of two weight sets on the same features.

    mean over the N*C entries of (cosine_logits(x, w_student, scale_s) -
    cosine_logits(x, w_teacher, scale_t))^2, the teacher logits detached; computed over row chunks
    with one GEMM per chunk (against s_s ws_hat - s_t wt_hat).

    Args:
        x: (N, d) float features. w_student, w_teacher: (C, d), same dtype/device as x.
        scale_s, scale_t: finite logit scales. eps: normalisation floor.
        backend: "auto", "native", "triton" or "torch".

    Returns:
        () loss in x's dtype (NaN when N = 0).

    Differentiable: in x (through the student logits) and w_student; w_teacher gets no gradient.

    Example:
        >>> x, ws, wt = torch.randn(64, 512), torch.randn(50, 512, requires_grad=True), torch.randn(50, 512)
        >>> dfzsl_fast.cosine_logit_mse(x, ws, wt, 16.0, 100.0).backward()
    """
    _check_pair(x, w_student, "w_student")
    _check_pair(x, w_teacher, "w_teacher")
    if w_student.shape != w_teacher.shape:
        raise ValueError(
            f"w_student and w_teacher: shapes differ ({tuple(w_student.shape)} and "
            f"{tuple(w_teacher.shape)})"
        )
    scale_s = _check_float(scale_s, "scale_s")
    scale_t = _check_float(scale_t, "scale_t")
    eps = _check_float(eps, "eps", low=0.0)
    compute_grad = torch.is_grad_enabled() and (x.requires_grad or w_student.requires_grad)
    args = (x, w_student, w_teacher.detach(), scale_s, scale_t, eps, compute_grad)
    extra = _triton_extra("cosine_logit_mse", x.dtype)
    if _route(backend, "cosine_logit_mse", x.device, extra) == "torch":
        return _call_torch_path(_cosine_logit_mse_default, _mse_setup, _mse_backward, args, 3)[0]
    return torch.ops.dfzsl_fast.cosine_logit_mse(*args)[0]
