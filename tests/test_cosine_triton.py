"""Tests of the Triton cosine ops (`dfzsl_fast::cosine_*_triton`; the interpreter on CPU).

Against the float64 reference (dfzsl_fast/reference/cosine.py) at small odd sizes. Under the
interpreter the tiles are capped at 32 (triton/_utils.py), so N = 33, C = 37 and d = 40 cross a
tile boundary in rows, classes, K and the gradient's d tiles. The interpreter is slow: sizes stay
tiny and the parameter grid is chosen, not a full product.
"""

from __future__ import annotations

import os

import torch

# Must happen before dfzsl_fast (hence dfzsl_fast.triton) is imported: Triton reads it when
# kernels are decorated. tests/conftest.py may already have done it.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

pytest.importorskip("triton", reason="triton is not installed")

import torch.nn.functional as F  # noqa: E402

import dfzsl_fast  # noqa: E402
from dfzsl_fast import (
    _backend,  # noqa: E402
    testing,  # noqa: E402
)
from dfzsl_fast.ops import cosine as ops  # noqa: E402
from dfzsl_fast.reference import cosine as ref  # noqa: E402

DEVICE, tcos, pytestmark = testing.triton_test_setup("cosine")

TOL = dict(rtol=1e-4, atol=1e-4)
SCALE = 5.0
# (N, C, d): every N in {0, 1, 7, 33}, C in {1, 5, 37} and d in {3, 16, 40} appears
SHAPES = [
    (0, 5, 16),
    (1, 1, 3),
    (1, 37, 40),
    (7, 5, 3),
    (7, 37, 16),
    (33, 1, 40),
    (33, 5, 16),
    (33, 37, 40),
]
REDUCTIONS = ["mean", "sum", "none"]


def make(N, C, d, dtype=torch.float32, grad=True, seed=0):
    g = torch.Generator().manual_seed(seed + 1000 * N + 100 * C + d)
    x = torch.randn(N, d, generator=g, dtype=torch.float64)
    w = torch.randn(C, d, generator=g, dtype=torch.float64)
    t = torch.randint(0, C, (N,), generator=g)
    adj = torch.randn(C, generator=g, dtype=torch.float64)
    x, w = x.to(DEVICE, dtype), w.to(DEVICE, dtype)
    return x.requires_grad_(grad), w.requires_grad_(grad), t.to(DEVICE), adj.to(DEVICE, dtype)


def as64(*ts):
    return [t.detach().double().requires_grad_(t.requires_grad) for t in ts]


def close(a, b, **tol):
    torch.testing.assert_close(a.double(), b.double(), equal_nan=True, **(tol or TOL))


def ce(x, w, t, adj, reduction, ls, **kw):
    return dfzsl_fast.cosine_cross_entropy(
        x, w, t, SCALE, logit_adjustment=adj, reduction=reduction, label_smoothing=ls, **kw
    )


# ------------------------------------------------------------------------------ cross-entropy
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_ce_matches_reference(shape, reduction):
    """Loss and gradients (backward through the public op) vs the reference's autograd; two
    option sets per case: plain, and label smoothing with a logit adjustment."""
    for ls, use_adj in ((0.0, False), (0.2, True)):
        x, w, t, adj = make(*shape)
        adj = adj if use_adj else None
        out = ce(x, w, t, adj, reduction, ls, backend="triton")
        x64, w64 = as64(x, w)
        r = ref.cosine_cross_entropy(
            x64, w64, t, SCALE, None if adj is None else adj.double(), reduction, ls
        )
        assert out.dtype == x.dtype and out.shape == r.shape
        close(out, r)
        g = torch.randn(r.shape, dtype=torch.float64, device=DEVICE)
        gx, gw = torch.autograd.grad(out, (x, w), g.to(out.dtype))
        if shape[0] == 0:  # no rows: zero gradients (the reference's mean is NaN)
            assert gx.shape == x.shape and torch.all(gw == 0)
            continue
        rx, rw = torch.autograd.grad(r, (x64, w64), g)
        close(gx, rx)
        close(gw, rw)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape", [(1, 5, 3), (33, 37, 40)], ids=str)
def test_ce_without_grad(shape, reduction):
    """compute_grad=False (no input needs grad): loss only, empty gradient outputs."""
    x, w, t, adj = make(*shape, grad=False)
    out = ce(x, w, t, adj, reduction, 0.1, backend="triton")
    r = ref.cosine_cross_entropy(x.double(), w.double(), t, SCALE, adj.double(), reduction, 0.1)
    close(out, r)
    loss, lse, gx, gw = torch.ops.dfzsl_fast.cosine_cross_entropy_triton(
        x, w, t, adj, SCALE, 1e-12, 0.1, ops._REDUCTIONS[reduction], False
    )
    z = ref.cosine_logits(x.double(), w.double(), SCALE) + adj.double()
    close(lse, torch.logsumexp(z, dim=1))
    assert gx.shape == (0, shape[2]) and gw.shape == (0, shape[2])


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape", [(0, 4, 6), (33, 37, 40)], ids=str)
def test_ce_fixed_features_weight_gradient_only(shape, reduction):
    """x without grad: the forward kernel runs without its grad_x epilogue (compute_grad_x
    False), the weight's gradient comes from the weight-gradient kernel alone."""
    x, w, t, adj = make(*shape)
    x = x.detach()
    out = ce(x, w, t, adj, reduction, 0.2, backend="triton")
    x64, w64 = as64(x, w)
    r = ref.cosine_cross_entropy(x64, w64, t, SCALE, adj.double(), reduction, 0.2)
    close(out, r)
    g = torch.randn(r.shape, dtype=torch.float64, device=DEVICE)
    (gw,) = torch.autograd.grad(out, (w,), g.to(out.dtype))
    if shape[0] == 0:
        assert torch.all(gw == 0)
        return
    (rw,) = torch.autograd.grad(r, (w64,), g)
    close(gw, rw)
    if reduction != "none":
        red = ops._REDUCTIONS[reduction]
        _, _, gx, _ = torch.ops.dfzsl_fast.cosine_cross_entropy_triton(
            x, w.detach(), t, adj, SCALE, 1e-12, 0.2, red, True, False
        )
        assert gx.shape == (0, shape[2])


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("m", [0, 21])
def test_ce_rows_is_the_gathered_batch(m, reduction):
    """rows=: the loss of x[rows] (gathered before the kernels), x's gradient scattered back."""
    x, w, _, adj = make(40, 37, 40)
    rows = torch.randint(0, 40, (m,), device=DEVICE)
    if m:
        rows[1] = rows[0]
    t = torch.randint(0, 37, (m,), device=DEVICE)
    # check_inputs=False: rows reach the Triton op and its autograd (True gathers in Python)
    out = ce(x, w, t, adj, reduction, 0.2, backend="triton", rows=rows, check_inputs=False)
    x64, w64 = as64(x, w)
    r = ref.cosine_cross_entropy(x64[rows], w64, t, SCALE, adj.double(), reduction, 0.2)
    close(out, r)
    if not m:
        return
    g = torch.randn(r.shape, dtype=torch.float64, device=DEVICE)
    gx, gw = torch.autograd.grad(out, (x, w), g.to(out.dtype))
    rx, rw = torch.autograd.grad(r, (x64, w64), g)
    close(gx, rx)
    close(gw, rw)
    if reduction != "none":
        loss, gw2 = ops.cosine_cross_entropy_and_grad_w(
            x.detach(), w.detach(), t, SCALE, adj, reduction, 0.2, backend="triton",
            check_inputs=False, rows=rows)
        loss_g, gw_g = ops.cosine_cross_entropy_and_grad_w(
            x.detach()[rows], w.detach(), t, SCALE, adj, reduction, 0.2, backend="triton")
        assert torch.equal(loss, loss_g) and torch.equal(gw2, gw_g)


@pytest.mark.parametrize("reduction", [1, 2])
def test_ce_op_compute_grad_both_ways(reduction):
    """The op's precomputed gradients (compute_grad=True) equal the reference's, and a forward
    with compute_grad=False still back-propagates (through cosine_cross_entropy_backward)."""
    N, C, d = 33, 37, 40
    x, w, t, adj = make(N, C, d)
    x64, w64 = as64(x, w)
    red = {1: "mean", 2: "sum"}[reduction]
    r = ref.cosine_cross_entropy(x64, w64, t, SCALE, adj.double(), red, 0.3)
    rx, rw = torch.autograd.grad(r, (x64, w64))
    op = torch.ops.dfzsl_fast.cosine_cross_entropy_triton
    with torch.no_grad():
        loss, lse, gx, gw = op(x, w, t, adj, SCALE, 1e-12, 0.3, reduction, True)
    close(loss, r)
    close(gx, rx)
    close(gw, rw)
    loss, *_ = op(x, w, t, adj, SCALE, 1e-12, 0.3, reduction, False)
    gx, gw = torch.autograd.grad(loss * 2.5, (x, w))
    close(gx, 2.5 * rx)
    close(gw, 2.5 * rw)


def test_ce_zero_rows_and_noncontiguous():
    """eps policy of F.normalize (zero row, a row below eps, a zero class) and strided inputs."""
    N, C, d = 9, 37, 40
    x, w, t, adj = make(N, C, d, grad=False)
    x[0] = 0.0
    x[1] = 1e-14
    w[0] = 0.0
    # strided: x is a column slice of a wider tensor, w is transposed storage
    xs = torch.zeros(N, 2 * d + 1, device=DEVICE)
    xs[:, 1 : 2 * d + 1 : 2] = x
    x_nc = xs[:, 1 : 2 * d + 1 : 2].requires_grad_(True)
    w_nc = w.t().contiguous().t().requires_grad_(True)
    assert not x_nc.is_contiguous() and not w_nc.is_contiguous()
    out = ce(x_nc, w_nc, t, adj, "mean", 0.1, backend="triton")
    x64, w64 = as64(x_nc, w_nc)
    r = ref.cosine_cross_entropy(x64, w64, t, SCALE, adj.double(), "mean", 0.1)
    close(out, r)
    gx, gw = torch.autograd.grad(out, (x_nc, w_nc))
    rx, rw = torch.autograd.grad(r, (x64, w64))
    # the clamped branch's gradient is 1/eps = 1e12 times the x_hat gradient: relative check
    close(gx[2:], rx[2:])
    close(gx[:2] / 1e12, rx[:2] / 1e12)
    # so is the zero class row's (w[0] = 0): same relative check (float32 rounding of a 1e7
    # gradient is about 1e-3 in absolute terms, far above the absolute tolerance)
    close(gw[1:], rw[1:])
    close(gw[:1] / 1e12, rw[:1] / 1e12)


def test_ce_minus_inf_adjustment():
    """An adjustment of -inf masks classes (the whole first class tile here); loss and gradients
    stay finite and match the reference."""
    N, C, d = 7, 37, 16
    x, w, t, adj = make(N, C, d)
    adj[:32] = float("-inf")
    t = torch.randint(32, C, (N,), device=DEVICE)
    out = ce(x, w, t, adj, "sum", 0.0, backend="triton")
    x64, w64 = as64(x, w)
    r = ref.cosine_cross_entropy(x64, w64, t, SCALE, adj.double(), "sum")
    close(out, r)
    gx, gw = torch.autograd.grad(out, (x, w))
    rx, rw = torch.autograd.grad(r, (x64, w64))
    assert torch.isfinite(gx).all() and torch.isfinite(gw).all()
    close(gx, rx)
    close(gw, rw)


# ------------------------------------------------------------------------------------ logits
@pytest.mark.parametrize("shape", [(0, 5, 16), (1, 1, 3), (7, 5, 3), (33, 37, 40)], ids=str)
def test_logits_matches_reference(shape):
    x, w, _, _ = make(*shape)
    out = dfzsl_fast.cosine_logits(x, w, SCALE, backend="triton")
    x64, w64 = as64(x, w)
    r = ref.cosine_logits(x64, w64, SCALE)
    assert out.dtype == x.dtype and out.shape == r.shape
    close(out, r)
    g = torch.randn(r.shape, dtype=torch.float64, device=DEVICE)
    gx, gw = torch.autograd.grad(out, (x, w), g.float())
    if shape[0]:
        rx, rw = torch.autograd.grad(r, (x64, w64), g)
        close(gx, rx)
        close(gw, rw)


# -------------------------------------------------------------------------------------- top-k
@pytest.mark.parametrize(
    "shape,k",
    [((0, 5, 16), 2), ((1, 1, 3), 1), ((7, 5, 3), 5), ((33, 37, 40), 1), ((33, 37, 40), 16),
     ((7, 37, 16), 7)],
    ids=str,
)  # fmt: skip
def test_topk_matches_reference(shape, k):
    x, w, _, _ = make(*shape)
    v, i = dfzsl_fast.cosine_topk(x, w, k, SCALE, backend="triton")
    x64, w64 = as64(x, w)
    z = ref.cosine_logits(x64, w64, SCALE)
    rv, ri = torch.topk(z, k, dim=1)
    assert v.shape == (shape[0], k) and i.dtype == torch.int64
    close(v, rv)
    # indices wherever the reference has no near-tie around the pick
    zs = torch.sort(z, dim=1, descending=True).values
    gaps = torch.cat([zs[:, :-1] - zs[:, 1:], torch.full_like(zs[:, :1], 1.0)], dim=1)[:, :k]
    prev = torch.cat([torch.full_like(gaps[:, :1], 1.0), gaps[:, :-1]], dim=1)
    clear = (gaps > 1e-4) & (prev > 1e-4)
    assert torch.equal(i[clear], ri[clear])
    # gradient of the scores vs the reference gathered at the same indices
    if shape[0]:
        g = torch.randn(rv.shape, dtype=torch.float64, device=DEVICE)
        gx, gw = torch.autograd.grad(v, (x, w), g.float())
        rx, rw = torch.autograd.grad(z.gather(1, i), (x64, w64), g)
        close(gx, rx)
        close(gw, rw)


def test_topk_skips_tiles_and_orders_ties():
    """Rows equal to class rows of the first tile: later tiles cannot beat scale (skipped), and
    duplicated classes (exact ties) come out in class order."""
    C, d = 37, 16
    _, w, _, _ = make(1, C, d, grad=False)
    w[33] = w[3]  # a tie across tiles: class 3 must come first
    t = torch.tensor([3, 0, 31, 7, 3], device=DEVICE)
    x = w[t].clone()
    v, i = dfzsl_fast.cosine_topk(x, w, 2, SCALE, backend="triton")
    close(v[:, 0], torch.full((5,), SCALE, dtype=torch.float64))
    assert torch.equal(i[:, 0], t)
    assert i[0, 1].item() == 33 and i[4, 1].item() == 33


def test_topk_k_beyond_cap():
    x, w, _, _ = make(3, 37, 16, grad=False)
    k = tcos.MAX_TOPK + 1
    with pytest.raises(ValueError, match=f"k = {k}"):
        dfzsl_fast.cosine_topk(x, w, k, backend="triton")
    with pytest.raises(ValueError, match=f"k = {k}"):
        torch.ops.dfzsl_fast.cosine_topk_triton(x, w, k, 1.0, 1e-12)
    # the default backend still serves it
    v, _ = dfzsl_fast.cosine_topk(x, w, k)
    assert v.shape == (3, k)


# ---------------------------------------------------------------------------- half precision
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_half_inputs(dtype):
    """fp16/bf16 inputs (tensor cores on a GPU; fp32 accumulate): loss and gradients within twice
    eager PyTorch's own error in that dtype (plus a small floor), output in the input dtype."""
    N, C, d = 33, 37, 40
    x, w, t, adj = make(N, C, d, dtype=dtype)
    out = ce(x, w, t, adj, "mean", 0.1, backend="triton")
    gx, gw = torch.autograd.grad(out, (x, w))
    xe, we = x.detach().requires_grad_(), w.detach().requires_grad_()
    z = SCALE * F.normalize(xe, dim=1) @ F.normalize(we, dim=1).T + adj
    eager = F.cross_entropy(z, t, label_smoothing=0.1)
    ex, ew = torch.autograd.grad(eager, (xe, we))
    x64, w64 = as64(x, w)
    r = ref.cosine_cross_entropy(x64, w64, t, SCALE, adj.double(), "mean", 0.1)
    rx, rw = torch.autograd.grad(r, (x64, w64))
    assert out.dtype == dtype and gx.dtype == dtype and gw.dtype == dtype
    for mine, theirs, exact in ((out, eager, r), (gx, ex, rx), (gw, ew, rw)):
        err = (mine.double() - exact).abs().max().item()
        err_eager = (theirs.double() - exact).abs().max().item()
        assert err <= 2 * err_eager + 1e-3 * exact.abs().max().item(), (err, err_eager)
    v, i = dfzsl_fast.cosine_topk(x.detach(), w.detach(), 3, SCALE, backend="triton")
    close(v, torch.topk(ref.cosine_logits(x64, w64, SCALE), 3).values, rtol=2e-2, atol=5e-2)
    lg = dfzsl_fast.cosine_logits(x.detach(), w.detach(), SCALE, backend="triton")
    assert lg.dtype == dtype
    close(lg, ref.cosine_logits(x64, w64, SCALE), rtol=2e-2, atol=5e-2)


# ------------------------------------------------------------------------------------ opcheck
@pytest.mark.parametrize("requires_grad", [False, True], ids=["nograd", "grad"])
def test_opcheck(requires_grad):
    x, w, t, adj = make(7, 5, 16, grad=requires_grad)
    adj = adj.detach()
    ce_op = torch.ops.dfzsl_fast.cosine_cross_entropy_triton.default
    torch.library.opcheck(ce_op, (x, w, t, adj, SCALE, 1e-12, 0.1, 1, requires_grad))
    torch.library.opcheck(ce_op, (x, w, t, None, SCALE, 1e-12, 0.0, 0, False))
    torch.library.opcheck(torch.ops.dfzsl_fast.cosine_logits_triton.default, (x, w, SCALE, 1e-12))
    torch.library.opcheck(torch.ops.dfzsl_fast.cosine_topk_triton.default, (x, w, 3, SCALE, 1e-12))


# ------------------------------------------------------------------------------------ routing
def test_routing():
    x, w, t, _ = make(5, 4, 6, grad=False)
    # explicit triton: served for float32, a clear error for float64 and for cosine_logit_mse
    out = dfzsl_fast.cosine_cross_entropy(x, w, t, 2.0, backend="triton")
    close(out, ref.cosine_cross_entropy(x.double(), w.double(), t, 2.0))
    with pytest.raises(ValueError, match="float32, float16 or bfloat16"):
        dfzsl_fast.cosine_logits(x.double(), w.double(), backend="triton")
    with pytest.raises(ValueError, match="no Triton kernel for cosine_logit_mse"):
        dfzsl_fast.cosine_logit_mse(x, w, w, 1.0, 2.0, backend="triton")
    with _backend.use_backend("triton"):
        v, _ = dfzsl_fast.cosine_topk(x, w, 2, 2.0)
    close(v, ref.cosine_topk(x.double(), w.double(), 2, 2.0)[0])
    # auto never picks Triton for CPU tensors
    cpu = torch.device("cpu")
    assert _backend.resolve(None, "cosine_cross_entropy", cpu, torch.float32) != "triton"
    # auto on CUDA tensors without a native CUDA kernel picks Triton (float32, small k), not
    # for float64, k beyond the cap, or the MSE
    cuda = torch.device("cuda")
    if not _backend.native_reasons("cosine_cross_entropy", cuda):
        pytest.skip("a native CUDA kernel serves the cosine ops here")
    assert _backend.resolve(None, "cosine_cross_entropy", cuda, torch.float32) == "triton"
    assert _backend.resolve(None, "cosine_logits", cuda, torch.float64) == "torch"
    big_k = tcos.MAX_TOPK + 1
    assert _backend.resolve(None, "cosine_topk", cuda, torch.float32, k=big_k) == "torch"
    assert _backend.resolve(None, "cosine_logit_mse", cuda, torch.float32) == "torch"
