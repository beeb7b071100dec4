"""Property-based tests of the public functions of dfzsl_fast.theory.

Properties: bad input raises ValueError/TypeError naming the argument (never an internal error,
never a silently dropped imaginary part or a boolean read as a number); accepted input gives
finite results in the function's range; kappa_from_prototypes does not depend on row norms.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from dfzsl_fast import theory  # noqa: E402

from ._props import outcome  # noqa: E402

_D = st.one_of(st.integers(-2, 3000), st.sampled_from([2.0, True, "3", None, np.int32(5)]))
_KAPPA = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(0.0, 1e6),
    st.sampled_from([
        True, "1.0", 1 + 2j, None, [1.0, -2.0], [[0.5, 2.0]], np.array([True]),
        torch.tensor([1.0 + 1j]), torch.ones(2, device="meta"), torch.tensor([3.0, 0.0]),
        np.float32(2.0), 1e-320, 1e300, 1e308,
    ]),
)


def _finite(r) -> bool:
    return bool(np.all(np.isfinite(np.asarray(r, dtype=np.float64))))


@given(d=_D, kappa=_KAPPA)
def test_mean_resultant_length_and_variance(d, kappa):
    a = outcome(lambda: theory.vmf_mean_resultant_length(d, kappa), "`d`", "`kappa`")
    v = outcome(lambda: theory.vmf_w_variance(d, kappa), "`d`", "`kappa`")
    assert (a is None) == (v is None)
    if a is not None:
        assert _finite(a) and _finite(v)
        assert np.all((np.asarray(a) >= 0) & (np.asarray(a) <= 1))
        assert np.all(np.asarray(v) >= 0)


@given(r=_KAPPA, d=_D)
def test_estimate_kappa(r, d):
    k = outcome(lambda: theory.estimate_kappa(r, d), "`mean_resultant_length`", "`d`")
    if k is None:
        return
    assert _finite(k) and np.all(np.asarray(k) >= 0)
    rr = np.asarray(np.asarray(r.detach()) if isinstance(r, torch.Tensor) else r, np.float64)
    back = theory.vmf_mean_resultant_length(d, k)
    ok = (np.abs(back - rr) <= 1e-9) | (rr > 1 - 1e-6)  # near 1 the inverse is ill-conditioned
    assert np.all(ok), (rr, k, back)


@given(d=_D, kappa=_KAPPA, w=st.one_of(st.floats(-1.5, 1.5), st.sampled_from([1 + 1j, "0.5"])))
@settings(max_examples=30)
def test_w_density_and_cdf(d, kappa, w):
    cdf = outcome(lambda: theory.vmf_w_cdf(w, d, kappa), "`d`", "`kappa`", "`w`")
    lp = outcome(lambda: theory.vmf_w_logpdf(w, d, kappa), "`d`", "`kappa`", "`w`")
    assert (cdf is None) == (lp is None)
    if cdf is not None:
        assert 0.0 <= cdf <= 1.0
        assert not np.isnan(lp)


@given(d=_D, kappa=_KAPPA)
@settings(max_examples=30)
def test_reference_mode_moments(d, kappa):
    res = outcome(lambda: theory.reference_mode_w_moments(d, kappa), "`d`", "`kappa`")
    if res is not None:
        mean, var = res
        assert _finite([mean, var]) and -1 <= mean <= 1 and var >= 0


@given(
    C=st.integers(0, 5),
    d=st.integers(0, 6),
    exps=st.lists(st.integers(-300, 300), min_size=5, max_size=5),
    multiplier=st.one_of(st.floats(allow_nan=True, allow_infinity=True),
                         st.sampled_from(["2", True, None, 1 + 1j, torch.tensor(2.0)])),
    shared=st.sampled_from([True, False, "no", 1]),
    seed=st.integers(0, 100),
)
def test_kappa_from_prototypes_is_scale_free(C, d, exps, multiplier, shared, seed):
    mu = np.random.default_rng(seed).standard_normal((C, d))
    scaled = mu * np.array([10.0**e for e in exps[:C]])[:, None] if C else mu
    k = outcome(
        lambda: theory.kappa_from_prototypes(scaled, shared=shared, multiplier=multiplier),
        "`mu`", "`multiplier`", "`shared`",
    )
    if k is None:
        return
    assert _finite(k) and np.all(k > 0)
    k_unit = theory.kappa_from_prototypes(mu, shared=shared, multiplier=multiplier)
    np.testing.assert_allclose(k, k_unit, rtol=1e-9)
