"""Fused cosine-classifier ops against the float64 reference (dfzsl_fast/reference/cosine.py)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import dfzsl_fast
from dfzsl_fast import _backend
from dfzsl_fast.nn import CosineClassifier
from dfzsl_fast.ops import cosine as ops
from dfzsl_fast.reference import cosine as ref

# (N, C, d): odd sizes, C = 1, N = 0
SHAPES = [(7, 5, 13), (33, 1, 9), (0, 4, 6), (1, 3, 3), (129, 17, 31)]
TOL = {torch.float64: dict(rtol=1e-10, atol=1e-10), torch.float32: dict(rtol=1e-4, atol=1e-4)}


def make(N, C, d, dtype=torch.float64, zero_rows=False, grad=True):
    x = torch.randn(N, d, dtype=dtype)
    w = torch.randn(C, d, dtype=dtype)
    if zero_rows:
        if N > 1:
            x[0] = 0.0
            x[1] = 1e-14  # below eps = 1e-12 in norm: the clamped branch, not exactly zero
        if C > 1:
            w[0] = 0.0
    t = torch.randint(0, C, (N,))
    return x.requires_grad_(grad), w.requires_grad_(grad), t


def grads(out, inputs, g=None):
    g = torch.randn_like(out) if g is None else g
    return torch.autograd.grad(out, inputs, g, allow_unused=True), g


def close(a, b, dtype):
    torch.testing.assert_close(a.to(b.dtype), b, **TOL[dtype], equal_nan=True)


# ------------------------------------------------------------------------------ vs the reference
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("zero_rows", [False, True], ids=["plain", "zero_rows"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_logits_matches_reference(shape, zero_rows, dtype):
    x, w, _ = make(*shape, dtype=dtype, zero_rows=zero_rows)
    out = dfzsl_fast.cosine_logits(x, w, scale=5.0)
    x64, w64 = x.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    r = ref.cosine_logits(x64, w64, 5.0)
    assert out.dtype == dtype and out.shape == r.shape
    close(out, r, dtype)
    (gx, gw), g = grads(out, (x, w))
    (rx, rw), _ = grads(r, (x64, w64), g.double())
    close(gx, rx, dtype)
    close(gw, rw, dtype)


@pytest.mark.parametrize("ls", [0.0, 0.2])
@pytest.mark.parametrize("adjust", [False, True], ids=["noadj", "adj"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("zero_rows", [False, True], ids=["plain", "zero_rows"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_cross_entropy_matches_reference(shape, zero_rows, reduction, adjust, ls):
    x, w, t = make(*shape, zero_rows=zero_rows)
    adj = torch.randn(shape[1], dtype=torch.float64) if adjust else None
    out = dfzsl_fast.cosine_cross_entropy(x, w, t, 7.0, adj, reduction, ls)
    r = ref.cosine_cross_entropy(x, w, t, 7.0, adj, reduction, ls)
    assert out.shape == r.shape
    close(out, r, torch.float64)
    if shape[0] == 0 and reduction == "mean":
        assert torch.isnan(out)
        return
    (gx, gw), g = grads(out, (x, w))
    (rx, rw), _ = grads(r, (x, w), g)
    close(gx, rx, torch.float64)
    close(gw, rw, torch.float64)


def test_cross_entropy_matches_plain_torch():
    x, w, t = make(50, 9, 16)
    adj = torch.randn(9, dtype=torch.float64)
    for red in ("mean", "sum", "none"):
        logits = ref.cosine_logits(x, w, 3.0) + adj
        expected = F.cross_entropy(logits, t, reduction=red, label_smoothing=0.3)
        got = dfzsl_fast.cosine_cross_entropy(x, w, t, 3.0, adj, red, 0.3)
        close(got, expected, torch.float64)


def test_cross_entropy_float32_and_no_grad_path():
    x, w, t = make(65, 11, 24, dtype=torch.float32)
    r = ref.cosine_cross_entropy(x.double(), w.double(), t, 10.0)
    close(dfzsl_fast.cosine_cross_entropy(x, w, t, 10.0), r, torch.float32)
    with torch.no_grad():
        close(dfzsl_fast.cosine_cross_entropy(x, w, t, 10.0), r, torch.float32)


def test_cross_entropy_backward_op_when_forward_skipped_grads():
    # Call the op directly with compute_grad=False: the backward must recompute via the backward op.
    x, w, t = make(40, 6, 8)
    loss = torch.ops.dfzsl_fast.cosine_cross_entropy(x, w, t, None, 4.0, 1e-12, 0.1, 1, False)[0]
    r = ref.cosine_cross_entropy(x, w, t, 4.0, None, "mean", 0.1)
    (gx, gw), _ = grads(loss, (x, w), torch.tensor(1.7, dtype=torch.float64))
    (rx, rw), _ = grads(r, (x, w), torch.tensor(1.7, dtype=torch.float64))
    close(gx, rx, torch.float64)
    close(gw, rw, torch.float64)


@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("shape", [(7, 5, 13), (129, 17, 31), (0, 4, 6), (5, 3, 3)], ids=str)
def test_topk_matches_reference(shape, k):
    x, w, _ = make(*shape, zero_rows=False)
    s, i = dfzsl_fast.cosine_topk(x, w, k=k, scale=2.0)
    rs, ri = ref.cosine_topk(x, w, k, 2.0)
    close(s, rs, torch.float64)
    assert torch.equal(i, ri) and i.dtype == torch.int64
    (gx, gw), g = grads(s, (x, w))
    (rx, rw), _ = grads(rs, (x, w), g)
    close(gx, rx, torch.float64)
    close(gw, rw, torch.float64)


def test_topk_c1():
    x, w, _ = make(9, 1, 5)
    s, i = dfzsl_fast.cosine_topk(x, w)
    assert i.shape == (9, 1) and bool((i == 0).all())
    close(s, ref.cosine_logits(x, w), torch.float64)


@pytest.mark.parametrize("zero_rows", [False, True], ids=["plain", "zero_rows"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_mse_matches_reference(shape, zero_rows):
    x, ws, _ = make(*shape, zero_rows=zero_rows)
    wt = torch.randn_like(ws).requires_grad_()
    out = dfzsl_fast.cosine_logit_mse(x, ws, wt, 3.0, 5.0)
    r = ref.cosine_logit_mse(x, ws, wt, 3.0, 5.0)
    close(out, r, torch.float64)
    if shape[0] == 0:
        return
    (gx, gw, gt), g = grads(out, (x, ws, wt))
    (rx, rw, rt), _ = grads(r, (x, ws, wt), g)
    close(gx, rx, torch.float64)
    close(gw, rw, torch.float64)
    assert gt is None and rt is None  # teacher detached


def test_mse_backward_without_precomputed_grads():
    x, ws, _ = make(20, 4, 6)
    wt = torch.randn_like(ws)
    loss = torch.ops.dfzsl_fast.cosine_logit_mse(x, ws, wt, 2.0, 3.0, 1e-12, False)[0]
    r = ref.cosine_logit_mse(x, ws, wt, 2.0, 3.0)
    (gx, gw), _ = grads(loss, (x, ws), torch.tensor(0.5, dtype=torch.float64))
    (rx, rw), _ = grads(r, (x, ws), torch.tensor(0.5, dtype=torch.float64))
    close(gx, rx, torch.float64)
    close(gw, rw, torch.float64)


def test_eps_policy_matches_f_normalize():
    x = torch.tensor([[0.0, 0.0], [3e-13, 4e-13], [3.0, 4.0]], dtype=torch.float64)
    w = torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
    out = dfzsl_fast.cosine_logits(x, w, eps=1e-12)
    expected = F.normalize(x, dim=1, eps=1e-12) @ F.normalize(w, dim=1).T
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-15)
    assert out[0].abs().max() == 0 and abs(float(out[1, 0]) - 0.3) < 1e-12


# ------------------------------------------------------------------------------------- gradcheck
def test_gradcheck_all_ops():
    x, w, t = make(6, 4, 5)
    x.data[0] = 1e-14  # clamped branch: norm < eps, gradient is I / eps
    eps = 1e-12
    wt = torch.randn(4, 5, dtype=torch.float64)
    adj = torch.randn(4, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda a, b: dfzsl_fast.cosine_logits(a[1:], b, 3.0), (x, w))
    for red in ("mean", "sum", "none"):
        assert torch.autograd.gradcheck(
            lambda a, b, red=red: dfzsl_fast.cosine_cross_entropy(a[1:], b, t[1:], 3.0, adj, red, 0.1),
            (x, w),
        )
    assert torch.autograd.gradcheck(lambda a, b: dfzsl_fast.cosine_topk(a[1:], b, 2, 3.0)[0], (x, w))
    # MSE: the teacher logits are detached, which finite differences in x cannot see, so
    # gradcheck in w_student only (x's gradient is checked against the reference above).
    xd = x.detach()
    assert torch.autograd.gradcheck(lambda b: dfzsl_fast.cosine_logit_mse(xd, b, wt, 2.0, 3.0), (w,))
    # the eps-clamped row: d/dx (x / eps) = I / eps, compared with F.normalize's autograd
    xs = torch.full((1, 5), 1e-14, dtype=torch.float64, requires_grad=True)
    g = torch.randn(1, 4, dtype=torch.float64)
    (a,) = torch.autograd.grad(dfzsl_fast.cosine_logits(xs, w, 3.0, eps), xs, g)
    (b,) = torch.autograd.grad(ref.cosine_logits(xs, w, 3.0, eps), xs, g)
    torch.testing.assert_close(a, b, rtol=1e-10, atol=0)


# --------------------------------------------------------------------------------------- opcheck
@pytest.mark.parametrize("requires_grad", [False, True])
def test_opcheck(requires_grad):
    x, w, t = make(9, 5, 7, grad=requires_grad)
    wt = torch.randn(5, 7, dtype=torch.float64)
    adj = torch.randn(5, dtype=torch.float64)
    opsns = torch.ops.dfzsl_fast
    torch.library.opcheck(opsns.cosine_logits.default, (x, w, 2.0, 1e-12))
    for red in (0, 1, 2):
        for cg in (False, True):
            torch.library.opcheck(
                opsns.cosine_cross_entropy.default, (x, w, t, adj, 2.0, 1e-12, 0.1, red, cg)
            )
    torch.library.opcheck(opsns.cosine_topk.default, (x, w, 2, 2.0, 1e-12))
    for cg in (False, True):
        torch.library.opcheck(opsns.cosine_logit_mse.default, (x, w, wt, 2.0, 3.0, 1e-12, cg))
    g = torch.randn(9, 5, dtype=torch.float64)
    torch.library.opcheck(opsns.cosine_logits_backward.default, (g, x.detach(), w.detach(), 2.0, 1e-12))
    lse = torch.randn(9, dtype=torch.float64)
    torch.library.opcheck(
        opsns.cosine_cross_entropy_backward.default,
        (torch.randn(9, dtype=torch.float64), x.detach(), w.detach(), t, adj, lse, 2.0, 1e-12, 0.1),
    )


# --------------------------------------------------------------------------------------- compile
@pytest.mark.compile
def test_compile_smoke():
    torch._dynamo.reset()
    x, w, t = make(16, 5, 8, dtype=torch.float32)

    def f(a, b, y):
        return dfzsl_fast.cosine_logits(a, b, 4.0).sum() + dfzsl_fast.cosine_cross_entropy(a, b, y, 4.0)

    cf = torch.compile(f, fullgraph=True, backend="aot_eager")
    out = cf(x, w, t)
    expected = f(x, w, t)
    torch.testing.assert_close(out, expected)
    (gx, gw), _ = grads(out, (x, w), torch.tensor(1.0))
    (ex, ew), _ = grads(expected, (x, w), torch.tensor(1.0))
    torch.testing.assert_close(gx, ex)
    torch.testing.assert_close(gw, ew)


# ------------------------------------------------------------------------- no materialisation
def test_chunking_gives_identical_results_and_is_used(monkeypatch):
    x, w, t = make(50, 7, 9)
    wt = torch.randn(7, 9, dtype=torch.float64)
    adj = torch.randn(7, dtype=torch.float64)

    def run_all():
        out = []
        for red in ("mean", "none"):
            loss = dfzsl_fast.cosine_cross_entropy(x, w, t, 5.0, adj, red, 0.1)
            out += [loss, *torch.autograd.grad(loss, (x, w), torch.ones_like(loss))]
        s, i = dfzsl_fast.cosine_topk(x, w, 2, 5.0)
        out += [s, i]
        m = dfzsl_fast.cosine_logit_mse(x, w, wt, 5.0, 2.0)
        out += [m, *torch.autograd.grad(m, (x, w))]
        return out

    calls = []
    monkeypatch.setattr(ops, "_chunk_hook", lambda op, a, b: calls.append((op, a, b)))
    big = run_all()
    assert all(b - a == 50 for _, a, b in calls)  # one chunk at the default size
    calls.clear()
    monkeypatch.setattr(ops, "CHUNK_BYTES", 4 * 7 * 8)  # 8 rows a chunk
    assert ops.chunk_rows(7) == 8
    small = run_all()
    for a, b in zip(big, small):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    per_op = {}
    for op, a, b in calls:
        assert b - a <= 8
        per_op[op] = per_op.get(op, 0) + 1
    assert per_op["cosine_cross_entropy"] == 2 * 7  # mean and none, 7 chunks each
    assert per_op["cosine_cross_entropy_backward"] == 7  # reduction none recomputes
    assert per_op["cosine_topk"] == 7 and per_op["cosine_logit_mse"] == 7


def test_default_chunk_bounds_logits_bytes():
    for C in (1, 200, 1000, 10000, 100000):
        r = ops.chunk_rows(C)
        assert r >= 1 and (r * C * 4 <= ops.CHUNK_BYTES or r == 1)
    assert ops.chunk_rows(1000) * 1000 * 4 <= 32 << 20
    # N = 65536, C = 1000 -> several chunks, never the whole (N, C)
    assert -(-65536 // ops.chunk_rows(1000)) > 1


# ------------------------------------------------------------------------------------- backends
def test_backend_routing(monkeypatch):
    x, w, t = make(10, 4, 6)
    with pytest.raises(ValueError, match="triton"):
        dfzsl_fast.cosine_logits(x, w, backend="triton")
    expected = dfzsl_fast.cosine_cross_entropy(x, w, t, 2.0)
    # pretend a native kernel is registered: backend="torch" must then take the direct path
    monkeypatch.setattr(_backend, "native_reasons", lambda op, dev: [])
    for fn in (
        lambda: dfzsl_fast.cosine_cross_entropy(x, w, t, 2.0, backend="torch"),
        lambda: dfzsl_fast.cosine_logits(x, w, 2.0, backend="torch").sum(),
        lambda: dfzsl_fast.cosine_topk(x, w, 2, 2.0, backend="torch")[0].sum(),
        lambda: dfzsl_fast.cosine_logit_mse(x, w, w.detach() * 2, 2.0, 1.0, backend="torch"),
    ):
        out = fn()
        gx, gw = torch.autograd.grad(out, (x, w))
        assert gx.shape == x.shape and gw.shape == w.shape
    out = dfzsl_fast.cosine_cross_entropy(x, w, t, 2.0, backend="torch")
    close(out, expected, torch.float64)


# ------------------------------------------------------------------------------------ bad input
def test_bad_inputs():
    x, w, t = make(5, 3, 4, grad=False)
    with pytest.raises(ValueError, match="feature dimensions differ"):
        dfzsl_fast.cosine_logits(x, torch.randn(3, 5, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"x: expected shape \(N, d\)"):
        dfzsl_fast.cosine_logits(x[0], w)
    with pytest.raises(TypeError, match="w: expected a floating-point"):
        dfzsl_fast.cosine_logits(x, torch.ones(3, 4, dtype=torch.int64))
    with pytest.raises(TypeError, match="dtypes differ"):
        dfzsl_fast.cosine_logits(x, w.float())
    with pytest.raises(ValueError, match="w: expected at least one class"):
        dfzsl_fast.cosine_logits(x, w[:0])
    with pytest.raises(ValueError, match="target: expected class indices in"):
        dfzsl_fast.cosine_cross_entropy(x, w, torch.tensor([0, 1, 2, 3, 0]), 1.0)
    with pytest.raises(ValueError, match="target: expected class indices in"):
        dfzsl_fast.cosine_cross_entropy(x, w, torch.tensor([0, -1, 2, 1, 0]), 1.0)
    with pytest.raises(TypeError, match="target: expected dtype torch.int64"):
        dfzsl_fast.cosine_cross_entropy(x, w, t.int(), 1.0)
    with pytest.raises(ValueError, match=r"target: expected shape \(5,\)"):
        dfzsl_fast.cosine_cross_entropy(x, w, t[:3], 1.0)
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="scale: expected a finite"):
            dfzsl_fast.cosine_cross_entropy(x, w, t, bad)
    with pytest.raises(ValueError, match="reduction"):
        dfzsl_fast.cosine_cross_entropy(x, w, t, 1.0, reduction="avg")
    with pytest.raises(ValueError, match="label_smoothing"):
        dfzsl_fast.cosine_cross_entropy(x, w, t, 1.0, label_smoothing=1.5)
    with pytest.raises(ValueError, match=r"logit_adjustment: expected shape \(3,\)"):
        dfzsl_fast.cosine_cross_entropy(x, w, t, 1.0, logit_adjustment=torch.zeros(4, dtype=torch.float64))
    with pytest.raises(ValueError, match="k: expected 1 <= k <= C"):
        dfzsl_fast.cosine_topk(x, w, k=4)
    with pytest.raises(ValueError, match="k: expected 1 <= k <= C"):
        dfzsl_fast.cosine_topk(x, w, k=0)
    with pytest.raises(ValueError, match="w_teacher"):
        dfzsl_fast.cosine_logit_mse(x, w, torch.randn(3, 5, dtype=torch.float64), 1.0, 1.0)
    with pytest.raises(ValueError, match="scale_t: expected a finite"):
        dfzsl_fast.cosine_logit_mse(x, w, w, 1.0, float("nan"))
    with pytest.raises(ValueError, match="backend must be one of"):
        dfzsl_fast.cosine_logits(x, w, backend="cuda")


# ----------------------------------------------------------------------------- CosineClassifier
def test_cosine_classifier():
    w0 = torch.randn(6, 8, dtype=torch.float64)
    head = CosineClassifier(w0, scale=10.0)
    assert head.weight.requires_grad and head.num_classes == 6
    x = torch.randn(12, 8, dtype=torch.float64)
    y = torch.randint(0, 6, (12,))
    close(head(x), ref.cosine_logits(x, w0, 10.0), torch.float64)
    loss = head.loss(x, y, label_smoothing=0.1)
    close(loss, ref.cosine_cross_entropy(x, w0, y, 10.0, label_smoothing=0.1), torch.float64)
    loss.backward()
    assert head.weight.grad is not None and head.weight.grad.shape == (6, 8)
    pred = head.predict(x)
    assert pred.shape == (12,) and torch.equal(pred, ref.cosine_logits(x, w0, 10.0).argmax(1))
    assert head.predict(x, k=3).shape == (12, 3)

    assert head.extend(torch.randn(3, 8, dtype=torch.float64)) is head
    assert head.num_classes == 9 and head.weight.requires_grad
    torch.testing.assert_close(head.weight[:6].detach(), w0)
    frozen = CosineClassifier(w0, 2.0, learnable=False).extend(torch.randn(2, 8, dtype=torch.float64))
    assert not frozen.weight.requires_grad and frozen.num_classes == 8
    with pytest.raises(ValueError, match="new_weights"):
        head.extend(torch.randn(2, 7, dtype=torch.float64))

    lin = head.to_linear()
    assert lin.bias is None
    xn = F.normalize(x, dim=1)
    close(lin(xn), head(xn), torch.float64)
    back = CosineClassifier.from_linear(lin)
    assert abs(back.scale - 10.0) < 1e-9
    close(back(x), head(x), torch.float64)

    with pytest.raises(ValueError, match="nonzero bias"):
        CosineClassifier.from_linear(torch.nn.Linear(8, 3))
    zero_bias = torch.nn.Linear(8, 3)
    torch.nn.init.zeros_(zero_bias.bias)
    assert CosineClassifier.from_linear(zero_bias, scale=5.0).scale == 5.0
