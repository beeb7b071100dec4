"""Tests of the Triton vMF sampler `dfzsl_fast::vmf_sample_triton` (interpreter on CPU).

Triton draws its normals from its own Philox (tl.randn), so it is compared with theory and with
the shared backward formula, never bit for bit with the native or reference samplers. Sizes are
small: the interpreter runs each program as NumPy code.
"""

from __future__ import annotations

import math
import os

import torch

# Must happen before dfzsl_fast (hence dfzsl_fast.triton) is imported: Triton reads it when
# kernels are decorated. tests/conftest.py may already have done it.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

pytest.importorskip("triton", reason="triton is not installed")

import dfzsl_fast  # noqa: E402
from dfzsl_fast import testing, theory  # noqa: E402
from dfzsl_fast.ops.vmf import vmf_backward  # noqa: E402

DEVICE, tvmf, pytestmark = testing.triton_test_setup("vmf")

OP = torch.ops.dfzsl_fast.vmf_sample_triton.default
Z_MAX = 5.0


# --------------------------------------------------------------------------------- helpers
def _unit_rows(C: int, d: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(C, d, generator=g, dtype=torch.float64)
    return (mu / mu.norm(dim=1, keepdim=True)).to(torch.float32).to(DEVICE)


def _kappa(values) -> torch.Tensor:
    return torch.as_tensor(values, dtype=torch.float64, device=DEVICE).reshape(-1)


def _labels(C: int, n_per_class: int) -> torch.Tensor:
    return torch.arange(C, device=DEVICE).repeat_interleave(n_per_class)


def _tangent_units(x: torch.Tensor, mu_rows: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """v = (x - w mu) / |x - w mu| in float64."""
    u = x.double() - w.unsqueeze(1) * mu_rows.double()
    return u / u.norm(dim=1, keepdim=True)


def _tangent_basis(mu: torch.Tensor) -> torch.Tensor:
    """(d, d-1) orthonormal basis of the orthogonal complement of the unit vector mu."""
    d = mu.numel()
    a = torch.cat([mu.double().reshape(d, 1).cpu(), torch.eye(d, dtype=torch.float64)], dim=1)
    qmat, _ = torch.linalg.qr(a)
    return qmat[:, 1:d].to(mu.device)


# ------------------------------------------------------------------------------ basic contract
def test_shapes_dtypes_and_unit_norm():
    C, d, n = 4, 64, 150
    mu = _unit_rows(C, d)
    kappa = _kappa([0.0, 1.0, 50.0, 1e4])
    x, y = dfzsl_fast.sample_vmf(mu, kappa, n_per_class=n, seed=3, backend="triton")
    assert x.shape == (C * n, d) and x.dtype == torch.float32 and x.device.type == DEVICE.type
    assert torch.equal(y.cpu(), torch.arange(C).repeat_interleave(n))
    assert torch.isfinite(x).all()
    assert (x.double().norm(dim=1) - 1.0).abs().max().item() < 1e-5

    lab = _labels(C, n)
    x, w, q = OP(mu, kappa, lab, 3, 0, 0)
    assert x.shape == (C * n, d) and x.dtype == torch.float32
    assert w.shape == (C * n,) and w.dtype == torch.float64
    assert q.shape == (C * n,) and q.dtype == torch.float64
    assert torch.isfinite(w).all() and torch.isfinite(q).all()
    assert (w.abs() <= 1.0).all()
    assert (x.double().norm(dim=1) - 1.0).abs().max().item() < 1e-5
    # w is mu^T x (the kernel computes x in float32).
    cos = (x.double() * mu[lab].double()).sum(1)
    assert (cos - w).abs().max().item() < 1e-5


def test_noncontiguous_inputs():
    C, d, n = 3, 24, 40
    mu_nc = torch.zeros(C, 2 * d, device=DEVICE)[:, ::2]  # column stride 2
    mu_nc.copy_(_unit_rows(C, d))
    assert not mu_nc.is_contiguous()
    kappa = _kappa([5.0, 50.0, 500.0])
    lab = _labels(C, n)
    x1, w1, q1 = OP(mu_nc, kappa, lab, 11, 0, 0)
    x2, w2, q2 = OP(mu_nc.contiguous(), kappa, lab, 11, 0, 0)
    assert torch.equal(x1, x2) and torch.equal(w1, w2) and torch.equal(q1, q2)


# ------------------------------------------------------------------------------------- theory
@pytest.mark.parametrize(
    "d,kappa,n",
    [
        (3, 2.0, 2000),
        (16, 1.0, 2000),
        (64, 30.0, 2000),
        (128, 300.0, 2000),
        (128, 5e3, 2000),
        (512, 1e3, 200),
    ],
    ids=lambda v: str(v),
)
def test_mean_cosine_matches_theory(d, kappa, n):
    mu = _unit_rows(2, d, seed=d)
    lab = _labels(2, n // 2)
    x, y = dfzsl_fast.sample_vmf(mu, float(kappa), labels=lab, seed=1234 + d, backend="triton")
    assert (x.double().norm(dim=1) - 1.0).abs().max().item() < 1e-5
    cos = (x.double() * mu[y].double()).sum(1)
    mean_a = float(theory.vmf_mean_resultant_length(d, kappa))
    var = float(theory.vmf_w_variance(d, kappa))
    z = (cos.mean().item() - mean_a) / math.sqrt(var / cos.numel())
    msg = f"d={d} kappa={kappa}: mean {cos.mean().item():.6g} vs A {mean_a:.6g}, z={z:.2f}"
    assert abs(z) < Z_MAX, msg


def test_reference_mode_mean_matches_theory():
    # wood_b="reference" reproduces the biased published envelope; its mean is known exactly.
    d, kappa, n = 64, 40.0, 2000
    mu = _unit_rows(1, d, seed=5)
    x, y = dfzsl_fast.sample_vmf(
        mu, kappa, n_per_class=n, seed=77, backend="triton", wood_b="reference"
    )
    cos = (x.double() * mu[y].double()).sum(1)
    mean_w, var_w = theory.reference_mode_w_moments(d, kappa)
    z = (cos.mean().item() - mean_w) / math.sqrt(var_w / n)
    assert abs(z) < Z_MAX, f"mean {cos.mean().item():.6g} vs {mean_w:.6g}, z={z:.2f}"


def test_tangent_direction_is_isotropic():
    # v = (x - w mu)/|x - w mu| is uniform on the unit sphere of mu's tangent space: in an
    # orthonormal basis of that space its m = d-1 coordinates u_j have E u_j = 0, Var u_j = 1/m,
    # E u_j^2 = 1/m and Var u_j^2 = 2(m-1) / (m^2 (m+2)).
    d, n, kappa = 32, 2000, 20.0
    mu = _unit_rows(1, d, seed=9)
    lab = torch.zeros(n, dtype=torch.int64, device=DEVICE)
    x, w, _ = OP(mu, _kappa([kappa]), lab, 2024, 0, 0)
    v = _tangent_units(x, mu[lab], w)
    assert (v @ mu[0].double()).abs().max().item() < 1e-5  # tangent
    u = v @ _tangent_basis(mu[0])  # (n, m)
    m = d - 1
    z_mean = u.mean(0) / math.sqrt(1.0 / (m * n))
    assert z_mean.abs().max().item() < Z_MAX, z_mean
    var_u2 = 2.0 * (m - 1) / (m * m * (m + 2))
    z_sq = ((u * u).mean(0) - 1.0 / m) / math.sqrt(var_u2 / n)
    assert z_sq.abs().max().item() < Z_MAX, z_sq
    # ... and the same for the raw ambient coordinates of the mean (variance <= 1/(d-1)).
    z_amb = v.mean(0) / math.sqrt(1.0 / ((d - 1) * n))
    assert z_amb.abs().max().item() < Z_MAX


# ------------------------------------------------------------------------- randomness contract
def test_reproducible_and_seed_sensitive():
    C, d, n = 3, 48, 100
    mu = _unit_rows(C, d)
    kappa = _kappa([1.0, 30.0, 3e3])
    a, _ = dfzsl_fast.sample_vmf(mu, kappa, n_per_class=n, seed=42, backend="triton")
    b, _ = dfzsl_fast.sample_vmf(mu, kappa, n_per_class=n, seed=42, backend="triton")
    c, _ = dfzsl_fast.sample_vmf(mu, kappa, n_per_class=n, seed=43, backend="triton")
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)

    lab = _labels(C, n)
    r1 = OP(mu, kappa, lab, 42, 0, 0)
    r2 = OP(mu, kappa, lab, 42, 0, 0)
    r3 = OP(mu, kappa, lab, 42, 1, 0)
    r4 = OP(mu, kappa, lab, -(2**63) + 5, 0, 0)  # full signed 64-bit seed range
    for t1, t2 in zip(r1, r2, strict=False):
        assert torch.equal(t1, t2)
    assert not torch.allclose(r1[0], r3[0])
    assert not torch.allclose(r1[0], r4[0])
    assert torch.isfinite(r4[0]).all()

    # torch.manual_seed makes seedless calls repeatable.
    torch.manual_seed(0)
    e, _ = dfzsl_fast.sample_vmf(mu, kappa, n_per_class=n, backend="triton")
    torch.manual_seed(0)
    f, _ = dfzsl_fast.sample_vmf(mu, kappa, n_per_class=n, backend="triton")
    assert torch.equal(e, f)


def test_row_streams_follow_offset():
    # Row i's normals depend only on (seed, offset + i): the tangent direction of row i + 1 at
    # offset o equals that of row i at offset o + 1 (w comes from a different stream).
    d, n = 20, 30
    mu = _unit_rows(1, d, seed=1)
    lab = torch.zeros(n, dtype=torch.int64, device=DEVICE)
    kappa = _kappa([0.0])  # w spread over (-1, 1): the tangent part is well conditioned
    x0, w0, q0 = OP(mu, kappa, lab, 99, 7, 0)
    x1, w1, q1 = OP(mu, kappa, lab, 99, 8, 0)
    v0 = _tangent_units(x0, mu[lab], w0)
    v1 = _tangent_units(x1, mu[lab], w1)
    keep = (1.0 - w0[1:] ** 2 > 1e-3) & (1.0 - w1[:-1] ** 2 > 1e-3)
    assert int(keep.sum()) > n // 2
    assert (v0[1:][keep] - v1[:-1][keep]).abs().max().item() < 1e-4
    assert torch.allclose(q0[1:], q1[:-1], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(v0, v1)


# ----------------------------------------------------------------------------------- edge cases
def test_empty_labels():
    d = 16
    mu = _unit_rows(3, d)
    kappa = _kappa([1.0, 2.0, 3.0])
    empty = torch.empty(0, dtype=torch.int64, device=DEVICE)
    x, y = dfzsl_fast.sample_vmf(mu, kappa, labels=empty, seed=0, backend="triton")
    assert x.shape == (0, d) and y.shape == (0,)
    x, w, q = OP(mu, kappa, empty, 0, 0, 0)
    assert x.shape == (0, d) and x.dtype == torch.float32
    assert w.shape == (0,) and q.shape == (0,) and w.dtype == q.dtype == torch.float64


@pytest.mark.parametrize("kappa", [0.0, 10.0, 1e4, 1e7])
def test_axis_aligned_means(kappa):
    d, n = 16, 200
    mu = torch.zeros(2, d, device=DEVICE)
    mu[0, 0] = 1.0
    mu[1, 0] = -1.0
    lab = _labels(2, n)
    x, w, q = OP(mu, _kappa([kappa, kappa]), lab, 5, 0, 0)
    assert torch.isfinite(x).all() and torch.isfinite(w).all() and torch.isfinite(q).all()
    assert (x.double().norm(dim=1) - 1.0).abs().max().item() < 1e-5
    sign = torch.where(lab == 0, 1.0, -1.0).double()
    # p = g - (g^T mu) mu has no first coordinate, so x_0 = w mu_0 exactly in float32.
    assert (x[:, 0].double() - sign * w).abs().max().item() < 1e-6
    if kappa >= 1e4:
        assert (x[:, 0].double() * sign > 0.99).all()
    xs, ys = dfzsl_fast.sample_vmf(mu, kappa, labels=lab, seed=5, backend="triton")
    assert torch.isfinite(xs).all()
    assert (xs.double().norm(dim=1) - 1.0).abs().max().item() < 1e-5


def test_dimension_limit_and_bad_inputs():
    with pytest.raises(ValueError, match="9000"):
        tvmf._block_d(9000)
    assert tvmf._block_d(tvmf.MAX_BLOCK_D) == tvmf.MAX_BLOCK_D
    mu = _unit_rows(2, 8)
    lab = _labels(2, 3)
    with pytest.raises(RuntimeError, match="float32"):
        OP(mu.double(), _kappa([1.0, 1.0]), lab, 0, 0, 0)
    with pytest.raises(ValueError, match="mode"):
        OP(mu, _kappa([1.0, 1.0]), lab, 0, 0, 2)
    # sample_vmf refuses float64 on the Triton backend with a reason.
    with pytest.raises(ValueError, match="float32"):
        dfzsl_fast.sample_vmf(mu.double(), 1.0, n_per_class=2, seed=0, backend="triton")


def test_triton_seed_is_31_bit_and_deterministic():
    seeds = [0, 1, -1, 2**63 - 1, -(2**63), 123456789]
    keys = [tvmf._triton_seed(s % 2**64) for s in seeds]
    assert all(0 <= k < 2**31 for k in keys)
    assert keys == [tvmf._triton_seed(s % 2**64) for s in seeds]
    assert len(set(keys)) == len(keys)


# ------------------------------------------------------------------------ registration, autograd
@pytest.mark.parametrize("requires_grad", [False, True])
def test_opcheck(requires_grad):
    C, d, n = 3, 8, 4
    mu = _unit_rows(C, d).requires_grad_(requires_grad)
    kappa = _kappa([0.5, 20.0, 400.0])
    lab = _labels(C, n)
    torch.library.opcheck(OP, (mu, kappa, lab, 17, 3, 0))
    torch.library.opcheck(OP, (mu, kappa, lab[:0], 17, 0, 1))


def test_backward_matches_vmf_backward():
    C, d, n, seed = 3, 24, 20, 31
    g = torch.Generator().manual_seed(0)
    mu_raw = torch.randn(C, d, generator=g).to(DEVICE).requires_grad_(True)
    kappa = _kappa([2.0, 40.0, 900.0])
    lab = torch.randint(0, C, (C * n,), generator=g).to(DEVICE)
    G = torch.randn(C * n, d, generator=g).to(DEVICE)

    x, _ = dfzsl_fast.sample_vmf(mu_raw, kappa, labels=lab, seed=seed, backend="triton")
    assert x.requires_grad
    (x * G).sum().backward()
    assert mu_raw.grad is not None and torch.isfinite(mu_raw.grad).all()

    # Same call on the op, with the normalisation of sample_vmf made explicit.
    mu_leaf = mu_raw.detach().clone().requires_grad_(True)
    mu_hat = mu_leaf / mu_leaf.norm(dim=1, keepdim=True)
    x2, w2, q2 = OP(mu_hat, kappa, lab, seed, 0, 0)
    torch.testing.assert_close(x2, x.detach(), rtol=1e-6, atol=1e-6)
    grad_hat = vmf_backward(G, mu_hat.detach(), lab, x2.detach(), w2, q2)
    (expected,) = torch.autograd.grad(mu_hat, mu_leaf, grad_outputs=grad_hat, retain_graph=True)
    (x2 * G).sum().backward()
    torch.testing.assert_close(mu_leaf.grad, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(mu_raw.grad, expected, rtol=1e-4, atol=1e-5)


def test_backward_matches_finite_differences():
    # With (seed, offset) fixed, w and the normals do not depend on mu, so x(mu) is a smooth
    # function of mu and the pathwise gradient is its exact derivative.
    C, d, n, seed, eps = 2, 8, 6, 8, 3e-3
    gen = torch.Generator().manual_seed(1)
    mu = _unit_rows(C, d, seed=4).requires_grad_(True)
    kappa = _kappa([3.0, 60.0])
    lab = _labels(C, n)
    G = torch.randn(C * n, d, generator=gen).to(DEVICE)
    x, _, _ = OP(mu, kappa, lab, seed, 0, 0)
    (grad,) = torch.autograd.grad((x * G).sum(), mu)
    with torch.no_grad():
        for _ in range(3):
            direc = torch.randn(C, d, generator=gen).to(DEVICE)
            # along the sphere: the op takes unit rows (sample_vmf normalises them, which removes
            # the radial part of any gradient), and its value off the sphere is not the pathwise
            # formula's (the kernel projects g off mu twice, for float32 accuracy)
            direc = direc - (direc * mu.detach()).sum(1, keepdim=True) * mu.detach()
            xp, _, _ = OP(mu + eps * direc, kappa, lab, seed, 0, 0)
            xm, _, _ = OP(mu - eps * direc, kappa, lab, seed, 0, 0)
            fd = ((xp.double() - xm.double()) * G.double()).sum().item() / (2 * eps)
            an = (grad.double() * direc.double()).sum().item()
            assert abs(fd - an) <= 2e-3 * (abs(an) + 1.0), (fd, an)


@pytest.mark.compile
def test_torch_compile_fullgraph():
    C, d, n = 3, 16, 5
    mu = _unit_rows(C, d).requires_grad_(True)
    kappa = _kappa([1.0, 10.0, 100.0])
    lab = _labels(C, n)

    def f(m):
        x, _, _ = OP(m, kappa, lab, 5, 0, 0)
        return (x * x[:, :1]).sum()

    compiled = torch.compile(f, fullgraph=True)
    (g_c,) = torch.autograd.grad(compiled(mu), mu)
    (g_e,) = torch.autograd.grad(f(mu), mu)
    torch.testing.assert_close(compiled(mu).detach(), f(mu).detach())
    torch.testing.assert_close(g_c, g_e, rtol=1e-5, atol=1e-6)


def test_d2_float32_stays_on_the_circle():
    # g nearly parallel to mu (frequent at d = 2) left float32 samples off the circle by up to
    # ~1e-3 before the kernel projected g off mu a second time
    mu = torch.randn(4, 2, generator=torch.Generator().manual_seed(3)).to(DEVICE)
    x, _ = dfzsl_fast.sample_vmf(mu, 1.0, n_per_class=1000, seed=5, backend="triton")
    assert (x.double().norm(dim=1) - 1).abs().max().item() <= 64 * torch.finfo(torch.float32).eps
