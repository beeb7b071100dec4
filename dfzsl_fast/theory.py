"""Exact reference quantities of the von Mises-Fisher (vMF) distribution on S^{d-1}.

Everything here is float64 NumPy/SciPy on the host; PyTorch is only touched to accept tensors as
input (and, in :func:`kappa_from_prototypes`, to return one). These functions are the ground truth
that the samplers are tested against:

- :func:`vmf_mean_resultant_length`: A_d(kappa) = E[mu^T x] = I_{d/2}(kappa) / I_{d/2-1}(kappa).
- :func:`vmf_w_variance`: Var[mu^T x] = A_d'(kappa) = 1 - A^2 - (d-1) A / kappa, computed without
  cancellation.
- :func:`estimate_kappa`: inverse of A_d (Banerjee et al. 2005 start + Newton).
- :func:`kappa_from_prototypes`: DFZSL's concentration rule kappa_c = 36 / theta_c^2.
- :func:`vmf_w_logpdf`, :func:`vmf_w_cdf`: exact marginal of w = mu^T x (for KS tests).
- :func:`reference_mode_w_moments`, :func:`reference_mode_mean_w`: what the biased
  s-vae-pytorch / DFZSL sampler (b switched to (d-1)/(4 kappa) for kappa > 10) really produces.

Numerics of A_d (see ``docs/method.md``, "Numerics: A_d(kappa) and Bessel functions"): never form
the ratio from ``scipy.special.ive`` (it underflows at high order). With nu = d/2 and
r_k = I_k / I_{k-1}, the Gauss continued fraction

    A_d = r_nu = 1 / (2 nu / kappa + 1 / (2 (nu + 1) / kappa + ...))

is the backward recurrence r_k = kappa / (2k + kappa r_{k+1}). It is evaluated backward from an
index K = nu + M, started from Amos's (1974) bound r_K ~ kappa / (K - 1/2 + sqrt(kappa^2 +
(K + 1/2)^2)); a start error is damped by prod r_k^2 and M is chosen (from Amos's upper bound)
so that this product is below e^-50. The same pass carries the complement g_k = 1 - r_k and the
derivative V_k = r_k' (which is the variance):

    g_k = (2k - kappa g_{k+1}) / (2k + kappa (1 - g_{k+1})),
    V_k = (2k - kappa^2 V_{k+1}) / (2k + kappa r_{k+1})^2,

all free of cancellation (every subtraction loses at most a factor 4) and with errors damped by
r_k^2 per step, so 1 - A and Var are accurate to a few ulp in relative terms even where A rounds
to 1 (the closed form 1 - A^2 - (d-1) A / kappa loses ~kappa^2 / d ulp). The forward CF would need
~kappa terms for kappa >> d; the backward pass needs M ~ sqrt(nu^2 + 57 kappa) - nu steps and is
used only for kappa < max(50, 10 nu) (at most ~300 steps), where rounding errors of V, which
accumulate like 1e-16 kappa / nu, stay small. Above that, the asymptotic series
A = sum_n c_n kappa^-n, c_0 = 1, c_n = -((2 nu - n) c_{n-1} + sum_{i=1}^{n-1} c_i c_{n-i}) / 2,
from the Riccati equation A' = 1 - A^2 - (2 nu - 1) A / kappa (coefficients in exact rational
arithmetic, cached per d), converges like (nu / (2 kappa))^n (n / (2 kappa) for n > 2 nu) and
needs at most ~20 terms; 1 - A and A' are summed term by term.

Measured against mpmath (40 digits, ``besseli`` ratio) on d in {2, 3, 4, 5, 16, 64, 511, 512, 768,
4096}, kappa in [1e-6, 1e6] including both sides of the series switch: relative error of A,
1 - A and Var below 3e-15 (``tests/test_theory.py`` asserts 1e-14 for A, 1e-13 for Var).

The w-marginal (:func:`vmf_w_cdf`, :func:`vmf_w_logpdf`) and the reference-sampler moments are
computed by composite Gauss-Legendre quadrature in an angle variable where the integrand is smooth
(no endpoint singularities for any d >= 2); measured absolute CDF error against 30-digit mpmath
quadrature: <= 1e-15 for d <= 512, 7e-15 at d = 768 and 4e-14 at d = 4096 with kappa = 1e6 (the
rounding of arccos w itself, times the density).
"""

from __future__ import annotations

import math
import numbers
from fractions import Fraction
from functools import lru_cache
from typing import Any

import numpy as np

__all__ = [
    "estimate_kappa",
    "kappa_from_prototypes",
    "reference_mode_mean_w",
    "reference_mode_w_moments",
    "vmf_mean_resultant_length",
    "vmf_w_cdf",
    "vmf_w_logpdf",
    "vmf_w_variance",
]

# Damping target of the backward recurrence: start errors are multiplied by <= exp(-_DAMPING).
_DAMPING = 50.0
# Lower bound of asinh(s)/s on (0, 1] (asinh(1) = 0.8813...), used to bound the step count.
_ASINH1 = 0.88
# Log-density drop that delimits the integration range of the quadratures (e^-60 ~ 1e-26).
_LOG_DROP = 60.0
# Gauss-Legendre order of the composite quadratures.
_GL_ORDER = 20
# Angles below this (radians) between two normalised prototypes count as coincident.
_COINCIDENT_ANGLE = 1e-10
# The asymptotic series replaces the recurrence for
# kappa >= max(_SERIES_MIN_KAPPA, _SERIES_NU_FACTOR * nu).
_SERIES_MIN_KAPPA = 50.0
_SERIES_NU_FACTOR = 10.0
_SERIES_MAX_TERMS = 60


# --------------------------------------------------------------------------------------------
# input handling
# --------------------------------------------------------------------------------------------


def _is_torch_tensor(x: Any) -> bool:
    return type(x).__module__.split(".")[0] == "torch" and hasattr(x, "detach")


def _to_float64(x: Any, name: str) -> tuple[np.ndarray, bool]:
    """Converts a real scalar, array-like or torch tensor to float64; returns (array, is_scalar).

    Complex, boolean, string and meta-tensor inputs are a TypeError naming the argument (NumPy
    would silently drop an imaginary part or read True as 1).
    """
    if _is_torch_tensor(x):
        if x.device.type == "meta":
            raise TypeError(f"`{name}` is a meta tensor, which has no values")
        if x.is_complex() or x.dtype == _torch_bool():
            raise TypeError(f"`{name}` must be real numbers, got a {x.dtype} tensor")
        x = x.detach().to("cpu").double().numpy()
    if isinstance(x, (str, bytes)):
        raise TypeError(f"`{name}` must be a real number or an array of real numbers, got {x!r}")
    try:
        raw = np.asarray(x)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"`{name}` must be a real number or an array of real numbers") from exc
    if raw.dtype.kind in "cbUSV" or (
        raw.dtype.kind == "O"
        and any(isinstance(v, (complex, bool, np.bool_, str, bytes)) for v in raw.reshape(-1))
    ):
        raise TypeError(
            f"`{name}` must be real numbers, got dtype {raw.dtype} (complex, bool and strings "
            "are not accepted)"
        )
    try:
        arr = np.asarray(raw, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"`{name}` must be a real number or an array of real numbers") from exc
    return arr, arr.ndim == 0


def _torch_bool() -> Any:
    import torch

    return torch.bool


def _check_d(d: Any) -> int:
    if isinstance(d, (bool, np.bool_)) or not isinstance(d, (int, np.integer)):
        raise ValueError(f"`d` must be an int >= 2 (the ambient dimension), got {d!r}")
    if d < 2:
        raise ValueError(f"`d` must be an int >= 2 (the ambient dimension), got {d}")
    return int(d)


def _check_kappa(kappa: Any) -> tuple[np.ndarray, bool]:
    arr, scalar = _to_float64(kappa, "kappa")
    if not np.all(np.isfinite(arr)) or np.any(arr < 0):
        raise ValueError("`kappa` must be finite and >= 0")
    return arr, scalar


#: Largest kappa of the functions that take one scalar kappa (the w density, its CDF and the
#: reference-sampler moments): far beyond any sampler's use (w = 1 to float64 precision from
#: kappa ~ 1e17 on), and small enough that their intermediate terms stay finite.
KAPPA_MAX = 1e300


def _check_scalar_kappa(kappa: Any) -> float:
    arr, scalar = _check_kappa(kappa)
    if not scalar:
        raise ValueError("`kappa` must be a scalar here")
    if float(arr) > KAPPA_MAX:
        raise ValueError(f"`kappa` must be <= {KAPPA_MAX:g} here, got {float(arr)!r}")
    return float(arr)


def _out(arr: np.ndarray, scalar: bool) -> float | np.ndarray:
    return float(arr) if scalar else np.asarray(arr, dtype=np.float64)


# --------------------------------------------------------------------------------------------
# A_d(kappa), 1 - A_d(kappa) and A_d'(kappa)
# --------------------------------------------------------------------------------------------


@lru_cache(maxsize=64)
def _series_coefficients(d: int, n_terms: int) -> tuple[float, ...]:
    """c_1..c_n of A_d(kappa) ~ 1 + sum_n c_n kappa^-n (exact rationals rounded to float64)."""
    two_nu = Fraction(d)
    c = [Fraction(1)]
    for n in range(1, n_terms + 1):
        conv = sum((c[i] * c[n - i] for i in range(1, n)), Fraction(0))
        c.append(-((two_nu - n) * c[n - 1] + conv) / 2)
    return tuple(float(v) for v in c[1:])


def _series_agv(d: int, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Large-kappa asymptotic series for (A, 1 - A, A'); used for x >= max(50, 10 nu)."""
    coef = _series_coefficients(d, _SERIES_MAX_TERMS)
    inv = 1.0 / x
    g = np.zeros_like(x)  # 1 - A = -sum c_n x^-n
    v = np.zeros_like(x)  # A' = -sum n c_n x^-(n+1)
    p = inv.copy()
    for n, cn in enumerate(coef, start=1):
        tg = cn * p
        g -= tg
        v -= n * tg * inv
        if np.all(np.abs(tg) <= 1e-18 * np.abs(g)):
            break
        p = p * inv
    return 1.0 - g, g, v


def _recurrence_steps(d: int, x: np.ndarray) -> int:
    """Number M of backward steps so that prod_{k=nu}^{nu+M-1} r_k^2 <= exp(-_DAMPING).

    Uses Amos's bound -log r_k >= asinh((k - 1/2)/x): each step with (k - 1/2)/x >= 1 contributes
    >= 2 * 0.88; while (k - 1/2)/x <= 1 the sum is >= 0.88 ((K-1)^2 - (nu-1)^2) / x.
    """
    xmax = float(np.max(x)) if x.size else 0.0
    if xmax <= 0.0:
        return 1
    nu = 0.5 * d
    xs = x[x > 0]
    with np.errstate(over="ignore"):  # subnormal x: the ratio is inf, the step count 0
        lin = _DAMPING / (2.0 * np.arcsinh((nu - 0.5) / xs))
    quad = np.sqrt((nu - 1.0) ** 2 + _DAMPING * xs / _ASINH1) - (nu - 1.0) + _DAMPING / 1.76 + 1.0
    return int(math.ceil(float(np.max(np.minimum(lin, quad))))) + 1


def _recurrence_agv(d: int, x: Any, steps: int) -> tuple[Any, Any, Any]:
    """Backward recurrence (float or ndarray x >= 0) for (A, 1 - A, A'); see the module doc."""
    two_k = float(d + 2 * (steps + 1))  # start index K = nu + steps + 1
    a = 0.5 * two_k - 0.5
    b = 0.5 * two_k + 0.5
    s = (x * x + b * b) ** 0.5
    den = a + s
    r = x / den
    g = (a + b * b / (s + x)) / den  # 1 - r, with s - x = b^2 / (s + x)
    v = (a + b * b / s) / (den * den)  # derivative of the start approximation
    for j in range(steps, -1, -1):
        two_k = float(d + 2 * j)
        den = two_k + x * r
        # g's denominator is written with g itself so that its error is damped by r_k^2 too
        r, g, v = (
            x / den,
            (two_k - x * g) / (two_k + x * (1.0 - g)),
            (two_k - x * x * v) / (den * den),
        )
    return r, g, v


def _agv(d: int, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(A_d(x), 1 - A_d(x), A_d'(x)) in float64 for a float64 array x >= 0 (no validation)."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 0:
        # scalar fast path: the recurrence in Python floats
        xv = float(x)
        if xv >= max(_SERIES_MIN_KAPPA, _SERIES_NU_FACTOR * 0.5 * d):
            a_, g_, v_ = _series_agv(d, np.array([xv]))
            return a_[0], g_[0], v_[0]
        steps = _recurrence_steps(d, np.array([xv]))
        a_, g_, v_ = _recurrence_agv(d, xv, steps)
        return np.float64(a_), np.float64(g_), np.float64(v_)
    a_out = np.empty_like(x)
    g_out = np.empty_like(x)
    v_out = np.empty_like(x)
    big = x >= max(_SERIES_MIN_KAPPA, _SERIES_NU_FACTOR * 0.5 * d)
    if np.any(big):
        a_out[big], g_out[big], v_out[big] = _series_agv(d, x[big])
    small = ~big
    if np.any(small):
        xs = x[small]
        a_out[small], g_out[small], v_out[small] = _recurrence_agv(d, xs, _recurrence_steps(d, xs))
    return a_out, g_out, v_out


def vmf_mean_resultant_length(d: int, kappa: Any) -> float | np.ndarray:
    """Mean resultant length A_d(kappa) = E[mu^T x] = I_{d/2}(kappa) / I_{d/2-1}(kappa).

    Evaluated in float64 by the backward Gauss continued fraction (kappa < max(50, 5 d)) or the
    large-kappa asymptotic series (above); relative error < 3e-15 against mpmath for
    2 <= d <= 4096, 1e-6 <= kappa <= 1e6. Exactly 0 at kappa = 0.

    Args:
        d: ambient dimension (int >= 2); the sphere is S^{d-1}.
        kappa: concentration(s) >= 0, finite: Python scalar, NumPy array or torch tensor (any
            shape; moved to the CPU as float64).

    Returns:
        float for a scalar ``kappa``, else a float64 ndarray of ``kappa``'s shape.

    Raises:
        ValueError: ``d`` is not an int >= 2, or ``kappa`` is negative or not finite.

    Differentiable: no (NumPy). d/dkappa A_d is :func:`vmf_w_variance`.

    Example:
        >>> round(vmf_mean_resultant_length(512, 100.0), 9)
        0.188404764
    """
    d = _check_d(d)
    x, scalar = _check_kappa(kappa)
    return _out(_agv(d, x)[0], scalar)


def vmf_w_variance(d: int, kappa: Any) -> float | np.ndarray:
    """Var[mu^T x] = A_d'(kappa) = 1 - A^2 - (d-1) A / kappa for x ~ vMF(mu, kappa) on S^{d-1}.

    The closed form cancels catastrophically for kappa >> d (the result ~ (d-1)/(2 kappa^2) is a
    difference of O(1) terms: relative error ~ 1e-16 kappa^2 / d). It is computed instead as the
    derivative carried through the backward recurrence / asymptotic series (see the module
    docstring): relative error < 3e-15 for 2 <= d <= 4096, kappa <= 1e6. At kappa = 0 it is the
    limit 1/d. Use it for z-tests of sample means: z = (mean_w - A) / sqrt(var / n).

    Args:
        d: ambient dimension (int >= 2).
        kappa: concentration(s) >= 0, finite: scalar, ndarray or torch tensor.

    Returns:
        float for a scalar ``kappa``, else a float64 ndarray of ``kappa``'s shape.

    Raises:
        ValueError: invalid ``d`` or ``kappa``.

    Example:
        >>> vmf_w_variance(3, 0.0) == 1 / 3
        True
    """
    d = _check_d(d)
    x, scalar = _check_kappa(kappa)
    return _out(_agv(d, x)[2], scalar)


def estimate_kappa(mean_resultant_length: Any, d: int) -> float | np.ndarray:
    """Inverts A_d: the kappa with A_d(kappa) = R (maximum-likelihood kappa of a vMF sample).

    Starts from Banerjee et al. (2005), kappa0 = R (d - R^2) / (1 - R^2), then Newton steps
    kappa <- kappa - (A_d(kappa) - R) / A_d'(kappa) (Sra 2012) until the relative change is below
    1e-12. For R > 1/2 the residual is formed as (1 - R) - (1 - A_d(kappa)), both exact or
    accurate, so kappa stays accurate up to R = 1 - 1e-12 (relative error ~ 1e-16 / (1 - R) is
    the conditioning of the problem itself).

    Args:
        mean_resultant_length: R in [0, 1): scalar, ndarray or torch tensor (vectorised).
        d: ambient dimension (int >= 2).

    Returns:
        float for scalar input, else a float64 ndarray of R's shape. R = 0 gives 0.

    Raises:
        ValueError: R outside [0, 1) or not finite (named ``mean_resultant_length``); bad ``d``.

    Example:
        >>> round(estimate_kappa(vmf_mean_resultant_length(512, 100.0), 512), 9)
        100.0
    """
    d = _check_d(d)
    r, scalar = _to_float64(mean_resultant_length, "mean_resultant_length")
    if not np.all(np.isfinite(r)) or np.any(r < 0) or np.any(r >= 1):
        raise ValueError("`mean_resultant_length` must be finite and in [0, 1)")
    shape = r.shape
    r = r.reshape(-1)
    out = np.zeros_like(r)
    pos = r > 0
    if np.any(pos):
        rr = r[pos]
        one_minus = 1.0 - rr  # exact for rr >= 1/2 (Sterbenz)
        k = rr * (d - rr * rr) / (one_minus * (1.0 + rr))
        active = np.ones(k.shape, dtype=bool)
        for _ in range(100):
            ka = k[active]
            a_, g_, v_ = _agv(d, ka)
            ra = rr[active]
            resid = np.where(ra > 0.5, one_minus[active] - g_, a_ - ra)
            k_new = ka - resid / v_
            k_new = np.where(k_new > 0, k_new, 0.5 * ka)
            done = np.abs(k_new - ka) <= 1e-12 * k_new
            k[active] = k_new
            idx = np.flatnonzero(active)
            active[idx[done]] = False
            if not np.any(active):
                break
        out[pos] = k
    return _out(out.reshape(shape), scalar)


# --------------------------------------------------------------------------------------------
# DFZSL kappa rule
# --------------------------------------------------------------------------------------------


def kappa_from_prototypes(
    mu: Any, rule: str = "dfzsl", shared: bool = True, multiplier: float = 1.0
) -> Any:
    """DFZSL's concentration rule from class prototypes (``get_seen_concentration``).

    With mu_c normalised, theta_c = min_{j != c} arccos(mu_c . mu_j) is the angle to the nearest
    other prototype; rule "dfzsl" puts neighbours 6 sigma apart: sigma_c = theta_c / 6,
    kappa_c = 1 / sigma_c^2 = 36 / theta_c^2. The published code uses one shared kappa, the maximum
    over classes (``shared=True``); ``shared=False`` keeps kappa_c per class (only meaningful
    with an exact sampler: the biased reference sampler flips classes with kappa_c < (d-1)/4).
    The result is multiplied by ``multiplier`` (DFZSL's ``vdm.theta``, 1.0 by default).
    Angles are computed in float64 as 2 atan2(|a - b|, |a + b|), equal to arccos(a . b) but
    accurate for nearly parallel prototypes.

    Args:
        mu: (C, d) float array or torch tensor of class prototypes (any norm), C >= 2.
        rule: only ``"dfzsl"``.
        shared: return max_c kappa_c for every class (reference behaviour) or per-class values.
        multiplier: positive finite factor applied to kappa.

    Returns:
        (C,) float64: a torch tensor on ``mu``'s device if ``mu`` is a tensor, else an ndarray.

    Raises:
        ValueError: bad shape, C < 2, a zero or non-finite row (its index is named), two
            coincident directions (angle < 1e-10 rad; both rows named), unknown ``rule`` or bad
            ``multiplier``.

    Example:
        >>> kappa_from_prototypes(np.eye(3), shared=False)  # theta = pi/2 -> 144/pi^2
        array([14.59025044, 14.59025044, 14.59025044])
    """
    if not isinstance(rule, str) or rule != "dfzsl":
        raise ValueError(f"unknown `rule` {rule!r}; supported: 'dfzsl'")
    if not isinstance(shared, (bool, np.bool_)):
        raise TypeError(f"`shared` must be True or False, got {shared!r}")
    if _is_torch_tensor(multiplier) and multiplier.numel() == 1 and not multiplier.is_complex():
        multiplier = multiplier.item()
    if isinstance(multiplier, (bool, np.bool_)) or not isinstance(multiplier, numbers.Real):
        raise TypeError(
            f"`multiplier` must be a real number, got {type(multiplier).__name__} {multiplier!r}"
        )
    mult = float(multiplier)
    if not math.isfinite(mult) or mult <= 0:
        raise ValueError(f"`multiplier` must be finite and > 0, got {multiplier!r}")
    is_torch = _is_torch_tensor(mu)
    device = mu.device if is_torch else None
    m, _ = _to_float64(mu, "mu")
    if m.ndim != 2:
        raise ValueError(f"`mu` must be a (C, d) matrix, got shape {m.shape}")
    c, dim = m.shape
    if c < 2:
        raise ValueError(f"`mu` needs at least 2 prototypes (C >= 2), got C = {c}")
    if dim < 1:
        raise ValueError("`mu` must have at least one column")
    finite = np.all(np.isfinite(m), axis=1)
    if not np.all(finite):
        i = int(np.flatnonzero(~finite)[0])
        raise ValueError(f"`mu` row {i} is not finite")
    # scale-safe normalisation: divide each row by its largest |entry| first, so that rows of
    # norm 1e200 or 1e-200 neither overflow nor underflow (and are not misread as zero)
    amax = np.max(np.abs(m), axis=1) if dim else np.zeros(c)
    if np.any(amax == 0):
        i = int(np.flatnonzero(amax == 0)[0])
        raise ValueError(f"`mu` row {i} is zero and cannot be normalised")
    m = m / amax[:, None]
    norms = np.linalg.norm(m, axis=1)
    u = m / norms[:, None]
    cos = np.clip(u @ u.T, -1.0, 1.0)
    np.fill_diagonal(cos, -np.inf)
    nn = np.argmax(cos, axis=1)  # nearest other prototype (largest cosine)
    diff = np.linalg.norm(u - u[nn], axis=1)
    summ = np.linalg.norm(u + u[nn], axis=1)
    theta = 2.0 * np.arctan2(diff, summ)
    if np.any(theta < _COINCIDENT_ANGLE):
        i = int(np.flatnonzero(theta < _COINCIDENT_ANGLE)[0])
        j = int(nn[i])
        a, b = min(i, j), max(i, j)
        raise ValueError(
            f"`mu` rows {a} and {b} point in the same direction (angle {theta[i]:.3g} rad): "
            "kappa = 36/theta^2 is undefined"
        )
    kappa = 36.0 / (theta * theta)
    if shared:
        kappa = np.full(c, np.max(kappa))
    kappa = kappa * mult
    if is_torch:
        import torch

        return torch.as_tensor(kappa, dtype=torch.float64, device=device)
    return kappa


# --------------------------------------------------------------------------------------------
# composite Gauss-Legendre machinery
# --------------------------------------------------------------------------------------------

_GL_X, _GL_W = np.polynomial.legendre.leggauss(_GL_ORDER)


def _panels(lo: float, hi: float, width: float, extra: tuple[float, ...] = ()) -> np.ndarray:
    """Breakpoints covering [lo, hi] with panels no wider than ``width``, plus ``extra`` points."""
    n = int(min(max(math.ceil((hi - lo) / width), 1), 20000))
    pts = np.linspace(lo, hi, n + 1)
    if extra:
        pts = np.union1d(pts, [p for p in extra if lo < p < hi])
    return pts


def _integrate_segments(fun: Any, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Gauss-Legendre integral of the vectorised ``fun`` over each [a_i, b_i]."""
    half = 0.5 * (b - a)
    nodes = (0.5 * (a + b))[..., None] + half[..., None] * _GL_X
    return half * (fun(nodes) @ _GL_W)


def _bisect(fun: Any, lo: float, hi: float, iters: int = 2200) -> float:
    """Root of a monotone ``fun`` with fun(lo), fun(hi) of opposite signs."""
    flo = fun(lo) > 0
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        if mid in (lo, hi):
            break
        if (fun(mid) > 0) == flo:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


# --------------------------------------------------------------------------------------------
# marginal of w = mu^T x: density and CDF
# --------------------------------------------------------------------------------------------


def _theta_logdens(d: int, kappa: float, theta: np.ndarray) -> np.ndarray:
    """log of exp(kappa (cos theta - 1)) sin^{d-2} theta (the angle density, unnormalised)."""
    s = np.sin(0.5 * theta)
    out = -2.0 * kappa * s * s
    if d > 2:
        with np.errstate(divide="ignore"):
            out = out + (d - 2) * np.log(np.sin(theta))
    return out


class _AngleMesh:
    """Composite quadrature of the angle density on [0, pi], shifted by its maximum."""

    def __init__(self, d: int, kappa: float) -> None:
        self.d, self.kappa = d, kappa
        m2 = float(d - 2)
        # mode: kappa sin^2 t = (d-2) cos t  ->  c = cos(mode)
        if kappa == 0.0 and d == 2:
            mode, width = 0.0, math.inf
        else:
            root = math.hypot(m2, 2.0 * kappa)
            c = 2.0 * kappa / (m2 + root)
            one_minus_c = (m2 + m2 * m2 / (root + 2.0 * kappa)) / (m2 + root)
            mode = 2.0 * math.asin(math.sqrt(0.5 * one_minus_c))
            sin_mode = math.sin(mode)
            curv = kappa * c + (m2 / (sin_mode * sin_mode) if m2 > 0 else 0.0)
            width = 1.0 / math.sqrt(curv) if curv > 0 else math.inf
        self.shift = float(_theta_logdens(d, kappa, np.array(mode)))

        def drop(t: float) -> float:
            return float(_theta_logdens(d, kappa, np.array(t))) - self.shift + _LOG_DROP

        lo = 0.0 if (d == 2 or drop(0.0) >= 0) else _bisect(drop, 0.0, mode)
        hi = math.pi if drop(math.pi) >= 0 else _bisect(drop, mode, math.pi)
        h = min(0.5 * width, (hi - lo) / 16.0)
        self.breaks = _panels(lo, hi, h)
        a, b = self.breaks[:-1], self.breaks[1:]
        pan = _integrate_segments(self._dens, a, b)
        self.panel_mass = pan
        self.total = float(np.sum(pan))
        self.cum_left = np.concatenate([[0.0], np.cumsum(pan)])  # mass of [lo, breaks[i]]
        self.cum_right = np.concatenate([np.cumsum(pan[::-1])[::-1], [0.0]])  # [breaks[i], hi]

    def _dens(self, theta: np.ndarray) -> np.ndarray:
        return np.exp(_theta_logdens(self.d, self.kappa, theta) - self.shift)

    def masses(self, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(mass of [0, theta], mass of [theta, pi]) for angles in [0, pi] (unnormalised)."""
        br = self.breaks
        t = np.clip(theta, br[0], br[-1])
        i = np.clip(np.searchsorted(br, t, side="right") - 1, 0, len(br) - 2)
        # integrate over the shorter part of the query's panel, the rest is panel mass minus it
        a, b = br[i], br[i + 1]
        use_left = (t - a) <= (b - t)
        part = _integrate_segments(self._dens, np.where(use_left, a, t), np.where(use_left, t, b))
        pm = self.panel_mass[i]
        part_left = np.where(use_left, part, np.maximum(pm - part, 0.0))
        part_right = np.where(use_left, np.maximum(pm - part, 0.0), part)
        left = self.cum_left[i] + part_left
        right = self.cum_right[i + 1] + part_right
        left = np.where(theta < br[0], 0.0, np.where(theta > br[-1], self.total, left))
        right = np.where(theta < br[0], self.total, np.where(theta > br[-1], 0.0, right))
        return left, right


@lru_cache(maxsize=128)
def _angle_mesh(d: int, kappa: float) -> _AngleMesh:
    return _AngleMesh(d, kappa)


def _w_to_theta(w: np.ndarray) -> np.ndarray:
    """arccos(w) for w in [-1, 1], accurate near both ends."""
    wc = np.clip(w, -1.0, 1.0)
    up = 2.0 * np.arcsin(np.sqrt(0.5 * (1.0 - wc)))
    down = np.pi - 2.0 * np.arcsin(np.sqrt(0.5 * (1.0 + wc)))
    return np.where(wc >= 0, up, down)


def vmf_w_logpdf(w: Any, d: int, kappa: Any) -> float | np.ndarray:
    """Log density of w = mu^T x for x ~ vMF(mu, kappa) on S^{d-1}.

    f(w) = exp(kappa w) (1 - w^2)^((d-3)/2) / Z on [-1, 1] (-inf outside; at w = +-1 it is -inf
    for d > 3, finite for d = 3 and +inf for d = 2). The normaliser is computed by composite
    Gauss-Legendre quadrature in the angle theta = arccos w, where the density
    exp(kappa cos theta) sin^{d-2} theta is smooth (relative accuracy ~1e-14).

    Args:
        w: cosine(s) mu^T x: scalar, ndarray or torch tensor (vectorised).
        d: ambient dimension (int >= 2).
        kappa: scalar concentration >= 0.

    Returns:
        float for scalar ``w``, else a float64 ndarray of ``w``'s shape (NaN where w is NaN).

    Raises:
        ValueError: invalid ``d`` or ``kappa``.

    Example:
        >>> round(float(np.exp(vmf_w_logpdf(0.0, 3, 0.0))), 12)  # uniform on [-1, 1] for d = 3
        0.5
    """
    d = _check_d(d)
    kappa = _check_scalar_kappa(kappa)
    wa, scalar = _to_float64(w, "w")
    mesh = _angle_mesh(d, kappa)
    alpha = 0.5 * (d - 3)
    log_norm = mesh.shift + math.log(mesh.total)  # log of int e^{kappa(w-1)} (1-w^2)^alpha dw
    with np.errstate(divide="ignore", invalid="ignore"):
        one_m = 1.0 - wa
        one_p = 1.0 + wa
        if alpha == 0.0:
            alg = np.zeros_like(wa)
        else:
            alg = alpha * (np.log(one_m) + np.log(one_p))
        out = -kappa * one_m + alg - log_norm
    out = np.where(np.abs(wa) > 1.0, -np.inf, out)
    out = np.where(np.isnan(wa), np.nan, out)
    return _out(out, scalar)


def vmf_w_cdf(w: Any, d: int, kappa: Any) -> float | np.ndarray:
    """CDF P(mu^T x <= w) for x ~ vMF(mu, kappa) on S^{d-1} (for Kolmogorov-Smirnov tests).

    F(w) = int_{arccos w}^{pi} e^{kappa cos t} sin^{d-2} t dt / int_0^pi (same), by composite
    20-point Gauss-Legendre quadrature in the angle t (smooth integrand for every d >= 2, no
    endpoint singularity) on panels of half the density's width at its mode, over the range
    where the log density is within 60 of its maximum; queries add one Gauss-Legendre rule on
    their partial panel. Both tails are accumulated from their own end, so F is accurate to
    ~1e-14 absolute (and relative in the lower tail), e.g. also at d = 768, kappa = 1e6 where all
    mass lies within 1e-3 of w = 1. Mesh and panel sums are cached per (d, kappa); a call costs
    about 2 us per point (1e5 points: ~0.2 s).

    Args:
        w: cosine(s): scalar, ndarray or torch tensor (vectorised; values outside [-1, 1]
            give 0 or 1).
        d: ambient dimension (int >= 2).
        kappa: scalar concentration >= 0.

    Returns:
        float for scalar ``w``, else a float64 ndarray of ``w``'s shape (NaN where w is NaN).

    Raises:
        ValueError: invalid ``d`` or ``kappa``.

    Example:
        >>> round(vmf_w_cdf(0.0, 512, 0.0), 12)
        0.5
    """
    d = _check_d(d)
    kappa = _check_scalar_kappa(kappa)
    wa, scalar = _to_float64(w, "w")
    mesh = _angle_mesh(d, kappa)
    flat = wa.reshape(-1)
    nan = np.isnan(flat)
    theta = _w_to_theta(np.where(nan, 0.0, flat))
    left, right = mesh.masses(theta)
    z = mesh.total
    cdf = np.where(right <= 0.5 * z, right / z, 1.0 - left / z)
    cdf = np.clip(cdf, 0.0, 1.0)
    cdf = np.where(flat >= 1.0, 1.0, np.where(flat <= -1.0, 0.0, cdf))
    cdf = np.where(nan, np.nan, cdf).reshape(wa.shape)
    return _out(cdf, scalar)


# --------------------------------------------------------------------------------------------
# the biased s-vae-pytorch / DFZSL sampler
# --------------------------------------------------------------------------------------------


def _reference_b(m: float, kappa: float) -> float:
    """s-vae/DFZSL envelope: b = s b_app + (1 - s) b_true, s = clip(kappa - 10, 0, 1)."""
    b_true = m / (2.0 * kappa + math.hypot(2.0 * kappa, m))
    s = min(max(kappa - 10.0, 0.0), 1.0)
    if s == 0.0:
        return b_true
    b_app = m / (4.0 * kappa)
    return s * b_app + (1.0 - s) * b_true


def reference_mode_w_moments(d: int, kappa: float) -> tuple[float, float]:
    """Exact (E[w], Var[w]) of the w = mu^T x produced by the s-vae-pytorch / DFZSL sampler.

    That sampler runs Wood's rejection scheme in the Davidson et al. (2018) log form with m = d-1,
    a = (m + 2 kappa + sqrt(4 kappa^2 + m^2)) / 4, delta = 4ab/(1+b) - m log m, proposal
    z ~ Beta(m/2, m/2), w = (1 - (1+b) z) / (1 - (1-b) z), t = 2ab / (1 - (1-b) z), accepted with
    probability min(1, exp(m log t - t + delta)), but with the envelope parameter
    b = s (m / (4 kappa)) + (1 - s) b_true, s = clip(kappa - 10, 0, 1), b_true = m / (2 kappa +
    sqrt(4 kappa^2 + m^2)). For kappa <= 10 this is Wood's exact sampler (E[w] = A_d(kappa));
    above, b is too large for kappa << d^2 and the samples are not vMF. The accepted density of z
    is p_Beta(z) min(1, ...); both moments are ratios of integrals computed by composite
    Gauss-Legendre quadrature in beta = 2 arcsin(sqrt z) (Beta weight ~ sin^{m-1} beta: smooth,
    no endpoint singularity), split at the kinks of min(1, .). Relative accuracy ~1e-12.

    Reference values (docs/performance.md, section 1), reproduced to 6 digits by the tests:
    d = 512: kappa = 100 -> E[w] = -0.121610, kappa = 1000 -> 0.772834; d = 768, kappa = 100 ->
    -0.314112 (exact A_d: 0.188405, 0.776531, 0.128078).

    Args:
        d: ambient dimension (int >= 2).
        kappa: scalar concentration >= 0.

    Returns:
        (mean, variance) of w as Python floats.

    Raises:
        ValueError: invalid ``d`` or ``kappa``.

    Example:
        >>> round(reference_mode_w_moments(512, 100.0)[0], 6)
        -0.12161
    """
    return _reference_moments(_check_d(d), _check_scalar_kappa(kappa))


@lru_cache(maxsize=128)
def _reference_moments(d: int, kappa: float) -> tuple[float, float]:
    m = float(d - 1)
    b = _reference_b(m, kappa)
    a = (m + 2.0 * kappa + math.hypot(2.0 * kappa, m)) / 4.0
    delta = 4.0 * a * b / (1.0 + b) - m * math.log(m)

    def log_ratio_t(t: Any) -> Any:
        return m * np.log(t) - t + delta

    # kinks of min(1, exp(G(t))): G is concave in t with its maximum at t = m
    kinks: list[float] = []
    if log_ratio_t(m) > 0 and b != 1.0:
        lo = m
        while log_ratio_t(lo) > 0:
            lo *= 0.5
        hi = m
        while log_ratio_t(hi) > 0:
            hi *= 2.0
        for t_root in (_bisect(log_ratio_t, lo, m), _bisect(log_ratio_t, m, hi)):
            z = (1.0 - 2.0 * a * b / t_root) / (1.0 - b)
            if 0.0 < z < 1.0:
                kinks.append(2.0 * math.asin(math.sqrt(z)))

    def parts(beta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        half = 0.5 * beta
        z = np.sin(half) ** 2
        zc = np.cos(half) ** 2  # 1 - z
        den = 1.0 - (1.0 - b) * z
        w = (zc - b * z) / den
        log_acc = np.minimum(0.0, log_ratio_t(2.0 * a * b / den))
        with np.errstate(divide="ignore"):
            log_beta = (m - 1.0) * np.log(np.sin(beta)) if m > 1 else 0.0 * beta
        return w, np.exp(log_beta + log_acc)

    # Beta weight sin^{m-1}(beta): mode pi/2, width 1/sqrt(m-1); keep where log drop <= 60
    if m > 1:
        half_range = min(math.pi / 2, math.acos(math.exp(-_LOG_DROP / (m - 1))) + 1e-3)
        lo, hi = math.pi / 2 - half_range, math.pi / 2 + half_range
        width = 1.0 / math.sqrt(m - 1.0)
    else:
        lo, hi, width = 0.0, math.pi, math.inf
    lo, hi = max(lo, 0.0), min(hi, math.pi)
    pts = _panels(lo, hi, min(0.25 * width, (hi - lo) / 32.0), tuple(kinks))
    a_, b_ = pts[:-1], pts[1:]
    mass = float(np.sum(_integrate_segments(lambda x: parts(x)[1], a_, b_)))
    mean = float(np.sum(_integrate_segments(lambda x: np.prod(parts(x), axis=0), a_, b_))) / mass

    def centred_sq(x: np.ndarray) -> np.ndarray:
        w, q = parts(x)
        return (w - mean) ** 2 * q

    var = float(np.sum(_integrate_segments(centred_sq, a_, b_))) / mass
    return mean, var


def reference_mode_mean_w(d: int, kappa: float) -> float:
    """E[mu^T x] of the biased s-vae-pytorch / DFZSL sampler; see :func:`reference_mode_w_moments`.

    Args:
        d: ambient dimension (int >= 2).
        kappa: scalar concentration >= 0.

    Returns:
        The mean as a Python float (e.g. -0.121610 at d = 512, kappa = 100, where the exact vMF
        mean is 0.188405).

    Raises:
        ValueError: invalid ``d`` or ``kappa``.

    Example:
        >>> round(reference_mode_mean_w(768, 100.0), 6)
        -0.314112
    """
    return reference_mode_w_moments(d, kappa)[0]
