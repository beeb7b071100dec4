"""The fused stage-1 op `dfzsl_fast.vmf_logit_mse` against the composed ops it replaces.

Oracle: `composed_vmf_logit_mse` in float64 (sample_vmf + cosine_logit_mse + autograd), on the
native sampler, so both sides see the same samples (same Philox streams; float64 vs float32
differ only by rounding). Tolerances come from rounding, two ways:

- budget rule: the fused float32 result may be off the float64 oracle by at most twice what the
  composed float32 path is off it, plus a floor;
- floor: gamma_d = d * u (Higham, Accuracy and Stability, 3.1) times an a-priori bound of the
  quantity, per chained length-d reduction in the working precision: a float32 gradient entry
  passes through one (the GEMM giving K x_i), a float64 one through at most four (the
  normalisations, x.Kx, Kx.mu, the projection). Bounds: with B = |s_s| + |s_t|, every logit
  difference is at most B, so the loss is at most B^2, and a gradient entry of class c at most
  2 B |s_s| / (C |mu_c|) (coef = 2/(N C) times N rows, through a normalisation of mu_c). A bound,
  not the reference's own size: some gradients are exactly zero (C = 1, nsample = 1: x.mu_hat = w
  whatever mu is, and the teacher is detached), and rounding noise is all there is to compare.

The gradient is the one the published loss defines: the teacher logits are a detached target, so
the gradient reaches the samples through the student logits only (not the derivative of the loss
as a function of mu, which would also differentiate the teacher's cosine of the moving samples).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import dfzsl_fast
from dfzsl_fast import _backend
from dfzsl_fast.ops.vmf_fit import composed_vmf_logit_mse
from dfzsl_fast.pipeline import fit_vmf_means

U32 = 2.0**-24
U64 = 2.0**-53


def _native() -> bool:
    return not _backend.native_reasons("vmf_logit_mse", torch.device("cpu"), torch.float32)


needs_native = pytest.mark.skipif(not _native(), reason="native extension not loaded")


def _inputs(C, d, seed, scale=3.0):
    gen = torch.Generator().manual_seed(seed)
    mu = torch.randn(C, d, generator=gen, dtype=torch.float64) * scale  # any norm
    wt = mu / mu.norm(dim=1, keepdim=True) + 0.3 * torch.randn(C, d, generator=gen,
                                                               dtype=torch.float64)
    # concentrations from uniform (0) to tight (5000, w ~ 0.95 at d = 512), per class
    levels = torch.tensor([0.0, 1.0, 50.0, 300.0, 5000.0], dtype=torch.float64)
    kappa = levels[torch.randint(0, 5, (C,), generator=gen)]
    return mu, wt, kappa


def _err(got, ref):
    return float((got.double() - ref).abs().max())


def _bounds(mu, scale_s, scale_t):
    """A-priori bounds of the loss and of a gradient entry (module docstring)."""
    B = abs(scale_s) + abs(scale_t)
    return B * B, 2 * B * abs(scale_s) / (mu.shape[0] * float(mu.double().norm(dim=1).min()))


# (C, d, nsample): C = 1, nsample = 1, d = 2, odd sizes, and partial last tiles (256-row tiles)
SHAPES = [(1, 512, 1), (1, 2, 7), (3, 2, 4), (7, 85, 3), (13, 102, 37), (40, 512, 9),
          (5, 312, 257)]


@needs_native
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("wood_b", ["exact", "reference"])
def test_native_matches_composed(shape, wood_b):
    C, d, n = shape
    mu, wt, kappa = _inputs(C, d, seed=C * 1000 + d + n)
    kw = dict(seed=12345, offset=777, scale_s=1.0, scale_t=2.5, wood_b=wood_b)
    mode = 0 if wood_b == "exact" else 1
    args = (kappa, None, n, 12345, 777, mode, 1.0, 2.5, 1e-12)

    def composed(m, w):
        a = list(args)
        a[1] = w
        return composed_vmf_logit_mse(m, a[0], *a[1:])

    ref_loss, ref_grad = composed(mu, wt)  # float64 oracle
    c32_loss, c32_grad = composed(mu.float(), wt.float())
    loss, grad = dfzsl_fast.vmf_logit_mse(mu.float(), kappa, wt.float(), n, backend="native", **kw)
    assert loss.dtype == grad.dtype == torch.float32 and grad.shape == (C, d)
    l_bound, g_bound = _bounds(mu, 1.0, 2.5)
    assert _err(grad, ref_grad) <= 2 * _err(c32_grad, ref_grad) + d * U32 * g_bound
    assert _err(loss, ref_loss) <= 2 * _err(c32_loss, ref_loss) + d * U32 * l_bound

    loss64, grad64 = dfzsl_fast.vmf_logit_mse(mu, kappa, wt, n, backend="native", **kw)
    assert loss64.dtype == torch.float64
    assert _err(grad64, ref_grad) <= 4 * d * U64 * g_bound
    assert _err(loss64, ref_loss) <= 4 * d * U64 * l_bound


@needs_native
def test_native_matches_the_published_formulation():
    """Independent of cosine_logit_mse: the published loss in plain PyTorch (F.normalize, matmul,
    teacher logits under no_grad, F.mse_loss) on the native sampler's differentiable samples,
    float64, differentiated by autograd."""
    C, d, n = 4, 24, 6
    mu, wt, kappa = _inputs(C, d, seed=3, scale=1.0)
    m = mu.clone().requires_grad_(True)
    x, _ = dfzsl_fast.sample_vmf(m, kappa, n_per_class=n, seed=4, offset=0)
    xn = F.normalize(x, dim=1)
    with torch.no_grad():
        target = 1.7 * (xn @ F.normalize(wt, dim=1).T)
    ref_loss = F.mse_loss(xn @ F.normalize(m, dim=1).T, target)
    (ref_grad,) = torch.autograd.grad(ref_loss, m)
    loss, grad = dfzsl_fast.vmf_logit_mse(mu, kappa, wt, n, seed=4, offset=0, scale_t=1.7)
    l_bound, g_bound = _bounds(mu, 1.0, 1.7)
    assert _err(grad, ref_grad) <= 4 * d * U64 * g_bound
    assert _err(loss, ref_loss.detach()) <= 4 * d * U64 * l_bound


@pytest.mark.parametrize("backend", ["torch", "native"])
def test_backends_agree_with_their_composition(backend):
    if backend == "native" and not _native():
        pytest.skip("native extension not loaded")
    C, d, n = 6, 40, 5
    mu, wt, kappa = _inputs(C, d, seed=1)
    loss, grad = dfzsl_fast.vmf_logit_mse(mu, kappa, wt, n, seed=2, offset=3, backend=backend)
    # the composition with its ops routed the same way (torch: the torch sampler's streams)
    ref_loss, ref_grad = composed_vmf_logit_mse(
        mu, kappa, wt, n, 2, 3, 0, 1.0, 1.0, 1e-12, backend=None if backend == "native" else
        "torch"
    )
    l_bound, g_bound = _bounds(mu, 1.0, 1.0)
    assert _err(grad, ref_grad) <= 4 * d * U64 * g_bound
    assert _err(loss, ref_loss) <= 4 * d * U64 * l_bound


@needs_native
def test_reproducible_and_offset_selects_streams():
    C, d, n = 3, 16, 4
    mu, wt, kappa = _inputs(C, d, seed=5)
    mu, wt = mu.float(), wt.float()
    a = dfzsl_fast.vmf_logit_mse(mu, kappa, wt, n, seed=1, offset=0)
    b = dfzsl_fast.vmf_logit_mse(mu, kappa, wt, n, seed=1, offset=0)
    c = dfzsl_fast.vmf_logit_mse(mu, kappa, wt, n, seed=1, offset=C * n)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])


def test_half_inputs_computed_in_float32():
    C, d, n = 2, 8, 3
    mu, wt, kappa = _inputs(C, d, seed=6)
    loss, grad = dfzsl_fast.vmf_logit_mse(mu.half(), kappa, wt.half(), n, seed=0)
    assert loss.dtype == grad.dtype == torch.float16 and bool(torch.isfinite(grad).all())


@needs_native
def test_opcheck():
    C, d, n = 3, 10, 2
    mu, wt, kappa = _inputs(C, d, seed=7)
    args = (mu.float(), kappa, wt.float(), n, 1, 0, 0, 1.0, 2.0, 1e-12)
    torch.library.opcheck(torch.ops.dfzsl_fast.vmf_logit_mse.default, args)


# ------------------------------------------------------------------------------- bad inputs
def _good():
    mu, wt, kappa = _inputs(3, 8, seed=8)
    return mu.float(), kappa, wt.float()


def _bad_cases():
    mu, kappa, wt = _good()
    nan_mu = mu.clone()
    nan_mu[1, 2] = float("nan")
    zero_mu = mu.clone()
    zero_mu[2] = 0
    inf_wt = wt.clone()
    inf_wt[0, 0] = float("inf")
    return [
        ("mu", TypeError, dict(mu=mu.long())),
        ("mu", TypeError, dict(mu=[[1.0, 2.0]])),
        ("mu", ValueError, dict(mu=mu[0])),
        ("mu", ValueError, dict(mu=mu[:0], w_teacher=wt[:0], kappa=kappa[:0])),
        ("mu", ValueError, dict(mu=mu[:, :1], w_teacher=wt[:, :1])),
        ("mu: row 1", ValueError, dict(mu=nan_mu)),
        ("mu: row 2", ValueError, dict(mu=zero_mu)),
        ("w_teacher", ValueError, dict(w_teacher=wt[:2])),
        ("w_teacher", TypeError, dict(w_teacher=wt.double())),
        ("w_teacher: row 0", ValueError, dict(w_teacher=inf_wt)),
        ("kappa", ValueError, dict(kappa=-1.0)),
        ("kappa", ValueError, dict(kappa=torch.ones(2, dtype=torch.float64))),
        ("kappa", TypeError, dict(kappa=True)),
        ("nsample", ValueError, dict(nsample=0)),
        ("nsample", TypeError, dict(nsample=2.0)),
        ("seed", TypeError, dict(seed=1.5)),
        ("offset", ValueError, dict(offset=-1)),
        ("offset", ValueError, dict(offset=2**63 - 5)),
        ("scale_s", ValueError, dict(scale_s=math.inf)),
        ("scale_t", ValueError, dict(scale_t=1e30)),
        ("eps", ValueError, dict(eps=0.0)),
        ("wood_b", ValueError, dict(wood_b="svae")),
        ("check_inputs", TypeError, dict(check_inputs=1)),
        ("backend", ValueError, dict(backend="bogus")),
    ]


@pytest.mark.parametrize("name,exc,change", _bad_cases(), ids=lambda v: str(v)[:40])
def test_bad_input_names_the_argument(name, exc, change):
    mu, kappa, wt = _good()
    kw = dict(mu=mu, kappa=kappa, w_teacher=wt, nsample=4, seed=0)
    kw.update(change)
    with pytest.raises(exc, match=name):
        dfzsl_fast.vmf_logit_mse(**kw)


# ------------------------------------------------------------------------ fit_vmf_means
def _fit(text, teacher, fused, steps=4):
    return fit_vmf_means(
        teacher, text, 300.0, steps=steps, lr=3e-3, nsample=6, seed=11, progress=False,
        return_info=True, fused=fused,
    )


def test_fit_fused_matches_composed():
    C, d = 9, 64
    gen = torch.Generator().manual_seed(0)
    text = torch.randn(C, d, generator=gen, dtype=torch.float64)
    teacher = text / text.norm(dim=1, keepdim=True) + 0.2 * torch.randn(
        C, d, generator=gen, dtype=torch.float64
    )
    ref_mu, ref = _fit(text, teacher, fused=False)  # float64 oracle
    c32_mu, c32 = _fit(text.float(), teacher.float(), fused=False)
    mu, info = _fit(text.float(), teacher.float(), fused=True)
    assert mu.dtype == torch.float32
    # budget rule (float32 vs float64 oracle, as above); both paths pass through the same Adam
    for got, comp, want in ((mu, c32_mu, ref_mu), (info.losses, c32.losses, ref.losses)):
        floor = d * U32 * float(want.abs().max())
        assert _err(got, want) <= 2 * _err(comp, want) + floor
    # float64: each step's gradient within 4 d u of the bound (test_native_matches_composed), and
    # each of the 4 Adam steps carries that relative error into mu's unit rows. (Not a bound for
    # an entry whose gradient is tiny next to its own rounding error: Adam divides by sqrt(v);
    # these inputs have none.)
    mu64, _ = _fit(text, teacher, fused=True)
    assert _err(mu64, ref_mu) <= 4 * (4 * d * U64)


def test_fit_fused_flag_checked():
    text = torch.randn(3, 8)
    with pytest.raises(TypeError, match="fused"):
        fit_vmf_means(text, text, 10.0, steps=1, progress=False, fused="yes")
