"""Default (pure-PyTorch) kernels of the fused cosine-classifier ops: chunked, never holding the
(N, C) logits of the loss, top-k and MSE ops.

They walk over row chunks of at most `CHUNK_BYTES / (4 C)` rows, compute the chunk's logits with
one GEMM against the pre-normalised, pre-scaled weights, and reduce them right away. For a
mean/sum cross-entropy (and the MSE) with `compute_grad`, the gradients in x and w are computed in
the same pass (as Liger-Kernel does): the loss is usually the last op, so the backward only
scales them by the incoming scalar gradient. With reduction "none" (or when the forward ran
without `compute_grad`) the backward op recomputes the chunk logits from the saved per-row
log-sum-exp.

Normalisation follows `torch.nn.functional.normalize`: r_hat = r / max(|r|, eps). Its gradient is
(I - r_hat r_hat^T) / |r| when |r| >= eps and I / eps on the clamped branch. Half inputs
(float16, bfloat16) are computed in float32 and returned in the input dtype.

These are the "default" kernels of the `dfzsl_fast::cosine_*` ops (registered in
dfzsl_fast/ops/cosine.py) and the "torch" backend; `reference/cosine.py` is their float64 oracle.
Arguments are the op schemas' (validated by the public wrappers).
"""

from __future__ import annotations

import torch

__all__ = [
    "CHUNK_BYTES",
    "chunk_rows",
    "compute_dtype",
    "normalize",
    "normalize_backward",
    "empty_grad",
    "cosine_logits",
    "cosine_logits_backward",
    "cosine_cross_entropy",
    "cosine_cross_entropy_backward",
    "cosine_topk",
    "cosine_logit_mse",
    "mse_impl",
]

#: Upper bound on the bytes of one chunk of float32 logits (rows * C * 4) in the default kernels.
CHUNK_BYTES = 32 << 20
#: Debug hook: when set, called as `hook(op_name, start, stop)` for every row chunk processed.
_chunk_hook = None

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


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def normalize(x: torch.Tensor, eps: float):
    """(x_hat, denom, mask): x_hat = x / denom, denom = max(|x|, eps), mask = |x| >= eps."""
    n = torch.linalg.vector_norm(x, dim=1)
    denom = n.clamp_min(eps)
    return x / denom.unsqueeze(1), denom, n >= eps


def normalize_backward(g, x_hat, denom, mask):
    """Gradient in x of sum(g * x_hat), x_hat = x / max(|x|, eps)."""
    dot = (g * x_hat).sum(1) * mask.to(g.dtype)
    return (g - x_hat * dot.unsqueeze(1)) / denom.unsqueeze(1)


def empty_grad(t: torch.Tensor, dtype) -> torch.Tensor:
    return t.new_empty(0, t.shape[1], dtype=dtype)


def cosine_logits(x, w, scale, eps):
    cdt = compute_dtype(x.dtype)
    xh, _, _ = normalize(x.to(cdt), eps)
    wh, _, _ = normalize(w.to(cdt), eps)
    out = torch.mm(xh, (wh * scale).T)
    return out.to(x.dtype)



def cosine_logits_backward(grad, x, w, scale, eps):
    cdt = compute_dtype(x.dtype)
    xh, xd, xm = normalize(x.to(cdt), eps)
    wh, wd, wm = normalize(w.to(cdt), eps)
    G = grad.to(cdt) * scale
    gx = normalize_backward(torch.mm(G, wh), xh, xd, xm)
    gw = normalize_backward(torch.mm(G.T, xh), wh, wd, wm)
    return gx.to(x.dtype), gw.to(w.dtype)



def cosine_cross_entropy(
    x, w, target, logit_adjustment, scale, eps, label_smoothing, reduction, compute_grad,
    compute_grad_x=True, rows=None,
):
    if rows is not None:  # the batch x[rows]: gathered here (the native CPU kernel reads in place)
        x = x.index_select(0, rows)
    N, d = x.shape
    C = w.shape[0]
    cdt = compute_dtype(x.dtype)
    with_grad = bool(compute_grad) and reduction != 0
    with_gx = with_grad and bool(compute_grad_x)
    wh, wd, wm = normalize(w.to(cdt), eps)
    ws = wh * scale  # (C, d): logits = x_hat @ ws.T
    adj = None if logit_adjustment is None else logit_adjustment.to(cdt)
    ls = float(label_smoothing)
    loss_rows = torch.empty(N, dtype=cdt, device=x.device)
    lse = torch.empty(N, dtype=cdt, device=x.device)
    if with_grad:
        grad_x = torch.empty(N, d, dtype=cdt, device=x.device) if with_gx else None
        g_ws = torch.zeros(C, d, dtype=cdt, device=x.device)
        row_weight = 1.0 / N if (reduction == 1 and N) else 1.0
    for a, b in _chunks("cosine_cross_entropy", N, C):
        xh, xd, xm = normalize(x[a:b].to(cdt), eps)
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
            if with_gx:
                grad_x[a:b] = normalize_backward(torch.mm(P, ws), xh, xd, xm)
            g_ws.addmm_(P.T, xh)
    if reduction == 0:
        loss = loss_rows
    elif reduction == 1:
        loss = loss_rows.sum() / N if N else loss_rows.sum() * float("nan")
    else:
        loss = loss_rows.sum()
    if with_grad:
        grad_w = normalize_backward(g_ws * scale, wh, wd, wm)
        gx = grad_x.to(x.dtype) if with_gx else empty_grad(x, x.dtype)
        return loss.to(x.dtype), lse.to(x.dtype), gx, grad_w.to(w.dtype)
    return loss.to(x.dtype), lse.to(x.dtype), empty_grad(x, x.dtype), empty_grad(w, w.dtype)



def cosine_cross_entropy_backward(
    grad_loss, x, w, target, logit_adjustment, lse, scale, eps, label_smoothing
):
    N, d = x.shape
    C = w.shape[0]
    cdt = compute_dtype(x.dtype)
    wh, wd, wm = normalize(w.to(cdt), eps)
    ws = wh * scale
    adj = None if logit_adjustment is None else logit_adjustment.to(cdt)
    ls = float(label_smoothing)
    g = grad_loss.to(cdt)
    lse_c64 = lse.to(cdt)
    grad_x = torch.empty(N, d, dtype=cdt, device=x.device)
    g_ws = torch.zeros(C, d, dtype=cdt, device=x.device)
    for a, b in _chunks("cosine_cross_entropy_backward", N, C):
        xh, xd, xm = normalize(x[a:b].to(cdt), eps)
        P = torch.mm(xh, ws.T)
        if adj is not None:
            P.add_(adj)
        P.sub_(lse_c64[a:b].unsqueeze(1)).exp_()
        if ls:
            P.sub_(ls / C)
        P[torch.arange(b - a, device=x.device), target[a:b]] -= 1.0 - ls
        P.mul_(g[a:b].unsqueeze(1))
        grad_x[a:b] = normalize_backward(torch.mm(P, ws), xh, xd, xm)
        g_ws.addmm_(P.T, xh)
    grad_w = normalize_backward(g_ws * scale, wh, wd, wm)
    return grad_x.to(x.dtype), grad_w.to(w.dtype)



def cosine_topk(x, w, k, scale, eps):
    N = x.shape[0]
    C = w.shape[0]
    cdt = compute_dtype(x.dtype)
    wh, _, _ = normalize(w.to(cdt), eps)
    ws = wh * scale
    scores = torch.empty(N, k, dtype=cdt, device=x.device)
    idx = torch.empty(N, k, dtype=torch.int64, device=x.device)
    for a, b in _chunks("cosine_topk", N, C):
        xh, _, _ = normalize(x[a:b].to(cdt), eps)
        v, i = torch.topk(torch.mm(xh, ws.T), k, dim=1, largest=True, sorted=True)
        scores[a:b] = v
        idx[a:b] = i
    return scores.to(x.dtype), idx



def mse_impl(x, w_student, w_teacher, scale_s, scale_t, eps, compute_grad, row_scale=None):
    """Loss and (optionally) gradients; the (N, C) difference is only ever held one chunk at a time.

    student - teacher = x_hat @ D.T with D = s_s * ws_hat - s_t * wt_hat (C, d), so one GEMM per
    chunk serves both weight sets. `row_scale` (a () tensor) multiplies the gradients.
    """
    N, d = x.shape
    C = w_student.shape[0]
    cdt = compute_dtype(x.dtype)
    wsh, wsd, wsm = normalize(w_student.to(cdt), eps)
    wth, _, _ = normalize(w_teacher.to(cdt), eps)
    Ws = wsh * scale_s
    D = Ws - wth * scale_t
    total = torch.zeros((), dtype=cdt, device=x.device)
    if compute_grad:
        grad_x = torch.empty(N, d, dtype=cdt, device=x.device)
        g_D = torch.zeros(C, d, dtype=cdt, device=x.device)
        coef = 2.0 / (N * C) if N * C else 0.0
    for a, b in _chunks("cosine_logit_mse", N, C):
        xh, xd, xm = normalize(x[a:b].to(cdt), eps)
        E = torch.mm(xh, D.T)
        total = total + (E * E).sum()
        if compute_grad:
            E.mul_(coef if row_scale is None else coef * row_scale)
            # the teacher logits are detached: x's gradient flows through the student only
            grad_x[a:b] = normalize_backward(torch.mm(E, Ws), xh, xd, xm)
            g_D.addmm_(E.T, xh)
    loss = total / (N * C) if N * C else total * float("nan")
    if compute_grad:
        grad_w = normalize_backward(g_D * scale_s, wsh, wsd, wsm)
        return loss.to(x.dtype), grad_x.to(x.dtype), grad_w.to(w_student.dtype)
    return loss.to(x.dtype), empty_grad(x, x.dtype), empty_grad(w_student, w_student.dtype)


def cosine_logit_mse(x, w_student, w_teacher, scale_s, scale_t, eps, compute_grad):
    return mse_impl(x, w_student, w_teacher, scale_s, scale_t, eps, bool(compute_grad))

