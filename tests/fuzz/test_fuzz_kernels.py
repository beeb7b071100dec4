"""Property-based tests of the kernel layer's sampler entry point: `sample_vmf`.

Properties: bad input raises ValueError/TypeError naming the argument (never an internal error);
accepted input gives unit-norm samples (within a dtype-derived tolerance), finite, of the right
shape and dtype; the native and torch backends accept and reject the same inputs. The cosine ops
and the cosine head are in test_fuzz_cosine.py, the theory functions in test_fuzz_theory.py.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import dfzsl_fast  # noqa: E402
from dfzsl_fast import testing  # noqa: E402

from ._props import outcome, unit_tolerance  # noqa: E402

CPU = torch.device("cpu")
BACKENDS = [b for b in testing.available_backends(CPU, "vmf_sample") if b != "triton"]
FLOATS = (torch.float32, torch.float64)

pytestmark = pytest.mark.usefixtures("one_thread")


def _check_samples(x, y, n, d, dtype):
    assert x.shape == (n, d) and y.shape == (n,) and x.dtype == dtype
    assert bool(torch.isfinite(x).all()), "non-finite sample from finite input"
    if n:
        err = (x.double().norm(dim=1) - 1).abs().max().item()
        assert err <= unit_tolerance(dtype), err  # the output dtype rounds the unit rows


# ------------------------------------------------------------------------- mu of any magnitude
@st.composite
def mu_rows(draw):
    dtype = draw(st.sampled_from(FLOATS))
    C = draw(st.integers(1, 4))
    d = draw(st.integers(2, 12))
    base = draw(
        st.lists(
            st.floats(-1.0, 1.0, allow_nan=False, width=32), min_size=C * d, max_size=C * d
        )
    )
    # float32 squares overflow from |entry| ~ 2e19 and underflow below ~1e-19
    exps = draw(st.lists(st.one_of(st.integers(-45, 45), st.sampled_from([-30, 20, 30])),
                         min_size=C, max_size=C))
    mu = torch.tensor(base, dtype=torch.float64).reshape(C, d)
    mu = mu * torch.tensor([10.0**e for e in exps], dtype=torch.float64).unsqueeze(1)
    special = draw(st.sampled_from([None, "zero", "nan", "inf"]))
    if special is not None:
        r, c = draw(st.integers(0, C - 1)), draw(st.integers(0, d - 1))
        if special == "zero":
            mu[r] = 0.0
        else:
            mu[r, c] = float("nan") if special == "nan" else float("inf")
    return mu.to(dtype)  # float32: 1e45 becomes inf, 1e-45 a subnormal or 0


@pytest.mark.parametrize("backend", BACKENDS)
@given(
    mu=mu_rows(),
    kappa=st.one_of(st.floats(0.0, 1e7), st.sampled_from([5e-324, 1e-300, 1e300, 1.7e308])),
    n=st.integers(0, 40),
    seed=st.integers(0, 2**64),
)
def test_sample_unit_norm_any_magnitude(backend, mu, kappa, n, seed):
    res = outcome(
        lambda: dfzsl_fast.sample_vmf(mu, kappa, n_per_class=n, seed=seed, backend=backend), "mu"
    )
    finite_nonzero = bool(torch.isfinite(mu).all()) and bool((mu != 0).any(dim=1).all())
    if res is None:
        assert not finite_nonzero, "finite nonzero mu rejected"
        return
    assert finite_nonzero, "NaN/Inf/zero row of mu accepted"
    x, y = res
    _check_samples(x, y, mu.shape[0] * n, mu.shape[1], mu.dtype)


@pytest.mark.parametrize("backend", BACKENDS)
@given(kappa=st.floats(0.0, 1e6), seed=st.integers(0, 2**63 - 1))
@settings(max_examples=12)
def test_sample_d2_float32_on_the_circle(backend, kappa, seed):
    # d = 2 in float32: the projection of g off mu must not leave samples off the unit circle
    mu = torch.randn(8, 2, generator=torch.Generator().manual_seed(seed % 1000))
    x, y = dfzsl_fast.sample_vmf(mu, kappa, n_per_class=1000, seed=seed, backend=backend)
    _check_samples(x, y, 8000, 2, torch.float32)


# ------------------------------------------------------------------------------- the arguments
_ODD = st.one_of(
    st.none(),
    st.booleans(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-(2**65), 2**65),
    st.text(max_size=3),
    st.just([1, 2]),
    st.just(torch.tensor([1.0 + 1j, 2.0])),
    st.just(np.int64(3)),
    st.just(torch.ones(2, device="meta")),
)


@given(
    offset=st.one_of(st.integers(-5, 5), st.integers(2**63 - 50, 2**63 + 5), _ODD),
    n=st.integers(0, 20),
)
def test_offset_range_is_the_same_on_every_backend(offset, n):
    mu = torch.randn(2, 5)
    got = [
        outcome(
            lambda b=b: dfzsl_fast.sample_vmf(mu, 3.0, n_per_class=n, seed=1, offset=offset,
                                              backend=b),
            "offset",
        )
        is not None
        for b in BACKENDS
    ]
    assert len(set(got)) == 1, f"backends disagree on offset={offset!r}: {got}"
    valid = (
        isinstance(offset, (int, np.integer))
        and not isinstance(offset, bool)
        and 0 <= offset <= 2**63 - 2 * n
    )
    assert got[0] == valid, (offset, n)


@given(
    which=st.sampled_from(["kappa", "n_per_class", "labels", "seed", "dtype", "out", "wood_b",
                           "backend", "generator", "check_inputs"]),
    value=st.one_of(
        _ODD,
        st.just("float32"),
        st.just(torch.int32),
        st.just(torch.complex64),
        st.just(torch.float16),
        st.just(10**15),
        st.just(2**62),
        st.just(torch.zeros(4, 5, dtype=torch.int64)),
        st.just(torch.zeros(4, 5)),
        st.just(torch.zeros(4, 5, requires_grad=True)),
        st.just(torch.tensor([0, 1, 2])),
        st.just(torch.tensor([-1, 0])),
        st.just(torch.tensor([[0, 1]])),
        st.just(torch.tensor([1.5, 2.0])),
        st.just(torch.tensor([2, 2])),
        st.just(torch.tensor([3.0, -1.0])),
        st.just(torch.tensor([float("nan"), 1.0])),
    ),
    backend=st.sampled_from(BACKENDS),
)
def test_arguments_are_checked(which, value, backend):
    mu = torch.randn(2, 5)
    kwargs = {"n_per_class": 2, "seed": 0, "backend": backend}
    kappa = 4.0
    if which == "kappa":
        kappa = value
    elif which == "labels":
        kwargs.pop("n_per_class")
        kwargs["labels"] = value
    else:
        kwargs[which] = value
    names = (which, "n_per_class and labels") if which in ("labels", "n_per_class") else (which,)
    res = outcome(lambda: dfzsl_fast.sample_vmf(mu, kappa, **kwargs), *names)
    if res is not None:
        x, y = res
        dtype = kwargs.get("dtype") or (
            kwargs["out"].dtype if kwargs.get("out") is not None else mu.dtype
        )
        _check_samples(x, y, y.numel(), 5, dtype)
        if which == "out" and value is not None:
            assert x is value


@given(
    shape=st.sampled_from([(3,), (2, 1), (2, 0), (0, 4), (2, 3, 4), ()]),
    dtype=st.sampled_from([torch.int64, torch.bool, torch.complex64, torch.float16,
                           torch.bfloat16, torch.float32]),
)
def test_mu_shapes_and_dtypes(shape, dtype):
    mu = torch.ones(shape, dtype=dtype)
    res = outcome(lambda: dfzsl_fast.sample_vmf(mu, 1.0, n_per_class=3, seed=0), "mu")
    if res is not None:
        x, y = res
        assert len(shape) == 2 and shape[1] >= 2 and dtype.is_floating_point
        _check_samples(x, y, shape[0] * 3, shape[1], dtype)


@given(C=st.integers(0, 3), d=st.integers(2, 6), n=st.integers(0, 5))
@settings(max_examples=10)
def test_meta_mu_gives_shapes(C, d, n):
    mu = torch.empty(C, d, device="meta")
    x, y = dfzsl_fast.sample_vmf(mu, 2.0, n_per_class=n, seed=0)
    assert x.device.type == "meta" and x.shape == (C * n, d) and y.shape == (C * n,)


def test_huge_counts_are_clear_errors():
    mu = torch.randn(3, 8)
    for kw in ({"n_per_class": 10**15}, {"n_per_class": [10**15, 0, 1]}):
        with pytest.raises(ValueError, match="n_per_class"):
            dfzsl_fast.sample_vmf(mu, 1.0, seed=0, **kw)
    assert math.isfinite(float(dfzsl_fast.sample_vmf(mu, 1.0, n_per_class=1, seed=0)[0].sum()))
