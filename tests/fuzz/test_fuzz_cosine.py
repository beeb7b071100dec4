"""Property-based tests of the cosine entry points: `cosine_logits`, `cosine_cross_entropy`,
`cosine_topk`, `cosine_logit_mse` and `nn.CosineClassifier` (constructor, extend, from_linear,
forward).

Properties: bad input raises ValueError/TypeError naming the argument (never an internal error);
accepted input matches the float64 reference (dfzsl_fast/reference/cosine.py on the same values)
and is finite; finite input is never rejected for its magnitude.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import dfzsl_fast  # noqa: E402
from dfzsl_fast import testing  # noqa: E402
from dfzsl_fast.nn import CosineClassifier  # noqa: E402
from dfzsl_fast.reference import cosine as ref  # noqa: E402

from ._props import outcome  # noqa: E402

CPU = torch.device("cpu")
BACKENDS = [b for b in testing.available_backends(CPU, "cosine_logits") if b != "triton"]
TOL = {torch.float32: 2e-5, torch.float64: 1e-11}

pytestmark = pytest.mark.usefixtures("one_thread")


@st.composite
def matrix(draw, rows, d, dtype, special=True):
    base = draw(
        st.lists(st.floats(-1.0, 1.0, allow_nan=False, width=32), min_size=rows * d,
                 max_size=rows * d)
    )
    t = torch.tensor(base, dtype=torch.float64).reshape(rows, d)
    if rows:
        exps = draw(st.lists(st.one_of(st.integers(-40, 40), st.sampled_from([-30, 20, 30])),
                             min_size=rows, max_size=rows))
        t = t * torch.tensor([10.0**e for e in exps], dtype=torch.float64).unsqueeze(1)
    if special and rows and d:
        kind = draw(st.sampled_from([None, None, "zero", "nan", "inf"]))
        r, c = draw(st.integers(0, rows - 1)), draw(st.integers(0, d - 1))
        if kind == "zero":
            t[r] = 0.0
        elif kind is not None:
            t[r, c] = float("nan") if kind == "nan" else float("-inf")
    return t.to(dtype)


@st.composite
def problem(draw, special=True):
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    N, C, d = draw(st.integers(0, 6)), draw(st.integers(1, 6)), draw(st.integers(0, 9))
    x = draw(matrix(N, d, dtype, special))
    w = draw(matrix(C, d, dtype, special))
    return x, w


_SCALES = st.one_of(
    st.floats(-100.0, 100.0),
    st.builds(lambda e, s: s * 10.0**e, st.integers(-3, 308), st.sampled_from([1.0, -1.0])),
    st.sampled_from([float("inf"), float("nan"), 3e38, 1e39, 1.7e308]),
)


def _finite(*ts) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in ts)


def _ref_logits(x, w, scale):
    return ref.cosine_logits(x.double(), w.double(), scale)


def _close(out, expected, dtype, scale):
    tol = TOL[dtype] * max(1.0, abs(scale))
    assert bool(torch.isfinite(out).all()), "non-finite output from finite input"
    err = (out.double() - expected).abs().max().item() if out.numel() else 0.0
    assert err <= tol, (err, tol)


@pytest.mark.parametrize("backend", BACKENDS)
@given(p=problem(), scale=_SCALES)
def test_logits(backend, p, scale):
    x, w = p
    out = outcome(lambda: dfzsl_fast.cosine_logits(x, w, scale, backend=backend), "x", "w",
                  "scale")
    if out is None:
        return
    assert _finite(x, w), "NaN/Inf input accepted"
    assert out.shape == (x.shape[0], w.shape[0]) and out.dtype == x.dtype
    _close(out, _ref_logits(x, w, scale), x.dtype, scale)


@pytest.mark.parametrize("backend", BACKENDS)
@given(
    p=problem(),
    scale=_SCALES,
    data=st.data(),
    reduction=st.sampled_from(["mean", "sum", "none", "avg", None]),
    ls=st.one_of(st.floats(0.0, 1.0), st.sampled_from([-0.1, 1.5, float("nan")])),
)
def test_cross_entropy(backend, p, scale, data, reduction, ls):
    x, w = p
    N, C = x.shape[0], w.shape[0]
    target = torch.tensor(data.draw(st.lists(st.integers(-1, C), min_size=N, max_size=N)),
                          dtype=torch.int64)
    adj_kind = data.draw(st.sampled_from([None, "finite", "nan", "inf", "int"]))
    adj = None
    if adj_kind is not None:
        adj = torch.randn(C, dtype=x.dtype)
        if adj_kind == "nan":
            adj[0] = float("nan")
        elif adj_kind == "inf":
            adj[0] = float("inf")
        elif adj_kind == "int":
            adj = adj.long()
    loss = outcome(
        lambda: dfzsl_fast.cosine_cross_entropy(x, w, target, scale, adj, reduction, ls,
                                                backend=backend),
        "x", "w", "target", "scale", "reduction", "label_smoothing", "logit_adjustment",
    )
    if loss is None:
        return
    assert _finite(x, w) and (adj is None or _finite(adj)), "NaN/Inf input accepted"
    assert N == 0 or (int(target.min()) >= 0 and int(target.max()) < C)
    z = _ref_logits(x, w, scale)
    if adj is not None:
        z = z + adj.double()
    expected = F.cross_entropy(z, target, reduction=reduction, label_smoothing=ls)
    if N == 0 and reduction == "mean":
        assert bool(torch.isnan(loss))  # torch's mean of no rows
        return
    _close(loss, expected, x.dtype, abs(scale) * (N if reduction == "sum" else 1) * 3)


@pytest.mark.parametrize("backend", BACKENDS)
@given(p=problem(), scale=_SCALES, k=st.one_of(st.integers(-1, 8), st.sampled_from([True, 2.0])))
def test_topk(backend, p, scale, k):
    x, w = p
    res = outcome(lambda: dfzsl_fast.cosine_topk(x, w, k, scale, backend=backend), "x", "w",
                  "scale", "k")
    if res is None:
        return
    assert _finite(x, w) and isinstance(k, int) and 1 <= k <= w.shape[0]
    scores, idx = res
    expected = torch.topk(_ref_logits(x, w, scale), k, dim=1).values
    _close(scores, expected, x.dtype, scale)
    assert idx.dtype == torch.int64 and bool(((idx >= 0) & (idx < w.shape[0])).all())


@pytest.mark.parametrize("backend", BACKENDS)
@given(p=problem(), s1=_SCALES, s2=_SCALES, data=st.data())
def test_logit_mse(backend, p, s1, s2, data):
    x, w = p
    wt = data.draw(matrix(w.shape[0], w.shape[1], w.dtype))
    loss = outcome(lambda: dfzsl_fast.cosine_logit_mse(x, w, wt, s1, s2, backend=backend), "x",
                   "w_student", "w_teacher", "scale_s", "scale_t")
    if loss is None:
        return
    assert _finite(x, w, wt)
    expected = ref.cosine_logit_mse(x.double(), w.double(), wt.double(), s1, s2)
    if x.shape[0] == 0:
        assert bool(torch.isnan(loss))
        return
    _close(loss, expected, x.dtype, (abs(s1) + abs(s2)) ** 2)


_BAD_TENSORS = st.sampled_from([
    torch.ones(3, 4, dtype=torch.int64),
    torch.ones(3, 4, dtype=torch.bool),
    torch.ones(3, 4, dtype=torch.complex64),
    torch.ones(3, 4, dtype=torch.float16),
    torch.ones(3, 4, dtype=torch.bfloat16),
    torch.ones(3, 4, dtype=torch.float64),
    torch.ones(4),
    torch.ones(2, 3, 4),
    torch.ones(3, 5),
    torch.ones(0, 4),
    torch.ones(3, 4, device="meta"),
    [[1.0, 2.0, 3.0, 4.0]],
])


@given(which=st.sampled_from(["x", "w"]), bad=_BAD_TENSORS,
       op=st.sampled_from(["logits", "ce", "topk", "mse"]))
def test_wrong_kinds_devices_and_shapes(which, bad, op):
    x, w = torch.randn(2, 4), torch.randn(3, 4)
    if which == "x":
        x = bad
    else:
        w = bad
    t = torch.tensor([0, 2])
    calls = {
        "logits": lambda: dfzsl_fast.cosine_logits(x, w, 2.0),
        "ce": lambda: dfzsl_fast.cosine_cross_entropy(x, w, t, 2.0),
        "topk": lambda: dfzsl_fast.cosine_topk(x, w, 1, 2.0),
        "mse": lambda: dfzsl_fast.cosine_logit_mse(x, w, torch.randn(3, 4), 2.0, 1.0),
    }
    names = ("x", "w", "target") if op != "mse" else ("x", "w_student", "w_teacher")
    out = outcome(calls[op], *names)
    if out is not None:  # only half-precision pairs or a meta pair can be served
        out = out[0] if isinstance(out, tuple) else out
        assert out.dtype == bad.dtype or out.device.type == "meta"


@given(eps=st.one_of(st.floats(allow_nan=True), st.sampled_from([0.0, 1e-30, -1.0, "1e-12"])))
def test_eps(eps):
    x, w = torch.randn(2, 4), torch.randn(3, 4)
    out = outcome(lambda: dfzsl_fast.cosine_logits(x, w, 2.0, eps), "eps")
    if out is not None:
        assert bool(torch.isfinite(out).all())


# ---------------------------------------------------------------------------- CosineClassifier
@given(W=matrix(3, 4, torch.float32), scale=_SCALES, x=matrix(2, 4, torch.float32))
@settings(max_examples=30)
def test_classifier_construct_and_forward(W, scale, x):
    head = outcome(lambda: CosineClassifier(W, scale), "weights", "scale")
    if head is None:
        return
    assert _finite(W), "NaN/Inf weights accepted"
    out = outcome(lambda: head(x), "x")
    if out is not None:
        assert _finite(x)
        _close(out, _ref_logits(x, W, scale), torch.float32, scale)


@given(new=st.one_of(matrix(2, 4, torch.float64), _BAD_TENSORS,
                     st.just(torch.full((1, 4), 1e300, dtype=torch.float64))))
@settings(max_examples=30)
def test_classifier_extend(new):
    head = CosineClassifier(torch.randn(3, 4), 4.0)
    res = outcome(lambda: head.extend(new), "new_weights")
    if res is None:
        assert head.num_classes == 3  # unchanged after a rejected extend
        return
    assert head.num_classes == 3 + new.shape[0] and _finite(head.weight)


@given(W=matrix(3, 4, torch.float32), bias=st.sampled_from([None, 0.0, 1.0, float("nan")]),
       scale=st.one_of(st.none(), _SCALES))
@settings(max_examples=30)
def test_classifier_from_linear(W, bias, scale):
    lin = torch.nn.Linear(4, 3, bias=bias is not None)
    with torch.no_grad():
        lin.weight.copy_(W)
        if bias is not None:
            lin.bias.fill_(bias)
    head = outcome(lambda: CosineClassifier.from_linear(lin, scale), "linear", "scale",
                   "weights")
    if head is None:
        return
    assert _finite(W) and bias in (None, 0.0)
    assert math.isfinite(head.scale) and _finite(head.weight)
