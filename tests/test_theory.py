"""Tests of dfzsl_fast.theory: exact vMF reference quantities (CPU, float64, no GPU needed)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import integrate, special, stats

from dfzsl_fast import theory

mp = pytest.importorskip("mpmath")

D_GRID = [2, 3, 4, 64, 512, 768, 4096]
KAPPA_GRID = [1e-6, 1e-3, 1.0, 10.0, 100.0, 1000.0, 1e4, 1e5, 1e6]


def _mp_ratio(d: int, kappa: float, dps: int = 40):
    """A_d(kappa) = I_{d/2}(kappa) / I_{d/2-1}(kappa) with mpmath."""
    with mp.workdps(dps):
        nu = mp.mpf(d) / 2
        x = mp.mpf(kappa)
        return mp.besseli(nu, x) / mp.besseli(nu - 1, x)


# ------------------------------------------------------------------------------------------
# A_d(kappa)
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("d", D_GRID)
def test_mean_resultant_length_matches_mpmath(d):
    got = theory.vmf_mean_resultant_length(d, np.array(KAPPA_GRID))
    for k, a in zip(KAPPA_GRID, got, strict=True):
        ref = _mp_ratio(d, k)
        assert abs(a - float(ref)) <= 1e-14 * float(ref), (d, k, a, ref)
        # scalar path gives the same value as the vectorised path
        assert theory.vmf_mean_resultant_length(d, k) == pytest.approx(a, rel=1e-15, abs=0)


@pytest.mark.parametrize(
    ("d", "expected"),
    [
        (512, [0.001953118, 0.019523834, 0.188404764, 0.776530933, 0.974775103, 0.997448251]),
        (768, [0.001302081, 0.013018632, 0.128077777, 0.687399580, 0.962383248, 0.996172334]),
    ],
)
def test_mean_resultant_length_performance_table(d, expected):
    got = theory.vmf_mean_resultant_length(d, [1.0, 10.0, 100.0, 1e3, 1e4, 1e5])
    np.testing.assert_allclose(got, expected, rtol=0, atol=6e-10)


def test_mean_resultant_length_closed_forms():
    x = np.logspace(-6, 7, 131)
    # d = 2: I1/I0 (scaled Bessel functions are accurate in SciPy at order 0/1)
    np.testing.assert_allclose(
        theory.vmf_mean_resultant_length(2, x), special.i1e(x) / special.i0e(x), rtol=2e-15
    )
    # d = 3: coth(k) - 1/k (Langevin function), evaluated with mpmath to avoid cancellation
    with mp.workdps(40):
        ref3 = [float(mp.coth(mp.mpf(v)) - 1 / mp.mpf(v)) for v in x]
    np.testing.assert_allclose(theory.vmf_mean_resultant_length(3, x), ref3, rtol=2e-15)


def test_mean_resultant_length_zero_scalar_and_shapes():
    assert theory.vmf_mean_resultant_length(512, 0.0) == 0.0
    assert theory.vmf_mean_resultant_length(2, 0) == 0.0
    assert isinstance(theory.vmf_mean_resultant_length(512, 10.0), float)
    out = theory.vmf_mean_resultant_length(512, np.full((2, 3), 100.0))
    assert isinstance(out, np.ndarray) and out.shape == (2, 3) and out.dtype == np.float64
    np.testing.assert_array_equal(out, theory.vmf_mean_resultant_length(512, 100.0))
    # huge kappa stays finite and below 1; monotone in kappa
    k = np.logspace(-6, 12, 200)
    a = theory.vmf_mean_resultant_length(64, k)
    assert np.all(np.diff(a) > 0) and np.all(a < 1)


def test_mean_resultant_length_accepts_torch():
    torch = pytest.importorskip("torch")
    got = theory.vmf_mean_resultant_length(512, torch.tensor([1.0, 100.0], dtype=torch.float32))
    assert isinstance(got, np.ndarray) and got.dtype == np.float64
    np.testing.assert_allclose(got, [0.001953118, 0.188404764], atol=6e-10)
    assert isinstance(theory.vmf_mean_resultant_length(512, torch.tensor(100.0)), float)


@pytest.mark.parametrize("bad_d", [1, 0, -3, 2.0, "512", True, None])
def test_bad_d(bad_d):
    with pytest.raises(ValueError, match="`d`"):
        theory.vmf_mean_resultant_length(bad_d, 1.0)
    with pytest.raises(ValueError, match="`d`"):
        theory.vmf_w_variance(bad_d, 1.0)
    with pytest.raises(ValueError, match="`d`"):
        theory.estimate_kappa(0.5, bad_d)


@pytest.mark.parametrize("bad_kappa", [-1.0, -1e-300, float("nan"), float("inf"), [1.0, -2.0]])
def test_bad_kappa(bad_kappa):
    with pytest.raises(ValueError, match="`kappa`"):
        theory.vmf_mean_resultant_length(512, bad_kappa)
    with pytest.raises(ValueError, match="`kappa`"):
        theory.vmf_w_variance(512, bad_kappa)
    if np.ndim(bad_kappa) == 0:
        with pytest.raises(ValueError, match="`kappa`"):
            theory.vmf_w_cdf(0.0, 512, bad_kappa)
        with pytest.raises(ValueError, match="`kappa`"):
            theory.reference_mode_w_moments(512, bad_kappa)


# ------------------------------------------------------------------------------------------
# Var[w] = A'(kappa)
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("d", [2, 3, 64, 512, 768])
def test_variance_matches_mpmath_derivative(d):
    kappas = [1e-3, 1.0, 10.0, 100.0, 1e3, 1e4, 1e6]
    got = theory.vmf_w_variance(d, np.array(kappas))
    nu = mp.mpf(d) / 2

    def ratio(x):
        return mp.besseli(nu, x) / mp.besseli(nu - 1, x)

    with mp.workdps(40):
        for k, v in zip(kappas, got, strict=True):
            deriv = mp.diff(ratio, mp.mpf(k))
            r = _mp_ratio(d, k)
            closed = 1 - r * r - (d - 1) * r / k  # exact at 40 digits
            assert abs(deriv / closed - 1) < mp.mpf(10) ** -20, (d, k)
            assert abs(v - float(closed)) <= 1e-13 * float(closed), (d, k, v, closed)


def test_variance_limits():
    for d in (2, 3, 512, 4096):
        assert theory.vmf_w_variance(d, 0.0) == pytest.approx(1.0 / d, rel=1e-15)
    # large kappa: Var ~ (d-1) / (2 kappa^2), no cancellation
    k = 1e9
    assert theory.vmf_w_variance(512, k) == pytest.approx(511 / (2 * k * k), rel=1e-6)
    assert theory.vmf_w_variance(3, k) == pytest.approx(1 / (k * k), rel=1e-12)


# ------------------------------------------------------------------------------------------
# estimate_kappa
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("d", [2, 3, 512, 768, 4096])
def test_estimate_kappa_round_trip(d):
    kappas = np.array([1e-6, 1e-3, 1.0, 10.0, 100.0, 1e3, 1e4, 1e5, 1e6])
    r = theory.vmf_mean_resultant_length(d, kappas)
    est = theory.estimate_kappa(r, d)
    assert est.shape == kappas.shape and est.dtype == np.float64
    # conditioning: R carries 1.1e-16 absolute error, 1 - R ~ (d-1) / (2 kappa)
    tol = 1e-12 + 4 * 2.2e-16 * 2 * kappas / (d - 1)
    np.testing.assert_array_less(np.abs(est - kappas) / kappas, tol)


def test_estimate_kappa_scalar_zero_and_shapes():
    assert theory.estimate_kappa(0.0, 512) == 0.0
    k = theory.estimate_kappa(theory.vmf_mean_resultant_length(512, 228.7), 512)
    assert isinstance(k, float) and k == pytest.approx(228.7, rel=1e-12)
    r = theory.vmf_mean_resultant_length(768, np.array([[0.0, 50.0], [500.0, 5000.0]]))
    np.testing.assert_allclose(
        theory.estimate_kappa(r, 768), [[0.0, 50.0], [500.0, 5000.0]], rtol=1e-12
    )


def test_estimate_kappa_banerjee_start_is_close():
    # Banerjee et al. (2005) is within 3e-4 relative for d = 512 over kappa in [1, 1e5]
    for k in (1.0, 100.0, 1e4, 1e5):
        r = theory.vmf_mean_resultant_length(512, k)
        assert r * (512 - r * r) / (1 - r * r) == pytest.approx(k, rel=3e-4)


@pytest.mark.parametrize("bad", [1.0, 1.5, -0.1, float("nan"), [0.2, 1.0]])
def test_estimate_kappa_bad_r(bad):
    with pytest.raises(ValueError, match="`mean_resultant_length`"):
        theory.estimate_kappa(bad, 512)


# ------------------------------------------------------------------------------------------
# kappa_from_prototypes
# ------------------------------------------------------------------------------------------


def _three_prototypes():
    # unit vectors at 0, 30 and 100 degrees, with arbitrary norms
    ang = np.deg2rad([0.0, 30.0, 100.0])
    return np.stack([np.cos(ang), np.sin(ang)], axis=1) * np.array([[1.0], [2.0], [0.5]])


def test_kappa_from_prototypes_hand_computed():
    mu = _three_prototypes()
    k30 = 36.0 / np.deg2rad(30.0) ** 2  # rows 0 and 1: nearest neighbour 30 degrees away
    k70 = 36.0 / np.deg2rad(70.0) ** 2  # row 2: nearest is row 1, 70 degrees away
    per = theory.kappa_from_prototypes(mu, shared=False)
    np.testing.assert_allclose(per, [k30, k30, k70], rtol=1e-13)
    shared = theory.kappa_from_prototypes(mu)
    assert isinstance(shared, np.ndarray) and shared.dtype == np.float64
    np.testing.assert_allclose(shared, [k30, k30, k30], rtol=1e-13)
    np.testing.assert_allclose(
        theory.kappa_from_prototypes(mu, rule="dfzsl", shared=False, multiplier=2.5),
        2.5 * np.array([k30, k30, k70]),
        rtol=1e-13,
    )
    # orthogonal prototypes: theta = pi/2
    np.testing.assert_allclose(theory.kappa_from_prototypes(np.eye(4)), 144 / np.pi**2, rtol=1e-14)
    # antipodal pair: theta = pi
    np.testing.assert_allclose(
        theory.kappa_from_prototypes(np.array([[0.0, 1.0], [0.0, -3.0]])), 36 / np.pi**2
    )


def test_kappa_from_prototypes_small_angle_is_accurate():
    eps = 1e-7
    mu = np.array([[1.0, 0.0, 0.0], [math.cos(eps), math.sin(eps), 0.0], [0.0, 0.0, 1.0]])
    got = theory.kappa_from_prototypes(mu, shared=False)
    assert got[0] == pytest.approx(36 / eps**2, rel=1e-8)


def test_kappa_from_prototypes_torch():
    torch = pytest.importorskip("torch")
    mu = torch.tensor(_three_prototypes(), dtype=torch.float64)
    got = theory.kappa_from_prototypes(mu, shared=False, multiplier=2.0)
    assert isinstance(got, torch.Tensor) and got.dtype == torch.float64
    assert got.device == mu.device and got.shape == (3,)
    np.testing.assert_allclose(
        got.numpy(), 2 * theory.kappa_from_prototypes(_three_prototypes(), shared=False)
    )


def test_kappa_from_prototypes_errors():
    with pytest.raises(ValueError, match="rows 0 and 2"):
        theory.kappa_from_prototypes(np.array([[1.0, 1.0], [0.0, 1.0], [3.0, 3.0]]))
    with pytest.raises(ValueError, match="row 1 is zero"):
        theory.kappa_from_prototypes(np.array([[1.0, 0.0], [0.0, 0.0], [0.0, 1.0]]))
    with pytest.raises(ValueError, match="row 2 is not finite"):
        theory.kappa_from_prototypes(np.array([[1.0, 0.0], [0.0, 1.0], [np.inf, 1.0]]))
    with pytest.raises(ValueError, match="C >= 2"):
        theory.kappa_from_prototypes(np.array([[1.0, 0.0]]))
    with pytest.raises(ValueError, match="C, d"):
        theory.kappa_from_prototypes(np.ones(3))
    with pytest.raises(ValueError, match="rule"):
        theory.kappa_from_prototypes(np.eye(2), rule="per_class")
    with pytest.raises(ValueError, match="multiplier"):
        theory.kappa_from_prototypes(np.eye(2), multiplier=0.0)


# ------------------------------------------------------------------------------------------
# marginal of w: logpdf and CDF
# ------------------------------------------------------------------------------------------


def _w_grid(d, k, n=41):
    a = theory.vmf_mean_resultant_length(d, k)
    sd = math.sqrt(theory.vmf_w_variance(d, k))
    return np.unique(np.clip(a + sd * np.linspace(-8, 8, n), -1 + 1e-12, 1 - 1e-15))


@pytest.mark.parametrize("k", [0.0, 1e-6, 0.5, 10.0, 300.0, 1e6])
def test_cdf_d3_closed_form(k):
    w = np.linspace(-1, 1, 101)
    got = theory.vmf_w_cdf(w, 3, k)
    if k == 0:
        ref = (w + 1) / 2
    elif k < 100:
        ref = special.expm1(k * (w + 1)) / special.expm1(2 * k)
    else:  # expm1(2k) overflows: divide through by e^{2k}
        ref = np.exp(k * (w - 1)) * -special.expm1(-k * (w + 1)) / -special.expm1(-2 * k)
    np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("d", [2, 4, 5, 64, 768])
def test_cdf_kappa_zero_is_beta(d):
    w = np.linspace(-1, 1, 81)
    ref = special.betainc((d - 1) / 2, (d - 1) / 2, (1 + w) / 2)
    np.testing.assert_allclose(theory.vmf_w_cdf(w, d, 0.0), ref, rtol=1e-11, atol=1e-14)


@pytest.mark.parametrize("k", [0.1, 2.0, 10.0])
def test_cdf_d2_von_mises(k):
    # (SciPy's von Mises CDF switches to a ~1e-6 normal approximation for larger kappa)
    w = np.linspace(-0.999, 0.999, 51)
    ref = 2 * stats.vonmises.sf(np.arccos(w), k)  # P(|phi| >= arccos w)
    np.testing.assert_allclose(theory.vmf_w_cdf(w, 2, k), ref, rtol=0, atol=1e-10)


@pytest.mark.parametrize(("d", "k"), [(512, 100.0), (768, 1e3), (768, 1e6), (4096, 1e4)])
def test_cdf_matches_quad_in_t(d, k):
    # independent reference: scipy quad of the log-shifted density in t = 1 - w
    alpha = (d - 3) / 2
    t_mode = alpha / (k + alpha)  # approximate mode, used only for the shift and the split points
    sd = math.sqrt(theory.vmf_w_variance(d, k))

    def logf(t):
        return -k * t + alpha * math.log(t * (2 - t))

    shift = logf(t_mode)

    def f(t):
        return math.exp(logf(t) - shift) if 0 < t < 2 else 0.0

    top = min(2.0, t_mode + 60 * sd)
    pts = [max(t_mode + j * sd, 1e-300) for j in range(-12, 13, 2) if 0 < t_mode + j * sd < top]
    z = integrate.quad(f, 0, top, points=pts, epsabs=0, epsrel=1e-13, limit=500)[0]
    for w in _w_grid(d, k, n=9):
        t = 1 - w
        inner = [p for p in pts if p < t]
        s = integrate.quad(f, 0, t, points=inner or None, epsabs=0, epsrel=1e-13, limit=500)[0]
        assert theory.vmf_w_cdf(w, d, k) == pytest.approx(1 - s / z, abs=1e-9)


@pytest.mark.parametrize(
    ("d", "k"), [(2, 0.0), (2, 3.0), (3, 5.0), (4, 0.0), (512, 100.0), (768, 1e6), (4096, 1e-6)]
)
def test_cdf_monotone_endpoints_and_derivative(d, k):
    assert theory.vmf_w_cdf(-1.0, d, k) == 0.0
    assert theory.vmf_w_cdf(1.0, d, k) == 1.0
    np.testing.assert_array_equal(theory.vmf_w_cdf([-3.0, 3.0], d, k), [0.0, 1.0])
    w = _w_grid(d, k, n=201)
    c = theory.vmf_w_cdf(w, d, k)
    assert np.all(np.diff(c) >= 0)
    assert np.all((c >= 0) & (c <= 1))
    # dF/dw = exp(logpdf), by a central difference well inside (-1, 1)
    sd = math.sqrt(theory.vmf_w_variance(d, k))
    h = 1e-4 * sd
    inner = w[(w - 10 * h > -1) & (w + 10 * h < 1)]
    num = (theory.vmf_w_cdf(inner + h, d, k) - theory.vmf_w_cdf(inner - h, d, k)) / (2 * h)
    pdf = np.exp(theory.vmf_w_logpdf(inner, d, k))
    np.testing.assert_allclose(num, pdf, rtol=0, atol=1e-6 * pdf.max() + 1e-9 / h)


@pytest.mark.parametrize(("d", "k"), [(3, 0.0), (5, 2.0), (64, 10.0), (512, 100.0), (768, 1e5)])
def test_logpdf_normalisation_matches_bessel(d, k):
    # log f(w) = k w + (d-3)/2 log(1-w^2) - log(sqrt(pi) Gamma((d-1)/2) (2/k)^(d/2-1) I_{d/2-1}(k))
    w = _w_grid(d, k, n=5)
    with mp.workdps(30):
        if k == 0:
            log_z = mp.log(mp.beta(mp.mpf(1) / 2, mp.mpf(d - 1) / 2))
        else:
            nu1 = mp.mpf(d) / 2 - 1
            log_z = (
                mp.log(mp.sqrt(mp.pi))
                + mp.loggamma(mp.mpf(d - 1) / 2)
                + nu1 * mp.log(2 / mp.mpf(k))
                + mp.log(mp.besseli(nu1, k))
            )
        ref = [
            float(k * mp.mpf(x) + mp.mpf(d - 3) / 2 * mp.log(1 - mp.mpf(x) ** 2) - log_z) for x in w
        ]
    np.testing.assert_allclose(theory.vmf_w_logpdf(w, d, k), ref, rtol=1e-12, atol=1e-10)


def test_logpdf_edges_and_types():
    assert theory.vmf_w_logpdf(1.5, 512, 10.0) == -np.inf
    assert theory.vmf_w_logpdf(1.0, 512, 10.0) == -np.inf
    assert theory.vmf_w_logpdf(1.0, 2, 10.0) == np.inf
    assert np.isfinite(theory.vmf_w_logpdf(1.0, 3, 10.0))
    assert theory.vmf_w_logpdf(0.0, 3, 0.0) == pytest.approx(math.log(0.5), rel=1e-13)
    assert np.isnan(theory.vmf_w_cdf(np.nan, 5, 1.0))
    out = theory.vmf_w_cdf(np.zeros((2, 3)), 5, 1.0)
    assert out.shape == (2, 3) and out.dtype == np.float64


def test_cdf_ks_against_scipy_sampler():
    sampler = getattr(stats, "vonmises_fisher", None)
    if sampler is None:
        pytest.skip("scipy < 1.11 has no vonmises_fisher")
    d, k = 32, 20.0
    mu = np.zeros(d)
    mu[0] = 1.0
    x = sampler(mu, k).rvs(4000, random_state=np.random.default_rng(0))
    res = stats.kstest(x[:, 0], lambda w: theory.vmf_w_cdf(w, d, k))
    assert res.pvalue > 1e-3


# ------------------------------------------------------------------------------------------
# the biased s-vae / DFZSL reference sampler
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("d", "k", "expected"),
    [
        (512, 11.0, -0.840960),
        (512, 30.0, -0.618904),
        (512, 100.0, -0.121610),
        (512, 300.0, 0.402029),
        (512, 1000.0, 0.772834),
        (512, 3000.0, 0.918319),
        (768, 100.0, -0.314112),
        (768, 1000.0, 0.677727),
    ],
)
def test_reference_mode_table(d, k, expected):
    assert theory.reference_mode_mean_w(d, k) == pytest.approx(expected, abs=1e-5)
    mean, var = theory.reference_mode_w_moments(d, k)
    assert mean == theory.reference_mode_mean_w(d, k)
    assert 0 < var < 1


@pytest.mark.parametrize("d", [2, 3, 16, 512, 768])
@pytest.mark.parametrize("k", [0.0, 1.0, 10.0])
def test_reference_mode_is_exact_up_to_kappa_10(d, k):
    # for kappa <= 10 the s-vae blend uses Wood's b: the sampler is exact
    mean, var = theory.reference_mode_w_moments(d, k)
    assert mean == pytest.approx(theory.vmf_mean_resultant_length(d, k), abs=1e-13)
    assert var == pytest.approx(theory.vmf_w_variance(d, k), rel=1e-11)


def test_reference_mode_high_dim_formula():
    # in high dimension w concentrates near (4k - (d-1)) / (4k + (d-1)) with b = (d-1)/(4k)
    d, k = 4096, 300.0
    approx = (4 * k - (d - 1)) / (4 * k + (d - 1))
    assert theory.reference_mode_mean_w(d, k) == pytest.approx(approx, abs=2e-3)
