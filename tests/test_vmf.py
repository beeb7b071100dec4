"""Statistical and functional tests of dfzsl_fast.sample_vmf on the CPU backends.

Every statistical check compares against exact theory (dfzsl_fast.theory): the mean of w = mu^T x
against A_d(kappa) with the exact variance, a Kolmogorov-Smirnov test of w against its exact
marginal, isotropy of the tangent part against the uniform distribution on the sphere orthogonal
to mu. Thresholds are fixed multiples of the standard error (|z| < 5: a false alarm probability of
6e-7 per check), never tuned to the output; seeds are fixed so runs are repeatable.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats
import torch

import dfzsl_fast
from dfzsl_fast import testing, theory
from dfzsl_fast.ops.vmf import vmf_backward
from dfzsl_fast.reference import vmf as ref

CPU = torch.device("cpu")
BACKENDS = ["native", "torch"]
Z_MAX = 5.0
DS = [3, 64, 512, 768]
KAPPAS = [0.0, 1e-3, 1.0, 10.0, 100.0, 1000.0, 1e4, 1e6]


def _unit(v: torch.Tensor) -> torch.Tensor:
    return v / v.norm(dim=-1, keepdim=True)


def _w_of(x, mu, y):
    return (x.double() * _unit(mu.double())[y]).sum(1)


def _n_for(backend: str, d: int) -> int:
    # Enough samples for a sharp test, small enough for the reference on 2 cores.
    return (
        (20000 if backend == "native" else 6000)
        if d <= 512
        else (12000 if backend == "native" else 4000)
    )


# ------------------------------------------------------------------------------ mean resultant
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("d", DS)
@pytest.mark.parametrize("kappa", KAPPAS)
def test_mean_cosine_matches_theory(backend, d, kappa):
    testing.skip_unless_available(backend, CPU)
    n = _n_for(backend, d)
    mu = torch.randn(4, d)
    x, y = dfzsl_fast.sample_vmf(mu, kappa, n_per_class=n // 4, seed=11, backend=backend)
    assert x.shape == (n, d) and x.dtype == torch.float32
    w = _w_of(x, mu, y)
    z = testing.mean_w_zscore(w, d, kappa)
    assert abs(z) < Z_MAX, (
        f"mean w {float(w.mean())} vs A_d = {theory.vmf_mean_resultant_length(d, kappa)} "
        f"(z = {z:.2f})"
    )
    assert (x.double().norm(dim=1) - 1).abs().max() < 1e-5


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("d", [3, 512])
def test_per_class_kappa_mixture(backend, d):
    testing.skip_unless_available(backend, CPU)
    kappas = torch.tensor([0.0, 1.0, 30.0, 100.0, 700.0, 5000.0, 1e5], dtype=torch.float64)
    C = kappas.numel()
    per = 3000 if backend == "native" else 800
    mu = torch.randn(C, d, dtype=torch.float64)
    # labels in a shuffled order: each row must use its own class's mu and kappa
    labels = torch.arange(C).repeat_interleave(per)[torch.randperm(C * per)]
    x, y = dfzsl_fast.sample_vmf(mu, kappas, labels=labels, seed=5, backend=backend)
    assert torch.equal(y, labels) and x.dtype == torch.float64
    w = _w_of(x, mu, y)
    for c in range(C):
        z = testing.mean_w_zscore(w[y == c], d, float(kappas[c]))
        assert abs(z) < Z_MAX, (c, float(kappas[c]), z)
    assert (x.norm(dim=1) - 1).abs().max() < 1e-12


# ------------------------------------------------------------------------- marginal and isotropy
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "d,kappa", [(3, 2.0), (64, 50.0), (512, 100.0), (512, 1000.0), (768, 1e4), (512, 1e6)]
)
def test_w_marginal_ks(backend, d, kappa):
    testing.skip_unless_available(backend, CPU)
    n = 8000 if backend == "native" else 3000
    mu = torch.randn(1, d)
    x, y = dfzsl_fast.sample_vmf(
        mu, kappa, n_per_class=n, seed=3, backend=backend, dtype=torch.float64
    )
    w = _w_of(x, mu, y).numpy()
    res = scipy.stats.kstest(w, lambda t: theory.vmf_w_cdf(t, d, kappa))
    assert res.pvalue > 1e-4, f"KS p = {res.pvalue:.2e}, D = {res.statistic:.4f}"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("d,kappa", [(3, 1.0), (64, 100.0), (512, 1000.0)])
def test_tangent_isotropy(backend, d, kappa):
    testing.skip_unless_available(backend, CPU)
    n = 20000 if backend == "native" else 5000
    mu = _unit(torch.randn(1, d, dtype=torch.float64))
    x, y = dfzsl_fast.sample_vmf(
        mu, kappa, n_per_class=n, seed=9, backend=backend, dtype=torch.float64
    )
    w = (x @ mu[0]).unsqueeze(1)
    v = x - w * mu
    v = v / v.norm(dim=1, keepdim=True)
    k = d - 1  # v is uniform on the unit sphere S^{k-1} of the tangent space
    assert (v @ mu[0]).abs().max() < 1e-10
    # first moment: n k |mean v|^2 ~ chi2(k)
    stat = float(n * k * v.mean(0).pow(2).sum())
    p = scipy.stats.chi2.sf(stat, k)
    assert 1e-6 < p < 1 - 1e-6, (stat, k, p)
    # second moment along fixed tangent directions: E[(v.a)^2] = 1/k, Var = 3/(k(k+2)) - 1/k^2
    a = torch.randn(5, d, dtype=torch.float64)
    a = _unit(a - (a @ mu[0]).unsqueeze(1) * mu)
    proj2 = (v @ a.T).pow(2)
    var = 3.0 / (k * (k + 2)) - 1.0 / k**2
    z = (proj2.mean(0) - 1.0 / k) / math.sqrt(var / n)
    assert z.abs().max() < Z_MAX, z


# ------------------------------------------------------------------------------- special means
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("which", ["+e1", "-e1", "near e1"])
def test_axis_means(backend, which):
    testing.skip_unless_available(backend, CPU)
    d, kappa, n = 64, 200.0, 6000
    mu = torch.zeros(1, d, dtype=torch.float64)
    mu[0, 0] = -1.0 if which == "-e1" else 1.0
    if which == "near e1":
        mu[0, 1] = 1e-9
    x, y = dfzsl_fast.sample_vmf(mu, kappa, n_per_class=n, seed=2, backend=backend)
    assert torch.isfinite(x).all()
    z = testing.mean_w_zscore(_w_of(x, mu, y), d, kappa)
    assert abs(z) < Z_MAX


# ------------------------------------------------------------------------------ reference mode
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kappa", [100.0, 1000.0])
def test_reference_mode_reproduces_published_bias(backend, kappa):
    testing.skip_unless_available(backend, CPU)
    d = 512
    n = 20000 if backend == "native" else 6000
    mu = torch.randn(2, d)
    x, y = dfzsl_fast.sample_vmf(
        mu, kappa, n_per_class=n // 2, seed=4, backend=backend, wood_b="reference"
    )
    w = _w_of(x, mu, y)
    mean, var = theory.reference_mode_w_moments(d, kappa)
    z = (float(w.mean()) - mean) / math.sqrt(var / n)
    assert abs(z) < Z_MAX, (float(w.mean()), mean, z)
    # ... which is the documented approximation, and far from the vMF value
    approx = (4 * kappa - (d - 1)) / (4 * kappa + (d - 1))
    assert abs(float(w.mean()) - approx) < 3e-3
    # the bias is 0.0037 at kappa = 1000 and 0.31 at 100: many standard errors either way
    assert abs(testing.mean_w_zscore(w, d, kappa)) > 10


def test_reference_mode_equals_exact_for_small_kappa():
    # below kappa = 10 the published b equals Wood's, so the modes share their distribution
    testing.skip_unless_available("native", CPU)
    mu = torch.randn(1, 512)
    a, _ = dfzsl_fast.sample_vmf(
        mu, 5.0, n_per_class=100, seed=1, wood_b="reference", backend="native"
    )
    b, _ = dfzsl_fast.sample_vmf(mu, 5.0, n_per_class=100, seed=1, wood_b="exact", backend="native")
    assert torch.allclose(a, b, atol=1e-6)


# ------------------------------------------------------------------------------- determinism
@pytest.mark.parametrize("backend", BACKENDS)
def test_seeds(backend):
    testing.skip_unless_available(backend, CPU)
    mu = torch.randn(5, 33)
    a, _ = dfzsl_fast.sample_vmf(mu, 10.0, n_per_class=7, seed=123, backend=backend)
    b, _ = dfzsl_fast.sample_vmf(mu, 10.0, n_per_class=7, seed=123, backend=backend)
    c, _ = dfzsl_fast.sample_vmf(mu, 10.0, n_per_class=7, seed=124, backend=backend)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    torch.manual_seed(0)
    e, _ = dfzsl_fast.sample_vmf(mu, 10.0, n_per_class=7, backend=backend)
    torch.manual_seed(0)
    f, _ = dfzsl_fast.sample_vmf(mu, 10.0, n_per_class=7, backend=backend)
    g, _ = dfzsl_fast.sample_vmf(mu, 10.0, n_per_class=7, backend=backend)
    assert torch.equal(e, f) and not torch.allclose(f, g)


def test_native_thread_count_and_chunking_invariance():
    testing.skip_unless_available("native", CPU)
    mu = torch.randn(10, 100)
    labels = torch.randint(0, 10, (3001,))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        a, _ = dfzsl_fast.sample_vmf(mu, 50.0, labels=labels, seed=77, backend="native")
        torch.set_num_threads(max(2, threads))
        b, _ = dfzsl_fast.sample_vmf(mu, 50.0, labels=labels, seed=77, backend="native")
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(a, b)
    # row i uses stream (seed, offset + i): chunks with matching offsets reproduce one call
    parts = [
        dfzsl_fast.sample_vmf(mu, 50.0, labels=labels[s:e], seed=77, offset=s, backend="native")[0]
        for s, e in [(0, 1000), (1000, 1001), (1001, 3001)]
    ]
    assert torch.equal(torch.cat(parts), a)


def test_native_avx2_and_scalar_normals_agree():
    # the raw normal stream: standard normal moments, and agreement of whatever SIMD path ran
    # with the scalar definition is covered by tests/cpp; here check the distribution.
    testing.skip_unless_available("native", CPU)
    from dfzsl_fast._extension import C

    g = C.direction_normals_cpu(2000, 512, 9, 0).double().flatten()
    n = g.numel()
    assert abs(float(g.mean())) < Z_MAX / math.sqrt(n)
    assert abs(float(g.var()) - 1.0) < Z_MAX * math.sqrt(2.0 / n)
    res = scipy.stats.kstest(g[:200000].numpy(), "norm")
    assert res.pvalue > 1e-4


# ----------------------------------------------------------------------------------- outputs
@pytest.mark.parametrize("backend", BACKENDS)
def test_out_and_dtypes(backend):
    testing.skip_unless_available(backend, CPU)
    mu = torch.randn(3, 16)
    out = torch.empty(12, 16)
    x, y = dfzsl_fast.sample_vmf(mu, 5.0, n_per_class=4, seed=1, out=out, backend=backend)
    assert x.data_ptr() == out.data_ptr()
    x2, _ = dfzsl_fast.sample_vmf(mu, 5.0, n_per_class=4, seed=1, backend=backend)
    assert torch.equal(out, x2)
    h, _ = dfzsl_fast.sample_vmf(
        mu, 5.0, n_per_class=4, seed=1, dtype=torch.bfloat16, backend=backend
    )
    assert h.dtype == torch.bfloat16
    counts = torch.tensor([0, 2, 5])
    x3, y3 = dfzsl_fast.sample_vmf(mu, 5.0, n_per_class=counts, seed=1, backend=backend)
    assert x3.shape == (7, 16) and y3.tolist() == [1, 1, 2, 2, 2, 2, 2]


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_inputs(backend):
    testing.skip_unless_available(backend, CPU)
    mu = torch.randn(3, 8)
    x, y = dfzsl_fast.sample_vmf(mu, 1.0, n_per_class=0, backend=backend)
    assert x.shape == (0, 8) and y.shape == (0,)
    x, y = dfzsl_fast.sample_vmf(mu, 1.0, labels=torch.zeros(0, dtype=torch.long), backend=backend)
    assert x.shape == (0, 8)
    x, y = dfzsl_fast.sample_vmf(torch.zeros(0, 8), torch.zeros(0), n_per_class=5, backend=backend)
    assert x.shape == (0, 8)


# ------------------------------------------------------------------------------------ gradients
@pytest.mark.parametrize("backend", BACKENDS)
def test_gradcheck_mu(backend):
    testing.skip_unless_available(backend, CPU)
    mu = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 2, 2, 1, 0, 2, 1])

    def f(m):
        return dfzsl_fast.sample_vmf(m, 20.0, labels=labels, seed=8, backend=backend)[0]

    assert torch.autograd.gradcheck(f, (mu,), eps=1e-6, atol=1e-7)


def test_backward_formula_matches_autograd():
    # the op's closed-form backward vs torch autograd through the reference direction, same g
    torch.manual_seed(0)
    C, d, n = 4, 9, 50
    mu = _unit(torch.randn(C, d, dtype=torch.float64)).requires_grad_(True)
    labels = torch.randint(0, C, (n,))
    w = torch.rand(n, dtype=torch.float64) * 2 - 1
    rho = torch.sqrt(1 - w * w)
    g = torch.randn(n, d, dtype=torch.float64)
    x, q = ref.direction(g, mu[labels], w, rho)
    G = torch.randn(n, d, dtype=torch.float64)
    (auto,) = torch.autograd.grad((x * G).sum(), mu)
    mine = vmf_backward(G, mu.detach(), labels, x.detach(), w, q)
    assert torch.allclose(auto, mine, atol=1e-12, rtol=1e-10)


def test_gradient_flows_through_normalisation():
    mu = torch.randn(2, 6, dtype=torch.float64, requires_grad=True)
    x, _ = dfzsl_fast.sample_vmf(mu, 30.0, n_per_class=3, seed=1)
    x.sum().backward()
    assert mu.grad is not None and torch.isfinite(mu.grad).all()
    # the output is scale invariant in mu, so the gradient is orthogonal to each row
    assert torch.allclose(
        (mu.grad * mu.detach()).sum(1), torch.zeros(2, dtype=torch.float64), atol=1e-10
    )


def test_opcheck():
    mu = _unit(torch.randn(3, 7))
    args = (
        mu,
        torch.tensor([1.0, 10.0, 100.0], dtype=torch.float64),
        torch.tensor([0, 1, 2, 2]),
        5,
        0,
        0,
    )
    torch.library.opcheck(torch.ops.dfzsl_fast.vmf_sample.default, args)
    torch.library.opcheck(
        torch.ops.dfzsl_fast.vmf_sample.default, (mu.double().requires_grad_(),) + args[1:]
    )


# ---------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        ({"mu": [[1.0, float("nan")], [1.0, 0.0]]}, ValueError, "mu: row 0 contains NaN or Inf"),
        ({"mu": [[1.0, 0.0], [float("inf"), 0.0]]}, ValueError, "mu: row 1 contains NaN or Inf"),
        ({"mu": [[1.0, 0.0], [0.0, 0.0]]}, ValueError, "mu: row 1 has zero norm"),
        ({"mu": [[1.0], [2.0]]}, ValueError, "mu: expected d >= 2"),
        ({"mu": [1.0, 2.0]}, ValueError, r"mu: expected shape \(C, d\)"),
        ({"mu": [[1, 2], [3, 4]]}, TypeError, "mu: expected a floating-point"),
        ({"kappa": -1.0}, ValueError, "kappa: expected finite values >= 0"),
        ({"kappa": float("nan")}, ValueError, "kappa: expected finite values >= 0"),
        ({"kappa": float("inf")}, ValueError, "kappa: expected finite values >= 0"),
        ({"kappa": [1.0, 2.0, 3.0]}, ValueError, r"kappa: expected a scalar or shape \(2,\)"),
        ({"n_per_class": [1, 2, 3]}, ValueError, r"n_per_class: expected an int or shape \(2,\)"),
        ({"n_per_class": -1}, ValueError, "n_per_class: expected >= 0"),
        (
            {"n_per_class": None, "labels": [0, 2]},
            ValueError,
            r"labels: expected class indices in \[0, 2\)",
        ),
        ({"n_per_class": None, "labels": [0.0, 1.0]}, TypeError, "labels: expected an integer"),
        ({"n_per_class": None, "labels": [[0, 1]]}, ValueError, r"labels: expected shape \(N,\)"),
        ({"labels": [0, 1]}, ValueError, "exactly one of n_per_class and labels"),
        ({"n_per_class": None}, ValueError, "exactly one of n_per_class and labels"),
        ({"wood_b": "taylor"}, ValueError, "wood_b: expected 'exact' or 'reference'"),
        ({"backend": "cuda"}, ValueError, "backend must be one of"),
        ({"out": torch.empty(3, 2)}, ValueError, r"out: expected shape \(4, 2\)"),
        ({"seed": 1.5}, TypeError, "seed: expected an int"),
        ({"offset": -1}, ValueError, "offset: expected an int >= 0"),
    ],
)
def test_bad_input(kwargs, exc, match):
    args = {"mu": [[1.0, 0.0], [0.0, 1.0]], "kappa": 1.0, "n_per_class": 2}
    args.update(kwargs)
    mu = args.pop("mu")
    mu = torch.tensor(mu) if not isinstance(mu, torch.Tensor) else mu
    kappa = args.pop("kappa")
    with pytest.raises(exc, match=match):
        dfzsl_fast.sample_vmf(mu, kappa, **args)


def test_kappa_requires_grad_is_rejected():
    with pytest.raises(ValueError, match="no gradient flows to kappa"):
        dfzsl_fast.sample_vmf(torch.randn(2, 3), torch.ones(2, requires_grad=True), n_per_class=1)


def test_explicit_unavailable_backend_explains():
    from dfzsl_fast import _backend

    if not _backend.triton_reasons(CPU):
        pytest.skip("triton is usable on CPU here")
    with pytest.raises(ValueError, match="backend='triton' cannot run vmf_sample here"):
        dfzsl_fast.sample_vmf(torch.randn(2, 3), 1.0, n_per_class=1, backend="triton")


def test_native_kernel_checks_its_inputs():
    testing.skip_unless_available("native", CPU)
    mu = _unit(torch.randn(2, 4))
    k = torch.ones(2, dtype=torch.float64)
    with pytest.raises(RuntimeError, match=r"expected labels in \[0, 2\)"):
        torch.ops.dfzsl_fast.vmf_sample(mu, k, torch.tensor([0, 5]), 1, 0, 0)
    with pytest.raises(RuntimeError, match="expected finite kappa >= 0"):
        torch.ops.dfzsl_fast.vmf_sample(mu, -k, torch.tensor([0, 1]), 1, 0, 0)
    with pytest.raises(RuntimeError, match="expected mode 0"):
        torch.ops.dfzsl_fast.vmf_sample(mu, k, torch.tensor([0, 1]), 1, 0, 7)


def test_numpy_inputs_accepted():
    x, y = dfzsl_fast.sample_vmf(np.eye(3), np.array([1.0, 2.0, 3.0]), n_per_class=2, seed=0)
    assert x.shape == (6, 3) and x.dtype == torch.float64
