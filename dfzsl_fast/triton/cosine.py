"""Triton kernels of the cosine-classifier ops (the GPU path; CPU only under TRITON_INTERPRET=1).

Custom ops, same signatures and outputs as their dispatcher counterparts in ops/cosine.py:

    dfzsl_fast::cosine_logits_triton(x, w, scale, eps) -> logits
    dfzsl_fast::cosine_cross_entropy_triton(x, w, target, logit_adjustment, scale, eps,
        label_smoothing, reduction, compute_grad, compute_grad_x=True, rows=None)
        -> (loss, lse, grad_x, grad_w)
    dfzsl_fast::cosine_topk_triton(x, w, k, scale, eps) -> (scores, indices)   (k <= MAX_TOPK)

Each has a fake kernel and reuses the autograd formula of ops/cosine.py (`_logits_backward`,
`_ce_backward`, `_topk_backward`): the cross-entropy backward scales the gradients computed in
the forward (mean/sum with compute_grad), else calls `dfzsl_fast::cosine_cross_entropy_backward`.

Math. With r_x = 1 / max(|x_i|, eps) and s_c = scale / max(|w_c|, eps) (the
`torch.nn.functional.normalize` policy), the logits are z_ic = r_x,i s_c (x_i . w_c) (+ a_c,
the optional logit adjustment, in the loss only). The GEMM runs on the RAW inputs (fp32, or
bf16/fp16 on tensor cores, always fp32 accumulate) and the two norms are applied in the fp32
epilogue, so no normalised copy of x or w is made for the logits. The row norms are O((N+C) d)
torch reductions before the launch; the normalisation backward (g - x_hat (g . x_hat)) / |x| is
O((N+C) d) torch ops after it.

Cross-entropy forward, `_cosine_ce_fwd_kernel` (grid: row blocks x d tiles): one program owns
BLOCK_M rows and loops over class tiles of BLOCK_N (inner loop over K tiles of BLOCK_K, so d is
not capped), keeping an online log-sum-exp (running max m and sum l), the target logit (taken
from the tile that holds it) and, with label smoothing, the sum of the logits:
    lse = m + log l,   loss_i = lse_i - (1 - ls) z_i,t - (ls / C) sum_c z_ic.
With gradients (compute_grad and a mean/sum reduction) the same pass also accumulates, as flash
attention accumulates its output, A_i = sum_c exp(z_ic - m_i) ws_c with ws = scale * w_hat
(rescaled by exp(m_old - m_new) when the running max moves), one BLOCK_D slice of d per program
along the grid's second axis, and writes
    g_x_hat_i = rw * (A_i / l_i - (1 - ls) ws_t_i - (ls / C) sum_c ws_c),
the gradient in x_hat of the reduced loss (rw = 1/N for "mean", 1 for "sum"). The softmax is
never formed against the final lse: that saves the GEMM that a second pass would spend. When the
target is the row's maximum its weight exp(0) = 1 is exact, so the usual cancellation of
softmax - one_hot keeps its precision (the same as torch's). `_cosine_ce_bwd_w_kernel` (grid:
class blocks x d tiles) then recomputes the logits tile by tile from the saved lse and
accumulates g_w_hat_c = scale * rw * sum_i P_ic x_hat_i, P = softmax - (1-ls) one_hot - ls/C,
without atomics. In all, a forward+backward costs four (N, C, d) GEMMs when d <= BLOCK_D (two
logit GEMMs, one P @ ws, one P^T @ x_hat); a larger d recomputes the logits once per d tile.

Top-k, `_cosine_topk_kernel`: one program per BLOCK_M rows keeps a running sorted top-k
(k <= MAX_TOPK) in registers and merges each class tile into it by k selection rounds (ties go
to the smaller class index); tiles whose maximum cannot enter the top-k are skipped.

Layouts: x (N, d) and w (C, d) in float32/float16/bfloat16 (any strides; passed explicitly),
target (N,) int64, logit_adjustment (C,) (copied to float32). Outputs are contiguous; loss, lse
and scores in x's dtype, grads in x's / w's dtype. Row/column offsets are 64-bit.

Precision: float32 operands use tl.dot with input_precision "ieee" unless torch's
float32 matmul precision allows TF32 (`_utils.dot_precision`). float64 is not served (the
router sends it to the reference kernels).

CPU tensors run only under the Triton interpreter: TRITON_INTERPRET=1 must be set before this
module is imported (Triton reads it when `@triton.jit` decorates).
"""

from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl

from .. import _backend
from ..autograd import cosine as ag
from ..reference import cosine_chunked as _kern
from . import devices as _devices
from ._utils import cosine_blocks, dot_precision

__all__ = [
    "cosine_logits_triton",
    "cosine_cross_entropy_triton",
    "cosine_topk_triton",
    "MAX_TOPK",
    "SUPPORTED_DTYPES",
]

#: Largest k of `cosine_topk_triton` (the running top-k lives in registers, merged by k rounds).
MAX_TOPK = 16
SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_BIG = 2**62  # "no index" sentinel of the top-k kernel


# ============================================================================ kernels
@triton.jit
def _dot(a, b, acc, DOT_PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """acc + a @ b (fp32 accumulate). UPCAST: compute in float32 from the (already rounded)
    operands; set only under the interpreter for bfloat16, whose NumPy emulation keeps bf16 as
    raw uint16 bits in tl.dot (the values are identical: bf16 x bf16 products are exact in fp32)."""
    if UPCAST:
        out = tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    else:
        out = tl.dot(a, b, acc, input_precision=DOT_PRECISION)
    return out


@triton.jit
def _logits_tile(
    x_row_ptrs,
    w_col_ptrs,
    row_mask,
    col_mask,
    D,
    stride_xd,
    stride_wd,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
):
    """(BLOCK_M, BLOCK_N) fp32 raw dot products x_i . w_c, looping over d in BLOCK_K tiles.

    x_row_ptrs: (BLOCK_M, 1) pointers to the rows' first element; w_col_ptrs: (1, BLOCK_N)."""
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, D, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_mask = ks < D
        a = tl.load(
            x_row_ptrs + ks[None, :] * stride_xd,
            mask=row_mask[:, None] & k_mask[None, :],
            other=0.0,
        )
        b = tl.load(
            w_col_ptrs + ks[:, None] * stride_wd,
            mask=k_mask[:, None] & col_mask[None, :],
            other=0.0,
        )
        acc = _dot(a, b, acc, DOT_PRECISION, UPCAST)
    return acc


@triton.jit
def _cosine_logits_fwd_kernel(
    x_ptr,
    w_ptr,
    rx_ptr,
    sw_ptr,
    out_ptr,
    N,
    C,
    D,
    stride_xn,
    stride_xd,
    stride_wc,
    stride_wd,
    stride_on,
    stride_oc,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rows = pid_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M).to(tl.int64)
    cols = pid_n.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N).to(tl.int64)
    row_mask = rows < N
    col_mask = cols < C
    z = _logits_tile(
        x_ptr + rows[:, None] * stride_xn,
        w_ptr + cols[None, :] * stride_wc,
        row_mask,
        col_mask,
        D,
        stride_xd,
        stride_wd,
        BLOCK_M,
        BLOCK_N,
        BLOCK_K,
        DOT_PRECISION,
        UPCAST,
    )
    rx = tl.load(rx_ptr + rows, mask=row_mask, other=0.0)
    sw = tl.load(sw_ptr + cols, mask=col_mask, other=0.0)
    z = z * rx[:, None] * sw[None, :]
    tl.store(
        out_ptr + rows[:, None] * stride_on + cols[None, :] * stride_oc,
        z.to(out_ptr.dtype.element_ty),
        mask=row_mask[:, None] & col_mask[None, :],
    )


@triton.jit
def _cosine_ce_fwd_kernel(
    x_ptr,
    w_ptr,
    ws_ptr,
    rx_ptr,
    sw_ptr,
    t_ptr,
    adj_ptr,
    wsum_ptr,
    loss_ptr,
    lse_ptr,
    gxh_ptr,
    N,
    C,
    D,
    stride_xn,
    stride_xd,
    stride_wc,
    stride_wd,
    stride_wsc,
    stride_wsd,
    stride_t,
    stride_gn,
    stride_gd,
    one_minus_ls,
    ls_over_c,
    row_weight,
    HAS_ADJ: tl.constexpr,
    SMOOTH: tl.constexpr,
    WITH_GRAD: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_D: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_d = tl.program_id(1)
    rows = pid_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M).to(tl.int64)
    row_mask = rows < N
    x_rows = x_ptr + rows[:, None] * stride_xn
    rx = tl.load(rx_ptr + rows, mask=row_mask, other=1.0)
    tgt = tl.load(t_ptr + rows * stride_t, mask=row_mask, other=-1)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    z_t = tl.zeros([BLOCK_M], dtype=tl.float32)
    z_sum = tl.zeros([BLOCK_M], dtype=tl.float32)
    dcols = pid_d.to(tl.int64) * BLOCK_D + tl.arange(0, BLOCK_D).to(tl.int64)
    dmask = dcols < D
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)

    for n0 in range(0, C, BLOCK_N):
        cols = n0 + tl.arange(0, BLOCK_N).to(tl.int64)
        col_mask = cols < C
        z = _logits_tile(
            x_rows,
            w_ptr + cols[None, :] * stride_wc,
            row_mask,
            col_mask,
            D,
            stride_xd,
            stride_wd,
            BLOCK_M,
            BLOCK_N,
            BLOCK_K,
            DOT_PRECISION,
            UPCAST,
        )
        sw = tl.load(sw_ptr + cols, mask=col_mask, other=0.0)
        z = z * rx[:, None] * sw[None, :]
        if HAS_ADJ:
            z = z + tl.load(adj_ptr + cols, mask=col_mask, other=0.0)[None, :]
        z_t += tl.sum(tl.where(cols[None, :] == tgt[:, None], z, 0.0), axis=1)
        if SMOOTH:
            z_sum += tl.sum(tl.where(col_mask[None, :], z, 0.0), axis=1)
        z = tl.where(col_mask[None, :], z, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(z, axis=1))
        # a row whose logits so far are all -inf (an adjustment of -inf): keep exp() finite
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp(m_i - m_safe)
        p = tl.exp(z - m_safe[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        if WITH_GRAD:
            wsb = tl.load(
                ws_ptr + cols[:, None] * stride_wsc + dcols[None, :] * stride_wsd,
                mask=col_mask[:, None] & dmask[None, :],
                other=0.0,
            )
            acc = _dot(p.to(wsb.dtype), wsb, acc * alpha[:, None], DOT_PRECISION, UPCAST)
        m_i = m_new

    lse = m_i + tl.log(l_i)
    loss = lse - one_minus_ls * z_t
    if SMOOTH:
        loss = loss - ls_over_c * z_sum
    first = pid_d == 0
    tl.store(loss_ptr + rows, loss, mask=row_mask & first)
    tl.store(lse_ptr + rows, lse, mask=row_mask & first)
    if WITH_GRAD:
        mask2 = row_mask[:, None] & dmask[None, :]
        w_t = tl.load(
            ws_ptr + tgt[:, None] * stride_wsc + dcols[None, :] * stride_wsd, mask=mask2, other=0.0
        ).to(tl.float32)
        g = acc / l_i[:, None] - one_minus_ls * w_t
        if SMOOTH:
            wsum = tl.load(wsum_ptr + dcols, mask=dmask, other=0.0)
            g = g - ls_over_c * wsum[None, :]
        tl.store(
            gxh_ptr + rows[:, None] * stride_gn + dcols[None, :] * stride_gd,
            g * row_weight,
            mask=mask2,
        )


@triton.jit
def _cosine_ce_bwd_w_kernel(
    x_ptr,
    w_ptr,
    rx_ptr,
    sw_ptr,
    t_ptr,
    adj_ptr,
    lse_ptr,
    gw_ptr,
    N,
    C,
    D,
    stride_xn,
    stride_xd,
    stride_wc,
    stride_wd,
    stride_t,
    stride_gc,
    stride_gd,
    one_minus_ls,
    ls_over_c,
    out_scale,
    HAS_ADJ: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_D: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_d = tl.program_id(1)
    cols = pid_n.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N).to(tl.int64)
    col_mask = cols < C
    w_cols = w_ptr + cols[None, :] * stride_wc
    sw = tl.load(sw_ptr + cols, mask=col_mask, other=0.0)
    if HAS_ADJ:
        adj = tl.load(adj_ptr + cols, mask=col_mask, other=0.0)
    dcols = pid_d.to(tl.int64) * BLOCK_D + tl.arange(0, BLOCK_D).to(tl.int64)
    dmask = dcols < D
    acc = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)

    for m0 in range(0, N, BLOCK_M):
        rows = m0 + tl.arange(0, BLOCK_M).to(tl.int64)
        row_mask = rows < N
        x_rows = x_ptr + rows[:, None] * stride_xn
        rx = tl.load(rx_ptr + rows, mask=row_mask, other=1.0)
        tgt = tl.load(t_ptr + rows * stride_t, mask=row_mask, other=-1)
        lse = tl.load(lse_ptr + rows, mask=row_mask, other=0.0)
        z = _logits_tile(
            x_rows,
            w_cols,
            row_mask,
            col_mask,
            D,
            stride_xd,
            stride_wd,
            BLOCK_M,
            BLOCK_N,
            BLOCK_K,
            DOT_PRECISION,
            UPCAST,
        )
        z = z * rx[:, None] * sw[None, :]
        if HAS_ADJ:
            z = z + adj[None, :]
        # smoothing first, as the reference kernel: for C = 1 the gradient is then exactly 0
        p = tl.exp(z - lse[:, None]) - ls_over_c
        p = tl.where(cols[None, :] == tgt[:, None], p - one_minus_ls, p)
        p = tl.where(row_mask[:, None] & col_mask[None, :], p, 0.0)
        xt = tl.load(
            x_rows + dcols[None, :] * stride_xd,
            mask=row_mask[:, None] & dmask[None, :],
            other=0.0,
        )
        xh = (xt.to(tl.float32) * rx[:, None]).to(xt.dtype)  # |x_hat| <= 1: no half overflow
        acc = _dot(tl.trans(p.to(xt.dtype)), xh, acc, DOT_PRECISION, UPCAST)

    tl.store(
        gw_ptr + cols[:, None] * stride_gc + dcols[None, :] * stride_gd,
        acc * out_scale,
        mask=col_mask[:, None] & dmask[None, :],
    )


@triton.jit
def _cosine_topk_fwd_kernel(
    x_ptr,
    w_ptr,
    rx_ptr,
    sw_ptr,
    val_ptr,
    idx_ptr,
    N,
    C,
    D,
    stride_xn,
    stride_xd,
    stride_wc,
    stride_wd,
    stride_vn,
    stride_vk,
    stride_in,
    stride_ik,
    K: tl.constexpr,
    KP: tl.constexpr,
    BIG: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
):
    pid_m = tl.program_id(0)
    rows = pid_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M).to(tl.int64)
    row_mask = rows < N
    x_rows = x_ptr + rows[:, None] * stride_xn
    rx = tl.load(rx_ptr + rows, mask=row_mask, other=1.0)
    slots = tl.arange(0, KP)
    # running top-k, sorted descending in slots [0, K); slots >= K stay -inf / BIG
    run_v = tl.full([BLOCK_M, KP], float("-inf"), dtype=tl.float32)
    run_i = tl.full([BLOCK_M, KP], BIG, dtype=tl.int64)

    for n0 in range(0, C, BLOCK_N):
        cols = n0 + tl.arange(0, BLOCK_N).to(tl.int64)
        col_mask = cols < C
        z = _logits_tile(
            x_rows,
            w_ptr + cols[None, :] * stride_wc,
            row_mask,
            col_mask,
            D,
            stride_xd,
            stride_wd,
            BLOCK_M,
            BLOCK_N,
            BLOCK_K,
            DOT_PRECISION,
            UPCAST,
        )
        sw = tl.load(sw_ptr + cols, mask=col_mask, other=0.0)
        z = z * rx[:, None] * sw[None, :]
        z = tl.where(row_mask[:, None] & col_mask[None, :], z, float("-inf"))
        kth = tl.max(tl.where(slots[None, :] == K - 1, run_v, float("-inf")), axis=1)
        gain = tl.where(row_mask, tl.max(z, axis=1) > kth, False)
        # the tile can only enter the top-k of some row if its maximum beats that row's k-th value
        # (equal values go to the earlier, smaller class index already held)
        if tl.max(gain.to(tl.int32), axis=0) > 0:
            new_v = tl.full([BLOCK_M, KP], float("-inf"), dtype=tl.float32)
            new_i = tl.full([BLOCK_M, KP], BIG, dtype=tl.int64)
            for j in tl.static_range(K):
                best = tl.maximum(tl.max(run_v, axis=1), tl.max(z, axis=1))
                i_run = tl.min(tl.where(run_v == best[:, None], run_i, BIG), axis=1)
                i_til = tl.min(tl.where(z == best[:, None], cols[None, :], BIG), axis=1)
                sel = tl.minimum(i_run, i_til)
                new_v = tl.where(slots[None, :] == j, best[:, None], new_v)
                new_i = tl.where(slots[None, :] == j, sel[:, None], new_i)
                run_v = tl.where(run_i == sel[:, None], float("-inf"), run_v)
                z = tl.where(cols[None, :] == sel[:, None], float("-inf"), z)
            run_v = new_v
            run_i = new_i

    keep = row_mask[:, None] & (slots[None, :] < K)
    # NaN logits give unspecified picks; clamp so that the indices are always valid classes
    out_i = tl.minimum(tl.maximum(run_i, 0), C - 1)
    tl.store(
        val_ptr + rows[:, None] * stride_vn + slots[None, :] * stride_vk,
        run_v.to(val_ptr.dtype.element_ty),
        mask=keep,
    )
    tl.store(idx_ptr + rows[:, None] * stride_in + slots[None, :] * stride_ik, out_i, mask=keep)


_INTERPRETED = type(_cosine_ce_fwd_kernel).__name__ == "InterpretedFunction"


# ============================================================================ host side
def _check(x, w, op: str) -> None:
    torch._check(
        x.dim() == 2 and w.dim() == 2,
        lambda: f"{op}: expected x (N, d) and w (C, d), got {tuple(x.shape)} and {tuple(w.shape)}",
    )
    torch._check(
        x.shape[1] == w.shape[1],
        lambda: f"{op}: x and w differ in d ({x.shape[1]} and {w.shape[1]})",
    )
    torch._check(
        x.dtype == w.dtype and x.dtype in SUPPORTED_DTYPES,
        lambda: (
            f"{op}: x and w must share one dtype among float32, float16 and bfloat16, "
            f"got {x.dtype} and {w.dtype}"
        ),
    )
    torch._check(x.device == w.device, lambda: f"{op}: x and w on different devices")


def _check_k(k: int, op: str) -> None:
    if not 1 <= k <= MAX_TOPK:
        raise ValueError(
            f"{op}: k = {k} is outside the Triton kernel's range 1 <= k <= {MAX_TOPK}; "
            "use backend='native' or 'torch' for a larger k"
        )


def _device_ctx(t: torch.Tensor):
    if t.device.type == "cuda":
        return torch.cuda.device(t.device)
    if not _INTERPRETED:
        raise RuntimeError(
            "cosine Triton ops: CPU tensors need the Triton interpreter; set TRITON_INTERPRET=1 "
            "before importing dfzsl_fast"
        )
    return contextlib.nullcontext()


def _upcast(dtype: torch.dtype) -> bool:
    return _INTERPRETED and dtype == torch.bfloat16


def _norms(t: torch.Tensor, eps: float):
    """(n, denom, mask): fp32 row norms, max(n, eps), n >= eps (the F.normalize policy)."""
    n = torch.linalg.vector_norm(t, dim=1, dtype=torch.float32)
    denom = n.clamp_min(eps)
    return n, denom, n >= eps


def _common(x, w, scale: float, eps: float):
    _, xd, xm = _norms(x, eps)
    _, wd, wm = _norms(w, eps)
    rx = xd.reciprocal()
    sw = scale / wd
    return rx, sw, xd, xm, wd, wm


# ---------------------------------------------------------------------------- cosine_logits
@torch.library.custom_op("dfzsl_fast::cosine_logits_triton", mutates_args=())
def cosine_logits_triton(
    x: torch.Tensor, w: torch.Tensor, scale: float, eps: float
) -> torch.Tensor:
    """Triton kernel of `dfzsl_fast::cosine_logits`: (N, C) logits in x's dtype."""
    _check(x, w, "cosine_logits_triton")
    N, d = x.shape
    C = w.shape[0]
    out = torch.empty(N, C, dtype=x.dtype, device=x.device)
    if N == 0 or C == 0:
        return out
    ctx = _device_ctx(x)
    rx, sw, *_ = _common(x, w, scale, eps)
    cfg = cosine_blocks("logits", N, C, d, x.dtype, _INTERPRETED)
    grid = (triton.cdiv(N, cfg.block_m), triton.cdiv(C, cfg.block_n))
    with ctx:
        _cosine_logits_fwd_kernel[grid](
            x, w, rx, sw, out,
            N, C, d,
            x.stride(0), x.stride(1), w.stride(0), w.stride(1), out.stride(0), out.stride(1),
            BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k,
            DOT_PRECISION=dot_precision(x.dtype, _INTERPRETED), UPCAST=_upcast(x.dtype),
            num_warps=cfg.num_warps, num_stages=cfg.num_stages,
        )  # fmt: skip
    return out


@cosine_logits_triton.register_fake
def _cosine_logits_triton_fake(x, w, scale, eps):
    _check(x, w, "cosine_logits_triton")
    return x.new_empty(x.shape[0], w.shape[0])


cosine_logits_triton.register_autograd(ag.logits_backward, setup_context=ag.logits_setup)


# --------------------------------------------------------------------- cosine_cross_entropy
@torch.library.custom_op("dfzsl_fast::cosine_cross_entropy_triton", mutates_args=())
def cosine_cross_entropy_triton(
    x: torch.Tensor,
    w: torch.Tensor,
    target: torch.Tensor,
    logit_adjustment: torch.Tensor | None,
    scale: float,
    eps: float,
    label_smoothing: float,
    reduction: int,
    compute_grad: bool,
    compute_grad_x: bool = True,
    rows: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Triton kernel of `dfzsl_fast::cosine_cross_entropy` (see the module docstring).

    Returns (loss () or (N,), lse (N,), grad_x, grad_w): the gradients of the mean/sum loss when
    compute_grad and reduction != 0, else empty (0, d) tensors; grad_x is empty also when not
    compute_grad_x (then the forward kernel runs without its gradient epilogue). rows: the
    batch is x[rows], gathered before the kernels run.
    """
    if rows is not None:
        x = x.index_select(0, rows)
    _check(x, w, "cosine_cross_entropy_triton")
    torch._check(
        target.dim() == 1 and target.shape[0] == x.shape[0] and target.dtype == torch.int64,
        lambda: "cosine_cross_entropy_triton: target must be (N,) int64",
    )
    torch._check(reduction in (0, 1, 2), lambda: f"reduction: expected 0, 1 or 2, got {reduction}")
    N, d = x.shape
    C = w.shape[0]
    device = x.device
    with_grad = bool(compute_grad) and reduction != 0
    with_gx = with_grad and bool(compute_grad_x)
    ls = float(label_smoothing)
    row_weight = 1.0 / N if (reduction == 1 and N) else 1.0

    loss_rows = torch.empty(N, dtype=torch.float32, device=device)
    lse = torch.empty(N, dtype=torch.float32, device=device)
    if with_grad:
        gxh = torch.empty(N if with_gx else 0, d, dtype=torch.float32, device=device)
        g_wh = torch.zeros(C, d, dtype=torch.float32, device=device)
    if N and C:
        ctx = _device_ctx(x)
        rx, sw, xd, xm, wd, wm = _common(x, w, scale, eps)
        adj = None
        if logit_adjustment is not None:
            adj = logit_adjustment.to(device=device, dtype=torch.float32).contiguous()
        prec = dot_precision(x.dtype, _INTERPRETED)
        if with_grad:
            wh = w.to(torch.float32) * wd.reciprocal().unsqueeze(1)
        if with_gx:
            ws = (wh * scale).to(x.dtype).contiguous()  # the P @ ws operand, in the input dtype
            wsum = ws.to(torch.float32).sum(0) if ls else sw  # (sw: an unused placeholder)
            cfg = cosine_blocks("ce_fwd_grad", N, C, d, x.dtype, _INTERPRETED)
            grid = (triton.cdiv(N, cfg.block_m), max(1, triton.cdiv(d, cfg.block_d)))
        else:
            ws, wsum = w, sw  # unused placeholders (WITH_GRAD=False: loss and lse only)
            cfg = cosine_blocks("ce_fwd", N, C, d, x.dtype, _INTERPRETED)
            grid = (triton.cdiv(N, cfg.block_m), 1)
        gxh_arg = gxh if with_gx else loss_rows
        with ctx:
            _cosine_ce_fwd_kernel[grid](
                x, w, ws, rx, sw, target, adj if adj is not None else sw, wsum,
                loss_rows, lse, gxh_arg,
                N, C, d,
                x.stride(0), x.stride(1), w.stride(0), w.stride(1), ws.stride(0), ws.stride(1),
                target.stride(0),
                gxh.stride(0) if with_gx else 0, gxh.stride(1) if with_gx else 0,
                1.0 - ls, ls / C, row_weight,
                HAS_ADJ=adj is not None, SMOOTH=ls != 0.0, WITH_GRAD=with_gx,
                BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k,
                BLOCK_D=cfg.block_d if with_gx else 16,
                DOT_PRECISION=prec, UPCAST=_upcast(x.dtype),
                num_warps=cfg.num_warps, num_stages=cfg.num_stages,
            )  # fmt: skip
            if with_grad:
                cfg = cosine_blocks("ce_bwd_w", N, C, d, x.dtype, _INTERPRETED)
                grid = (triton.cdiv(C, cfg.block_n), max(1, triton.cdiv(d, cfg.block_d)))
                _cosine_ce_bwd_w_kernel[grid](
                    x, w, rx, sw, target, adj if adj is not None else sw, lse, g_wh,
                    N, C, d,
                    x.stride(0), x.stride(1), w.stride(0), w.stride(1), target.stride(0),
                    g_wh.stride(0), g_wh.stride(1),
                    1.0 - ls, ls / C, scale * row_weight,
                    HAS_ADJ=adj is not None,
                    BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k,
                    BLOCK_D=cfg.block_d, DOT_PRECISION=prec, UPCAST=_upcast(x.dtype),
                    num_warps=cfg.num_warps, num_stages=cfg.num_stages,
                )  # fmt: skip
        if with_gx:
            xh = x.to(torch.float32) * rx.unsqueeze(1)
            grad_x = _kern.normalize_backward(gxh, xh, xd, xm)
        if with_grad:
            grad_w = _kern.normalize_backward(g_wh, wh, wd, wm)
    elif with_grad:  # N == 0: no rows, zero gradients (as the reference kernel)
        grad_x, grad_w = gxh, g_wh

    if reduction == 0:
        loss = loss_rows
    elif reduction == 1:
        loss = loss_rows.sum() / N if N else loss_rows.sum() * float("nan")
    else:
        loss = loss_rows.sum()
    if with_grad:
        gx = grad_x.to(x.dtype) if with_gx else x.new_empty(0, d)
        return loss.to(x.dtype), lse.to(x.dtype), gx, grad_w.to(w.dtype)
    return (
        loss.to(x.dtype),
        lse.to(x.dtype),
        x.new_empty(0, d),
        w.new_empty(0, d),
    )


@cosine_cross_entropy_triton.register_fake
def _cosine_cross_entropy_triton_fake(
    x, w, target, logit_adjustment, scale, eps, label_smoothing, reduction, compute_grad,
    compute_grad_x=True, rows=None,
):
    _check(x, w, "cosine_cross_entropy_triton")
    ag.check_rows_meta(rows, x, "cosine_cross_entropy_triton")
    N = x.shape[0] if rows is None else rows.shape[0]
    loss = x.new_empty(N) if reduction == 0 else x.new_empty(())
    if compute_grad and reduction != 0:
        gx = x.new_empty(N, x.shape[1]) if compute_grad_x else _kern.empty_grad(x, x.dtype)
        return loss, x.new_empty(N), gx, torch.empty_like(w)
    return loss, x.new_empty(N), _kern.empty_grad(x, x.dtype), _kern.empty_grad(w, w.dtype)


cosine_cross_entropy_triton.register_autograd(ag.ce_backward, setup_context=ag.ce_setup)


# ----------------------------------------------------------------------------- cosine_topk
@torch.library.custom_op("dfzsl_fast::cosine_topk_triton", mutates_args=())
def cosine_topk_triton(
    x: torch.Tensor, w: torch.Tensor, k: int, scale: float, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton kernel of `dfzsl_fast::cosine_topk` for 1 <= k <= min(C, MAX_TOPK).

    Returns (scores (N, k) in x's dtype, descending; indices (N, k) int64). Equal scores are
    ordered by class index."""
    _check(x, w, "cosine_topk_triton")
    _check_k(k, "cosine_topk_triton")
    N, d = x.shape
    C = w.shape[0]
    torch._check(k <= C, lambda: f"cosine_topk_triton: k = {k} exceeds C = {C}")
    scores = torch.empty(N, k, dtype=x.dtype, device=x.device)
    idx = torch.empty(N, k, dtype=torch.int64, device=x.device)
    if N == 0:
        return scores, idx
    ctx = _device_ctx(x)
    rx, sw, *_ = _common(x, w, scale, eps)
    cfg = cosine_blocks("topk", N, C, d, x.dtype, _INTERPRETED, k=k)
    grid = (triton.cdiv(N, cfg.block_m),)
    with ctx:
        _cosine_topk_fwd_kernel[grid](
            x, w, rx, sw, scores, idx,
            N, C, d,
            x.stride(0), x.stride(1), w.stride(0), w.stride(1),
            scores.stride(0), scores.stride(1), idx.stride(0), idx.stride(1),
            K=k, KP=max(2, triton.next_power_of_2(k)), BIG=_BIG,
            BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k,
            DOT_PRECISION=dot_precision(x.dtype, _INTERPRETED), UPCAST=_upcast(x.dtype),
            num_warps=cfg.num_warps, num_stages=cfg.num_stages,
        )  # fmt: skip
    return scores, idx


@cosine_topk_triton.register_fake
def _cosine_topk_triton_fake(x, w, k, scale, eps):
    _check(x, w, "cosine_topk_triton")
    _check_k(k, "cosine_topk_triton")
    N = x.shape[0]
    return x.new_empty(N, k), x.new_empty(N, k, dtype=torch.int64)


cosine_topk_triton.register_autograd(ag.topk_backward, setup_context=ag.topk_setup)


# ------------------------------------------------------------------------- backend registration
def _topk_reasons(k: int | None = None, **_) -> list[str]:
    if k is not None and k > MAX_TOPK:
        return [f"k = {k} exceeds the Triton top-k limit of {MAX_TOPK}"]
    return []


_DEVS, _NOTES = _devices(SUPPORTED_DTYPES)
_backend.register(
    "cosine_logits", "triton", torch.ops.dfzsl_fast.cosine_logits_triton, devices=_DEVS,
    notes=_NOTES,
)
_backend.register(
    "cosine_cross_entropy", "triton", torch.ops.dfzsl_fast.cosine_cross_entropy_triton,
    devices=_DEVS, notes=_NOTES,
)
_backend.register(
    "cosine_topk", "triton", torch.ops.dfzsl_fast.cosine_topk_triton, devices=_DEVS,
    notes=_NOTES, reason_fn=_topk_reasons,
)
