"""Fused cosine-classifier ops against the float64 reference (dfzsl_fast/reference/cosine.py)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import dfzsl_fast
from dfzsl_fast import _backend, _extension, testing
from dfzsl_fast.nn import CosineClassifier
from dfzsl_fast.ops import cosine as ops  # noqa: F401
from dfzsl_fast.reference import cosine as ref
from dfzsl_fast.reference import cosine_chunked as kern

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


@pytest.mark.parametrize("backend", ["torch", "native"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_cross_entropy_fixed_features_gives_only_the_weight_gradient(backend, shape, reduction):
    # x does not require grad (a classifier on fixed features): the forward skips the gradient
    # in x (compute_grad_x=False) and the weight's gradient is still the reference's
    if backend == "native":
        need("native")
    x, w, t = make(*shape)
    x = x.detach()
    adj = torch.randn(shape[1], dtype=torch.float64)
    out = dfzsl_fast.cosine_cross_entropy(x, w, t, 7.0, adj, reduction, 0.2, backend=backend)
    r = ref.cosine_cross_entropy(x, w, t, 7.0, adj, reduction, 0.2)
    close(out, r, torch.float64)
    (gw,), g = grads(out, (w,))
    (rw,), _ = grads(r, (w,), g)
    close(gw, rw, torch.float64)
    # the op's own outputs: an empty grad_x, the same grad_w as with compute_grad_x=True
    red = ops._REDUCTIONS[reduction]
    args = (x, w.detach(), t, adj, 7.0, 1e-12, 0.2, red, True)
    fn = torch.ops.dfzsl_fast.cosine_cross_entropy if backend == "native" else \
        kern.cosine_cross_entropy
    full = fn(*args)
    part = fn(*args, False)
    assert part[2].shape == (0, shape[2]) and full[2].shape == x.shape
    for a, b in ((part[0], full[0]), (part[1], full[1]), (part[3], full[3])):
        torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)


def test_cross_entropy_skipped_grad_x_is_recomputed_when_needed():
    # Called directly with compute_grad_x=False while x requires grad: the backward recomputes
    # grad_x through the backward op instead of handing autograd an empty tensor.
    x, w, t = make(40, 6, 8)
    loss = torch.ops.dfzsl_fast.cosine_cross_entropy(
        x, w, t, None, 4.0, 1e-12, 0.1, 1, True, False
    )[0]
    r = ref.cosine_cross_entropy(x, w, t, 4.0, None, "mean", 0.1)
    (gx, gw), _ = grads(loss, (x, w), torch.tensor(1.3, dtype=torch.float64))
    (rx, rw), _ = grads(r, (x, w), torch.tensor(1.3, dtype=torch.float64))
    close(gx, rx, torch.float64)
    close(gw, rw, torch.float64)


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
    # The first backward of a mean/sum loss hands over the gradients the forward computed; a
    # repeated backward (retain_graph, as gradcheck's reentrancy check does) recomputes them, equal
    # up to float64 rounding: hence nondet_tol at rounding level.
    for red in ("mean", "sum", "none"):
        assert torch.autograd.gradcheck(
            lambda a, b, red=red: dfzsl_fast.cosine_cross_entropy(
                a[1:], b, t[1:], 3.0, adj, red, 0.1
            ),
            (x, w),
            nondet_tol=1e-12,
        )
    assert torch.autograd.gradcheck(
        lambda a, b: dfzsl_fast.cosine_topk(a[1:], b, 2, 3.0)[0], (x, w)
    )
    # MSE: the teacher logits are detached, which finite differences in x cannot see, so
    # gradcheck in w_student only (x's gradient is checked against the reference above).
    xd = x.detach()
    assert torch.autograd.gradcheck(
        lambda b: dfzsl_fast.cosine_logit_mse(xd, b, wt, 2.0, 3.0), (w,), nondet_tol=1e-12
    )
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
    torch.library.opcheck(
        opsns.cosine_logits_backward.default, (g, x.detach(), w.detach(), 2.0, 1e-12)
    )
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
        return dfzsl_fast.cosine_logits(a, b, 4.0).sum() + dfzsl_fast.cosine_cross_entropy(
            a, b, y, 4.0
        )

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
    # The chunk hook belongs to the pure-PyTorch default kernels: force them even where native
    # kernels are registered (the backward ops still go through the dispatcher, see below).
    native_ce_backward = not _backend.native_reasons(
        "cosine_cross_entropy_backward", torch.device("cpu")
    )
    x, w, t = make(50, 7, 9)
    wt = torch.randn(7, 9, dtype=torch.float64)
    adj = torch.randn(7, dtype=torch.float64)

    def run_all():
        out = []
        with _backend.use_backend("torch"):
            for red in ("mean", "none"):
                loss = dfzsl_fast.cosine_cross_entropy(x, w, t, 5.0, adj, red, 0.1)
                out += [loss, *torch.autograd.grad(loss, (x, w), torch.ones_like(loss))]
            s, i = dfzsl_fast.cosine_topk(x, w, 2, 5.0)
            out += [s, i]
            m = dfzsl_fast.cosine_logit_mse(x, w, wt, 5.0, 2.0)
            out += [m, *torch.autograd.grad(m, (x, w))]
        return out

    calls = []
    monkeypatch.setattr(kern, "_chunk_hook", lambda op, a, b: calls.append((op, a, b)))
    big = run_all()
    assert all(b - a == 50 for _, a, b in calls)  # one chunk at the default size
    calls.clear()
    monkeypatch.setattr(kern, "CHUNK_BYTES", 4 * 7 * 8)  # 8 rows a chunk
    assert kern.chunk_rows(7) == 8
    small = run_all()
    for a, b in zip(big, small, strict=False):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    per_op = {}
    for op, a, b in calls:
        assert b - a <= 8
        per_op[op] = per_op.get(op, 0) + 1
    assert per_op["cosine_cross_entropy"] == 2 * 7  # mean and none, 7 chunks each
    # reduction none recomputes in the backward op (the native one when registered: no chunks)
    assert per_op.get("cosine_cross_entropy_backward", 0) == (0 if native_ce_backward else 7)
    assert per_op["cosine_topk"] == 7 and per_op["cosine_logit_mse"] == 7


def test_default_chunk_bounds_logits_bytes():
    for C in (1, 200, 1000, 10000, 100000):
        r = kern.chunk_rows(C)
        assert r >= 1 and (r * C * 4 <= kern.CHUNK_BYTES or r == 1)
    assert kern.chunk_rows(1000) * 1000 * 4 <= 32 << 20
    # N = 65536, C = 1000 -> several chunks, never the whole (N, C)
    assert -(-65536 // kern.chunk_rows(1000)) > 1


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
        dfzsl_fast.cosine_cross_entropy(
            x, w, t, 1.0, logit_adjustment=torch.zeros(4, dtype=torch.float64)
        )
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
    frozen = CosineClassifier(w0, 2.0, learnable=False).extend(
        torch.randn(2, 8, dtype=torch.float64)
    )
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


# ------------------------------------------------------------------- native CPU kernels vs default
CPU = torch.device("cpu")
COSINE_OPS = (
    "cosine_logits",
    "cosine_logits_backward",
    "cosine_cross_entropy",
    "cosine_cross_entropy_backward",
    "cosine_topk",
    "cosine_logit_mse",
)
BACKENDS = ["native", "torch"]
# N in {0, 1, 7, 129} x C in {1, 3, 1000} x d in {1, 5, 512}
ODD_SHAPES = [(N, C, d) for N in (0, 1, 7, 129) for C in (1, 3, 1000) for d in (1, 5, 512)]


def need(backend, op="cosine_cross_entropy"):
    if backend == "native":
        testing.skip_unless_available("native", CPU, op=op)


def test_native_cosine_kernels_registered_and_routed():
    need("native")
    for op in COSINE_OPS:
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"dfzsl_fast::{op}", "CPU"), op
        assert op in _extension.build_info()["cpu_kernels"], op
        assert _backend.resolve(None, op, CPU) == "native"


def test_native_path_never_runs_the_default_kernels(monkeypatch):
    # The default kernels report every row chunk to kern._chunk_hook; the native ones never do.
    need("native")
    calls = []
    monkeypatch.setattr(kern, "_chunk_hook", lambda op, a, b: calls.append(op))
    x, w, t = make(40, 6, 8)
    wt = torch.randn(6, 8, dtype=torch.float64)
    for backend in ("native", None):  # explicit, and "auto"
        for red in ("mean", "none"):
            loss = dfzsl_fast.cosine_cross_entropy(x, w, t, 3.0, None, red, 0.1, backend=backend)
            torch.autograd.grad(loss, (x, w), torch.ones_like(loss))
        dfzsl_fast.cosine_logits(x, w, 2.0, backend=backend).sum().backward()
        dfzsl_fast.cosine_topk(x, w, 2, backend=backend)
        m = dfzsl_fast.cosine_logit_mse(x, w, wt, 2.0, 3.0, backend=backend)
        torch.autograd.grad(m, (x, w))
    assert calls == []
    dfzsl_fast.cosine_cross_entropy(x, w, t, 3.0, backend="torch")
    assert calls  # the hook itself works


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", ODD_SHAPES, ids=str)
def test_cross_entropy_odd_sizes(shape, backend):
    need(backend)
    N, C, d = shape
    x, w, t = make(N, C, d, zero_rows=True)
    adj = torch.randn(C, dtype=torch.float64)
    for red in ("mean", "sum", "none"):
        out = dfzsl_fast.cosine_cross_entropy(x, w, t, 6.0, adj, red, 0.15, backend=backend)
        r = ref.cosine_cross_entropy(x, w, t, 6.0, adj, red, 0.15)
        assert out.shape == r.shape and out.dtype == r.dtype
        close(out, r, torch.float64)
        if N == 0 and red == "mean":
            assert torch.isnan(out)
            continue
        (gx, gw), g = grads(out, (x, w))
        (rx, rw), _ = grads(r, (x, w), g)
        # the clamped rows' gradients are (P @ ws) / eps: rounding amplified by 1e12, ~1e6 in size
        torch.testing.assert_close(gx, rx, rtol=1e-8, atol=1e-10)
        close(gw, rw, torch.float64)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", ODD_SHAPES, ids=str)
def test_logits_topk_mse_odd_sizes(shape, backend):
    need(backend, "cosine_logits")
    N, C, d = shape
    x, w, _ = make(N, C, d, zero_rows=True)
    out = dfzsl_fast.cosine_logits(x, w, 4.0, backend=backend)
    r = ref.cosine_logits(x, w, 4.0)
    close(out, r, torch.float64)
    (gx, gw), g = grads(out, (x, w))
    (rx, rw), _ = grads(r, (x, w), g)
    torch.testing.assert_close(gx, rx, rtol=1e-8, atol=1e-10)
    close(gw, rw, torch.float64)

    k = min(C, 3)
    s, i = dfzsl_fast.cosine_topk(x, w, k, 4.0, backend=backend)
    rs, ri = ref.cosine_topk(x, w, k, 4.0)
    close(s, rs, torch.float64)
    assert s.shape == (N, k) and i.shape == (N, k) and i.dtype == torch.int64
    # zero rows tie every class: compare the scores the indices point at, not the order
    close(r.gather(1, i), s, torch.float64)

    wt = torch.randn(C, d, dtype=torch.float64)
    m = dfzsl_fast.cosine_logit_mse(x, w, wt, 3.0, 5.0, backend=backend)
    rm = ref.cosine_logit_mse(x, w, wt, 3.0, 5.0)
    close(m, rm, torch.float64)
    if N:
        (gx, gw), g = grads(m, (x, w))
        (rx, rw), _ = grads(rm, (x, w), g)
        torch.testing.assert_close(gx, rx, rtol=1e-8, atol=1e-10)
        close(gw, rw, torch.float64)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("ls", [0.0, 0.3])
@pytest.mark.parametrize("adjust", [False, True], ids=["noadj", "adj"])
@pytest.mark.parametrize("reduction", [0, 1, 2], ids=["none", "mean", "sum"])
def test_native_cross_entropy_op_matches_default_kernel(reduction, adjust, ls, dtype):
    # The op itself (both compute_grad values, every output) against the default kernel.
    need("native")
    x, w, t = make(300, 37, 24, dtype=dtype, zero_rows=True, grad=False)
    adj = torch.randn(37, dtype=dtype) * 2 if adjust else None
    tol = TOL[dtype]
    for cg, cgx in ((False, True), (True, True), (True, False)):
        args = (x, w, t, adj, 9.0, 1e-12, ls, reduction, cg, cgx)
        got = torch.ops.dfzsl_fast.cosine_cross_entropy(*args)
        exp = kern.cosine_cross_entropy(*args)
        for a, b in zip(got, exp, strict=False):
            assert a.shape == b.shape and a.dtype == b.dtype
            torch.testing.assert_close(a, b, **tol, equal_nan=True)
    g = torch.rand(300, dtype=dtype)
    lse = kern.cosine_cross_entropy(x, w, t, adj, 9.0, 1e-12, ls, 0, False)[1]
    bargs = (g, x, w, t, adj, lse, 9.0, 1e-12, ls)
    for a, b in zip(
        torch.ops.dfzsl_fast.cosine_cross_entropy_backward(*bargs),
        kern.cosine_cross_entropy_backward(*bargs),
        strict=False,
    ):
        torch.testing.assert_close(a, b, **tol)


def test_native_forward_grads_equal_backward_op():
    # compute_grad=True (gradients in the forward) and the backward op give the same gradients.
    need("native")
    x, w, t = make(257, 19, 33, grad=False)
    adj = torch.randn(19, dtype=torch.float64)
    for red, rows in (
        (1, torch.full((257,), 1 / 257, dtype=torch.float64)),
        (2, torch.ones(257, dtype=torch.float64)),
    ):
        _, lse, gx, gw = torch.ops.dfzsl_fast.cosine_cross_entropy(
            x, w, t, adj, 5.0, 1e-12, 0.2, red, True
        )
        bx, bw = torch.ops.dfzsl_fast.cosine_cross_entropy_backward(
            rows, x, w, t, adj, lse, 5.0, 1e-12, 0.2
        )
        torch.testing.assert_close(gx, bx, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(gw, bw, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_native_half_inputs_match_default_kernels(dtype):
    need("native")
    x, w, t = make(70, 9, 16, dtype=dtype, grad=False)
    wt = torch.randn(9, 16, dtype=dtype)
    adj = torch.randn(9, dtype=torch.float32)
    tol = dict(rtol=1e-2, atol=1e-2)
    pairs = [
        (
            torch.ops.dfzsl_fast.cosine_logits(x, w, 3.0, 1e-12),
            kern.cosine_logits(x, w, 3.0, 1e-12),
        ),
        (
            torch.ops.dfzsl_fast.cosine_logits_backward(
                torch.randn(70, 9).to(dtype), x, w, 3.0, 1e-12
            ),
            None,
        ),
        (
            torch.ops.dfzsl_fast.cosine_cross_entropy(x, w, t, adj, 3.0, 1e-12, 0.1, 1, True),
            kern.cosine_cross_entropy(x, w, t, adj, 3.0, 1e-12, 0.1, 1, True),
        ),
        (
            torch.ops.dfzsl_fast.cosine_topk(x, w, 3, 3.0, 1e-12)[0],
            kern.cosine_topk(x, w, 3, 3.0, 1e-12)[0],
        ),
        (
            torch.ops.dfzsl_fast.cosine_logit_mse(x, w, wt, 3.0, 2.0, 1e-12, True),
            kern.cosine_logit_mse(x, w, wt, 3.0, 2.0, 1e-12, True),
        ),
    ]
    g = torch.randn(70, 9).to(dtype)
    pairs[1] = (
        torch.ops.dfzsl_fast.cosine_logits_backward(g, x, w, 3.0, 1e-12),
        kern.cosine_logits_backward(g, x, w, 3.0, 1e-12),
    )
    for got, exp in pairs:
        got = got if isinstance(got, (tuple, list)) else (got,)
        exp = exp if isinstance(exp, (tuple, list)) else (exp,)
        for a, b in zip(got, exp, strict=False):
            assert a.dtype == b.dtype and a.shape == b.shape
            torch.testing.assert_close(a.float(), b.float(), **tol)


@pytest.mark.parametrize("C,k", [(5, 1), (5, 3), (5, 5), (200, 1), (200, 3), (200, 4), (200, 200)])
def test_native_topk_ties_like_torch_topk(C, k):
    # Zero rows tie all classes, duplicated class weights tie pairs: the native kernel selects with
    # torch.topk's own algorithm, so even the tie order matches the default kernel.
    need("native", "cosine_topk")
    x, w, _ = make(40, C, 8, grad=False)
    x[::3] = 0.0
    w[1::2] = w[0::2][: C // 2]  # class 2j+1 duplicates class 2j
    s, i = torch.ops.dfzsl_fast.cosine_topk(x, w, k, 2.0, 1e-12)
    rs, ri = kern.cosine_topk(x, w, k, 2.0, 1e-12)
    torch.testing.assert_close(s, rs, rtol=1e-12, atol=1e-12)
    assert torch.equal(i[::3], ri[::3])  # exact zero logits: exactly torch's tie order
    torch.testing.assert_close(ref.cosine_logits(x, w, 2.0).gather(1, i), s, rtol=1e-12, atol=1e-12)


def test_native_topk_nan_is_largest():
    need("native", "cosine_topk")
    x, w, _ = make(4, 6, 3, grad=False)
    x[2, 0] = float("nan")
    s, i = torch.ops.dfzsl_fast.cosine_topk(x, w, 2, 1.0, 1e-12)
    rs, ri = kern.cosine_topk(x, w, 2, 1.0, 1e-12)
    torch.testing.assert_close(s, rs, equal_nan=True)
    assert torch.isnan(s[2]).all()


@pytest.mark.parametrize("n_rows", [203, 17, 9])  # 17 and 9: chunks of 8 rows and a ragged one
@pytest.mark.parametrize("tile_rows", ["", "1", "5", "64"])
def test_native_tiling_and_threads_do_not_change_results(monkeypatch, tile_rows, n_rows):
    need("native")
    x, w, t = make(n_rows, 11, 7, grad=False)
    wt = torch.randn(11, 7, dtype=torch.float64)
    adj = torch.randn(11, dtype=torch.float64)

    def run_all():
        return [
            *torch.ops.dfzsl_fast.cosine_cross_entropy(x, w, t, adj, 4.0, 1e-12, 0.1, 1, True),
            *torch.ops.dfzsl_fast.cosine_cross_entropy(x, w, t, adj, 4.0, 1e-12, 0.1, 0, False)[:2],
            *torch.ops.dfzsl_fast.cosine_topk(x, w, 3, 4.0, 1e-12),
            *torch.ops.dfzsl_fast.cosine_logit_mse(x, w, wt, 4.0, 2.0, 1e-12, True),
            torch.ops.dfzsl_fast.cosine_logits(x, w, 4.0, 1e-12),
            *torch.ops.dfzsl_fast.cosine_logits_backward(
                torch.ones(n_rows, 11, dtype=torch.float64), x, w, 4.0, 1e-12
            ),
        ]

    assert_same_at_other_tilings(monkeypatch, tile_rows, run_all, run_all())


def assert_same_at_other_tilings(monkeypatch, tile_rows, run, base):
    """run() at 1 and 3 threads, and with tile_rows rows a tile ("": the kernel's own tiling),
    gives base to float64 rounding."""
    if tile_rows:
        monkeypatch.setenv("DFZSL_COSINE_TILE_ROWS", tile_rows)
    threads = torch.get_num_threads()
    try:
        for n in (1, 3):
            torch.set_num_threads(n)
            for a, b in zip(run(), base, strict=True):
                torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-13)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradcheck_per_backend(backend):
    need(backend)
    # No zero / tiny rows here: finite differences of size 1e-6 would cross |x| = eps, where the
    # map is not differentiable (the clamped branch is checked against F.normalize's autograd in
    # test_gradcheck_all_ops and the odd-size tests).
    x, w, t = make(9, 4, 5)
    wt = torch.randn(4, 5, dtype=torch.float64)
    adj = torch.randn(4, dtype=torch.float64)
    b = backend
    assert torch.autograd.gradcheck(
        lambda a, c: dfzsl_fast.cosine_logits(a, c, 3.0, backend=b), (x, w)
    )
    for red in ("mean", "sum", "none"):
        for ls in (0.0, 0.25):
            assert torch.autograd.gradcheck(
                lambda a, c, red=red, ls=ls: dfzsl_fast.cosine_cross_entropy(
                    a, c, t, 3.0, adj, red, ls, backend=b
                ),
                (x, w),
                nondet_tol=1e-12,  # repeated backward recomputes (see test_gradcheck_all_ops)
            )
    assert torch.autograd.gradcheck(
        lambda a, c: dfzsl_fast.cosine_topk(a, c, 2, 3.0, backend=b)[0], (x, w)
    )
    xd = x.detach()
    assert torch.autograd.gradcheck(
        lambda c: dfzsl_fast.cosine_logit_mse(xd, c, wt, 2.0, 3.0, backend=b),
        (w,),
        nondet_tol=1e-12,
    )
    # second-order is not supported (the backward ops are not differentiable): first order only


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("N", [0, 1, 13])
def test_opcheck_native(N, dtype):
    need("native")
    x, w, t = make(N, 5, 7, dtype=dtype, grad=True)
    wt = torch.randn(5, 7, dtype=dtype)
    adj = torch.randn(5, dtype=dtype)
    o = torch.ops.dfzsl_fast
    torch.library.opcheck(o.cosine_logits.default, (x, w, 2.0, 1e-12))
    # N = 0: the mean loss and the MSE are NaN, which opcheck's comparisons do not accept
    for red in (0, 2) if N == 0 else (0, 1, 2):
        for cg in (False, True):
            torch.library.opcheck(
                o.cosine_cross_entropy.default, (x, w, t, adj, 2.0, 1e-12, 0.1, red, cg)
            )
            torch.library.opcheck(
                o.cosine_cross_entropy.default, (x, w, t, None, 2.0, 1e-12, 0.0, red, cg)
            )
    torch.library.opcheck(o.cosine_topk.default, (x, w, 3, 2.0, 1e-12))
    for cg in (False, True) if N else ():
        torch.library.opcheck(o.cosine_logit_mse.default, (x, w, wt, 2.0, 3.0, 1e-12, cg))
    xd, wd = x.detach(), w.detach()
    torch.library.opcheck(
        o.cosine_logits_backward.default, (torch.randn(N, 5, dtype=dtype), xd, wd, 2.0, 1e-12)
    )
    lse = torch.logsumexp(ref.cosine_logits(xd, wd, 2.0) + adj, 1)
    torch.library.opcheck(
        o.cosine_cross_entropy_backward.default,
        (torch.randn(N, dtype=dtype), xd, wd, t, adj, lse, 2.0, 1e-12, 0.1),
    )


def test_native_bad_inputs_raise():
    need("native")
    x, w, t = make(5, 3, 4, grad=False)
    o = torch.ops.dfzsl_fast
    with pytest.raises(RuntimeError, match="cosine_cross_entropy: expected target in"):
        o.cosine_cross_entropy(x, w, torch.tensor([0, 1, 3, 0, 0]), None, 1.0, 1e-12, 0.0, 1, True)
    with pytest.raises(RuntimeError, match="cosine_cross_entropy: expected reduction"):
        o.cosine_cross_entropy(x, w, t, None, 1.0, 1e-12, 0.0, 3, True)
    with pytest.raises(RuntimeError, match="cosine_logits: expected x and w with the same feature"):
        o.cosine_logits(x, torch.randn(3, 5, dtype=torch.float64), 1.0, 1e-12)
    with pytest.raises(RuntimeError, match="cosine_topk: expected 1 <= k <= C"):
        o.cosine_topk(x, w, 4, 1.0, 1e-12)
    with pytest.raises(RuntimeError, match="cosine_cross_entropy_backward: expected lse"):
        o.cosine_cross_entropy_backward(
            torch.ones(5, dtype=torch.float64),
            x,
            w,
            t,
            None,
            torch.ones(4, dtype=torch.float64),
            1.0,
            1e-12,
            0.0,
        )
    with pytest.raises(RuntimeError, match="cosine_logit_mse: expected w_student and w_teacher"):
        o.cosine_logit_mse(x, w, torch.randn(2, 4, dtype=torch.float64), 1.0, 1.0, 1e-12, False)


def test_native_extreme_logits_stay_finite():
    # scale 1000 (logits far outside exp's range before the max shift) and -inf adjustments
    need("native")
    x, w, t = make(33, 6, 5, grad=False)
    adj = torch.zeros(6, dtype=torch.float64)
    adj[5] = float("-inf")
    t = t.clamp(max=4)
    for dtype in (torch.float32, torch.float64):
        args = (x.to(dtype), w.to(dtype), t, adj.to(dtype), 1000.0, 1e-12, 0.0, 1, True)
        got = torch.ops.dfzsl_fast.cosine_cross_entropy(*args)
        exp = kern.cosine_cross_entropy(*args)
        for a, b in zip(got, exp, strict=False):
            assert torch.isfinite(a).all()
            torch.testing.assert_close(a, b, **TOL[dtype])


@pytest.mark.parametrize("op", ["ce", "mse"])
def test_repeated_backward_recomputes_precomputed_gradients(op):
    # retain_graph: the first backward consumes the forward's gradients, the second recomputes
    x, w, t = make(9, 5, 7)
    wt = torch.randn(5, 7, dtype=torch.float64)
    if op == "ce":
        loss = dfzsl_fast.cosine_cross_entropy(x, w, t, 4.0)
    else:
        loss = dfzsl_fast.cosine_logit_mse(x, w, wt, 2.0, 3.0)
    g1 = torch.autograd.grad(loss, (x, w), retain_graph=True)
    g2 = torch.autograd.grad(loss, (x, w), retain_graph=True)
    g3 = torch.autograd.grad(2.0 * loss, (x, w))
    for a, b, c in zip(g1, g2, g3, strict=False):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(2.0 * a, c, rtol=1e-12, atol=1e-14)


# --------------------------------------------------- loss and weight gradient without autograd
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_cross_entropy_and_grad_w_matches_reference(shape, reduction, dtype, backend):
    need(backend)
    x, w, t = make(*shape, dtype=dtype, zero_rows=True, grad=False)
    adj = torch.randn(shape[1], dtype=dtype)
    loss, gw = ops.cosine_cross_entropy_and_grad_w(x, w, t, 7.0, adj, reduction, 0.1,
                                                   backend=backend)
    w64 = w.double().requires_grad_()
    r = ref.cosine_cross_entropy(x.double(), w64, t, 7.0, adj.double(), reduction, 0.1)
    if shape[0]:
        (rw,) = torch.autograd.grad(r, (w64,))
    else:  # no rows: mean is NaN (as torch), the gradient zero
        rw = torch.zeros_like(w64)
    assert loss.shape == () and gw.shape == w.shape
    assert loss.dtype == dtype and gw.dtype == dtype
    assert not loss.requires_grad and not gw.requires_grad
    close(loss, r.detach(), dtype)
    close(gw, rw, dtype)


def test_cross_entropy_and_grad_w_checks_like_the_loss():
    x, w, t = make(7, 5, 13, grad=False)
    with pytest.raises(ValueError, match="'mean' or 'sum'"):
        ops.cosine_cross_entropy_and_grad_w(x, w, t, 7.0, reduction="none")
    with pytest.raises(ValueError, match="reduction"):
        ops.cosine_cross_entropy_and_grad_w(x, w, t, 7.0, reduction="avg")
    bad = x.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="x"):
        ops.cosine_cross_entropy_and_grad_w(bad, w, t, 7.0)
    with pytest.raises(ValueError, match="target"):
        ops.cosine_cross_entropy_and_grad_w(x, w, t + 5, 7.0)


# ------------------------------------------------------- rows=: the batch x[rows] read in place
# (N store rows, M batch rows, C, d): odd sizes, an empty batch, repeated and unsorted indices
ROWS_SHAPES = [(40, 17, 5, 13), (9, 9, 1, 3), (30, 0, 4, 6), (300, 129, 17, 31)]


def make_rows(n, m, gen_seed=0):
    g = torch.Generator().manual_seed(gen_seed)
    rows = torch.randint(0, n, (m,), generator=g)
    if m > 2:
        rows[1] = rows[0]  # a repeated row: its gradient in x is summed
    return rows


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("check_inputs", [True, False], ids=["checked", "unchecked"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("shape", ROWS_SHAPES, ids=str)
def test_rows_equal_the_gathered_batch_against_the_reference(shape, dtype, check_inputs, backend):
    need(backend)
    n, m, C, d = shape
    x, w, _ = make(n, C, d, dtype=dtype, zero_rows=True, grad=False)
    rows = make_rows(n, m)
    t = torch.randint(0, C, (m,))
    adj = torch.randn(C, dtype=dtype)
    # the float64 reference on the gathered batch
    w64 = w.double().requires_grad_()
    r = ref.cosine_cross_entropy(x.double()[rows], w64, t, 7.0, adj.double(), "sum", 0.1)
    (rw,) = torch.autograd.grad(r, (w64,)) if m else (torch.zeros_like(w64),)
    loss, gw = ops.cosine_cross_entropy_and_grad_w(
        x, w, t, 7.0, adj, "sum", 0.1, backend=backend, check_inputs=check_inputs, rows=rows)
    close(loss, r.detach(), dtype)
    close(gw, rw, dtype)
    # bitwise the kernel's result on the batch gathered first
    loss_g, gw_g = ops.cosine_cross_entropy_and_grad_w(
        x[rows], w, t, 7.0, adj, "sum", 0.1, backend=backend, check_inputs=check_inputs)
    assert torch.equal(loss, loss_g) and torch.equal(gw, gw_g)
    # through autograd: x's gradient is the batch's, scattered (summed at repeated rows)
    for red in ("mean", "none"):
        xr, wr = x.clone().requires_grad_(), w.clone().requires_grad_()
        out = dfzsl_fast.cosine_cross_entropy(xr, wr, t, 7.0, adj, red, 0.1, backend=backend,
                                              check_inputs=check_inputs, rows=rows)
        x64, w64 = x.double().requires_grad_(), w.double().requires_grad_()
        r = ref.cosine_cross_entropy(x64[rows], w64, t, 7.0, adj.double(), red, 0.1)
        assert out.shape == r.shape
        if not m:
            continue
        g = torch.randn(r.shape, dtype=torch.float64)
        gx, gw = torch.autograd.grad(out, (xr, wr), g.to(dtype))
        rgx, rgw = torch.autograd.grad(r, (x64, w64), g)
        assert gx.shape == x.shape
        close(gx, rgx, dtype)
        close(gw, rgw, dtype)


@pytest.mark.parametrize("backend", BACKENDS)
def test_rows_repeated_backward_and_the_recomputed_gradient(backend):
    """retain_graph: the second backward recomputes (the backward op on x[rows]) and scatters;
    a forward without precomputed gradients (compute_grad=False) takes the same path."""
    need(backend)
    x, w, _ = make(30, 6, 9)
    rows = make_rows(30, 11)
    t = torch.randint(0, 6, (11,))
    loss = dfzsl_fast.cosine_cross_entropy(x, w, t, 5.0, backend=backend, rows=rows,
                                           check_inputs=False)
    first = torch.autograd.grad(loss, (x, w), retain_graph=True)
    second = torch.autograd.grad(2 * loss, (x, w))
    x64, w64 = x.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    expect = torch.autograd.grad(ref.cosine_cross_entropy(x64[rows], w64, t, 5.0), (x64, w64))
    for a, b, e in zip(first, second, expect, strict=True):
        close(a, e, torch.float64)
        close(b, 2 * e, torch.float64)
    out = torch.ops.dfzsl_fast.cosine_cross_entropy(x, w, t, None, 5.0, 1e-12, 0.0, 1, False,
                                                    True, rows)[0]
    for a, e in zip(torch.autograd.grad(out, (x, w)), expect, strict=True):
        close(a, e, torch.float64)


def test_rows_contract_holds_under_fake_tensors():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        x, w = torch.empty(30, 9), torch.empty(6, 9)
        t = torch.empty(11, dtype=torch.int64)
        ce = torch.ops.dfzsl_fast.cosine_cross_entropy
        loss, lse, gx, gw = ce(x, w, t, None, 5.0, 1e-12, 0.0, 0, True, True,
                               torch.empty(11, dtype=torch.int64))
        assert loss.shape == (11,) and lse.shape == (11,)
        loss, lse, gx, gw = ce(x, w, t, None, 5.0, 1e-12, 0.0, 1, True, True,
                               torch.empty(11, dtype=torch.int64))
        assert loss.shape == () and gx.shape == (11, 9) and gw.shape == (6, 9)
        with pytest.raises(RuntimeError, match="rows must be an"):
            ce(x, w, t, None, 5.0, 1e-12, 0.0, 1, True, True, torch.empty(11, dtype=torch.int32))
    with pytest.raises(RuntimeError, match="rows must be on x's device"):
        torch.ops.dfzsl_fast.cosine_cross_entropy(
            torch.randn(30, 9), torch.randn(6, 9), torch.zeros(11, dtype=torch.int64), None,
            5.0, 1e-12, 0.0, 1, True, True, torch.empty(11, dtype=torch.int64, device="meta"))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_rows_of_a_half_x_are_gathered_then_converted(dtype):
    need("native")
    x, w, t = make(50, 7, 19, dtype=dtype, grad=False)
    rows = make_rows(50, 23)
    t = torch.randint(0, 7, (23,))
    loss, gw = ops.cosine_cross_entropy_and_grad_w(x, w, t, 5.0, check_inputs=False, rows=rows)
    loss_g, gw_g = ops.cosine_cross_entropy_and_grad_w(x[rows], w, t, 5.0, check_inputs=False)
    assert torch.equal(loss, loss_g) and torch.equal(gw, gw_g)


def test_rows_of_a_strided_x():
    x, w, _ = make(40, 5, 13, grad=False)
    xs = x.t().contiguous().t()  # column-major: not contiguous, same values
    assert not xs.is_contiguous()
    rows = make_rows(40, 17)
    t = torch.randint(0, 5, (17,))
    a = ops.cosine_cross_entropy_and_grad_w(xs, w, t, 7.0, check_inputs=False, rows=rows)
    b = ops.cosine_cross_entropy_and_grad_w(x[rows], w, t, 7.0, check_inputs=False)
    for u, v in zip(a, b, strict=True):
        torch.testing.assert_close(u, v, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("tile_rows", ["", "1", "5"])
def test_native_rows_tiling_and_threads_do_not_change_results(monkeypatch, tile_rows):
    need("native")
    x, w, _ = make(500, 11, 7, grad=False)
    rows = make_rows(500, 203)
    t = torch.randint(0, 11, (203,))
    adj = torch.randn(11, dtype=torch.float64)
    ce = torch.ops.dfzsl_fast.cosine_cross_entropy

    def run():
        return [*ce(x, w, t, adj, 4.0, 1e-12, 0.1, 1, True, True, rows),
                *ce(x, w, t, adj, 4.0, 1e-12, 0.1, 0, False, False, rows)[:2]]

    gathered = [*ce(x[rows], w, t, adj, 4.0, 1e-12, 0.1, 1, True, True),
                *ce(x[rows], w, t, adj, 4.0, 1e-12, 0.1, 0, False, False)[:2]]
    for a, b in zip(run(), gathered, strict=True):
        assert torch.equal(a, b)
    assert_same_at_other_tilings(monkeypatch, tile_rows, run, gathered)


@pytest.mark.parametrize("N", [0, 13])
def test_opcheck_native_rows(N):
    need("native")
    x, w, _ = make(20, 5, 7, grad=True)
    rows = make_rows(20, N)
    t = torch.randint(0, 5, (N,))
    adj = torch.randn(5, dtype=torch.float64)
    for red in (0, 2):
        for cg in (False, True):
            torch.library.opcheck(torch.ops.dfzsl_fast.cosine_cross_entropy.default,
                                  (x, w, t, adj, 2.0, 1e-12, 0.1, red, cg, True, rows))


def test_rows_bad_inputs():
    x, w, _ = make(10, 5, 13, grad=False)
    t = torch.randint(0, 5, (4,))
    rows = torch.tensor([0, 3, 9, 2])
    for check in (True, False):  # the index is checked either way: it addresses memory
        with pytest.raises(ValueError, match=r"rows: expected row indices of x in \[0, 10\)"):
            ops.cosine_cross_entropy_and_grad_w(x, w, t, 7.0, check_inputs=check,
                                                rows=torch.tensor([0, 3, 10, 2]))
        with pytest.raises(ValueError, match=r"rows: .*got range \[-1, 3\]"):
            dfzsl_fast.cosine_cross_entropy(x, w, t, 7.0, check_inputs=check,
                                            rows=torch.tensor([0, 3, -1, 2]))
    with pytest.raises(TypeError, match="rows: expected dtype torch.int64"):
        ops.cosine_cross_entropy_and_grad_w(x, w, t, 7.0, rows=rows.int())
    with pytest.raises(TypeError, match="rows: expected an int64 tensor"):
        ops.cosine_cross_entropy_and_grad_w(x, w, t, 7.0, rows=[0, 3, 9, 2])
    with pytest.raises(ValueError, match=r"rows: expected shape \(M,\)"):
        ops.cosine_cross_entropy_and_grad_w(x, w, t, 7.0, rows=rows.view(2, 2))
    with pytest.raises(ValueError, match=r"target: expected shape \(4,\)"):
        ops.cosine_cross_entropy_and_grad_w(x, w, torch.randint(0, 5, (10,)), 7.0, rows=rows)
    bad = x.clone()
    bad[3, 0] = float("nan")
    with pytest.raises(ValueError, match=r"x\[rows\]: row 1 contains NaN"):  # the batch's row 1
        ops.cosine_cross_entropy_and_grad_w(bad, w, t, 7.0, rows=rows)
    # a NaN outside the batch is not the batch's concern
    ops.cosine_cross_entropy_and_grad_w(bad, w, t, 7.0, rows=torch.tensor([0, 2, 9, 2]))


def test_native_rows_out_of_range_refused_by_the_op():
    # memory safety without the Python checks: the kernel itself refuses the index
    need("native")
    x, w, _ = make(10, 5, 13, grad=False)
    t = torch.randint(0, 5, (4,))
    for bad in ([0, 3, 10, 2], [0, -1, 1, 2]):
        with pytest.raises(RuntimeError, match=r"expected rows in \[0, 10\)"):
            torch.ops.dfzsl_fast.cosine_cross_entropy(x, w, t, None, 7.0, 1e-12, 0.0, 1, True,
                                                      False, torch.tensor(bad))
