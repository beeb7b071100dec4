"""The fused TF-VAEGAN synthesis op and the synthesis contract (dfzsl_fast.synthesis).

The float64 reference is the eager module itself: `TFVAEGAN.generate(z, a, a2)` in float64 with
z from `reference.philox.synth_normals`. Tolerances: the float32 kernels make O(sqrt(K) * eps32)
relative errors per GEMM output (K <= 64 here, five GEMMs in a chain, each followed by a
1-Lipschitz LeakyReLU or a normalisation of a vector of norm O(1)); 2e-5 absolute on unit rows is
above that bound (about 5 * 8 * 6e-8 * 8 = 2e-5 taken conservatively as the sum over the chain)
and far below the size of any real error (a wrong weight, bias or noise word moves rows by
>1e-2). Determinism checks are bitwise.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dfzsl_fast import _extension
from dfzsl_fast.models.tfvaegan import TFVAEGAN
from dfzsl_fast.ops.generator import SynthesisWeights, tfvaegan_synthesize
from dfzsl_fast.reference.philox import philox4x32_10
from dfzsl_fast.synthesis import TFVAEGANGenerator, VMFGenerator, synth_normals

BACKENDS = ["torch"] + (["native"] if _extension.native_available() else [])
TOL32 = 2e-5


def _model(D=24, A=10, H=40, Z=None, seed=3, jitter=0.05):
    m = TFVAEGAN(D, A, H, Z, seed=seed)
    g = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():  # away from the N(0, 0.02) init so that every path matters
        for p in m.parameters():
            p.add_(torch.randn(p.shape, generator=g) * jitter)
    return m


def _f64_rows(m, e, c, r, seed, a2=0.01, use_feedback=True):
    m64 = TFVAEGAN(m.feature_dim, m.embed_dim, m.hidden, m.latent_dim, seed=0).double()
    m64.load_state_dict(m.state_dict())
    z = synth_normals(seed, c, r, m.latent_dim, torch.float64)
    a = F.normalize(e.double(), dim=1)[c]
    with torch.no_grad():
        return m64.generate(z, a, a2, use_feedback=use_feedback)


def _ids(n, C, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, C, (n,), generator=g), torch.randint(0, 2**32, (n,), generator=g)


# ------------------------------------------------------------------------------ noise
def test_philox_known_answer():
    # Random123's published known-answer test for Philox4x32-10: counter (0,0,0,0), key (0,0)
    z = torch.zeros(1, dtype=torch.int64)
    out = [int(w) for w in philox4x32_10(z, z, z, z, 0, 0)]
    assert out == [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]
    ones = torch.full((1,), 0xFFFFFFFF, dtype=torch.int64)
    out = [int(w) for w in philox4x32_10(ones, ones, ones, ones, 0xFFFFFFFF, 0xFFFFFFFF)]
    assert out == [0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD]


def test_noise_moments_and_row_purity():
    c, r = _ids(4000, 7)
    z = synth_normals(11, c, r, 64, torch.float64)
    # mean 0, variance 1: standard errors 1/sqrt(n) and sqrt(2/n) for n = 256000 normals
    n = z.numel()
    assert abs(float(z.mean())) < 5 / n**0.5
    assert abs(float(z.var()) - 1) < 5 * (2 / n) ** 0.5
    # a row depends on (seed, class, row) only
    sub = synth_normals(11, c[17:19], r[17:19], 64, torch.float64)
    assert torch.equal(sub, z[17:19])
    assert not torch.equal(synth_normals(12, c[:2], r[:2], 64), z[:2].float())


# ------------------------------------------------------------------------------ the op
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [(24, 10, 40, None), (7, 5, 13, 9), (33, 3, 17, 1)])
def test_matches_eager_module_float64(backend, shape):
    D, A, H, Z = shape
    m = _model(D, A, H, Z)
    e = torch.randn(6, A)
    c, r = _ids(301, 6)
    x = TFVAEGANGenerator(m, backend=backend).generate(e, c, r, seed=5)
    ref = _f64_rows(m, e, c, r, 5)
    assert x.dtype == torch.float32 and x.shape == (301, D)
    assert (x.double() - ref).abs().max() < TOL32


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_feedback_zero_a1_one_class_and_empty(backend):
    m = _model()
    e = torch.randn(4, 10)
    c = torch.full((9,), 2)
    r = torch.arange(9)
    g0 = TFVAEGANGenerator(m, a2=0.0, backend=backend).generate(e, c, r, seed=1)
    assert (g0.double() - _f64_rows(m, e, c, r, 1, a2=0.0)).abs().max() < TOL32
    nf = TFVAEGANGenerator(m, use_feedback=False, backend=backend).generate(e, c, r, seed=1)
    ref = _f64_rows(m, e, c, r, 1, use_feedback=False)
    assert (nf.double() - ref).abs().max() < TOL32
    # a2 = 0 gives G(z, a) exactly the plain generator's rows (to rounding)
    assert (g0 - nf).abs().max() < TOL32
    empty = TFVAEGANGenerator(m, backend=backend).generate(e, c[:0], r[:0], seed=1)
    assert empty.shape == (0, 24)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_out_dtypes_are_the_rounded_float32_rows(backend, dtype):
    m = _model()
    e = torch.randn(4, 10)
    c, r = _ids(50, 4)
    gen = TFVAEGANGenerator(m, backend=backend)
    x32 = gen.generate(e, c, r, seed=2)
    x = gen.generate(e, c, r, seed=2, out_dtype=dtype)
    assert x.dtype == dtype
    assert torch.equal(x, x32.to(dtype))


def _assert_batch_and_thread_invariant(gen, e, c, r, seed):
    """Rows made in batches of 1, 7 and 4096 rows with 1 and 2 threads equal one call's,
    bitwise (up to 60 batches each); returns the one call's rows."""
    full = gen.generate(e, c, r, seed=seed)
    threads = torch.get_num_threads()
    try:
        for nt in (1, 2):
            torch.set_num_threads(nt)
            for bs in (1, 7, 4096):
                got = torch.cat([gen.generate(e, c[s : s + bs], r[s : s + bs], seed=seed)
                                 for s in range(0, min(len(c), 60 * bs), bs)])
                assert torch.equal(got, full[: got.shape[0]]), (nt, bs)
    finally:
        torch.set_num_threads(threads)
    return full


@pytest.mark.skipif("native" not in BACKENDS, reason="native extension not built")
def test_native_rows_do_not_depend_on_batch_or_threads():
    m = _model(64, 32, 96)
    e = torch.randn(20, 32)
    c, r = _ids(600, 20)
    gen = TFVAEGANGenerator(m, backend="native")
    full = _assert_batch_and_thread_invariant(gen, e, c, r, seed=9)
    # and not on the order of the rows
    perm = torch.randperm(600, generator=torch.Generator().manual_seed(0))
    assert torch.equal(gen.generate(e, c[perm], r[perm], seed=9), full[perm])


@pytest.mark.skipif("native" not in BACKENDS, reason="native extension not built")
def test_native_equals_torch_backend_to_rounding():
    m = _model(40, 16, 72, 20)
    e = torch.randn(5, 16)
    c, r = _ids(257, 5)
    a = TFVAEGANGenerator(m, backend="native").generate(e, c, r, seed=4)
    b = TFVAEGANGenerator(m, backend="torch").generate(e, c, r, seed=4)
    assert (a - b).abs().max() < TOL32
    assert not torch.equal(a, TFVAEGANGenerator(m, backend="native").generate(e, c, r, seed=5))


# ------------------------------------------------------------------------------ bad input
def test_bad_input_is_refused_before_work():
    m = _model()
    gen = TFVAEGANGenerator(m)
    e = torch.randn(4, 10)
    c, r = torch.tensor([0, 1]), torch.tensor([0, 0])
    with pytest.raises(ValueError, match="width 11"):
        gen.generate(torch.randn(4, 11), c, r, seed=0)
    bad = e.clone()
    bad[1, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        gen.generate(bad, c, r, seed=0)
    gen.generate(bad, torch.tensor([0, 2]), r, seed=0)  # row 1 is not used: fine
    with pytest.raises(ValueError, match="class_ids"):
        gen.generate(e, torch.tensor([0, 4]), r, seed=0)
    with pytest.raises(ValueError, match="row_ids"):
        gen.generate(e, c, torch.tensor([0, 2**32]), seed=0)
    with pytest.raises(ValueError, match="row_ids: expected 2 entries"):
        gen.generate(e, c, torch.tensor([0]), seed=0)
    with pytest.raises(TypeError, match="class_ids"):
        gen.generate(e, torch.tensor([0.0, 1.0]), r, seed=0)
    with pytest.raises(ValueError, match="seed"):
        gen.generate(e, c, r, seed=-1)
    with pytest.raises(TypeError, match="out_dtype"):
        gen.generate(e, c, r, seed=0, out_dtype=torch.int8)
    with torch.no_grad():
        m.feedback.fc1.weight[0, 0] = float("inf")
    with pytest.raises(ValueError, match="w_fb1"):
        TFVAEGANGenerator(m)
    with pytest.raises(TypeError, match="a2"):
        TFVAEGANGenerator(_model(), a2=float("nan"))
    with pytest.raises(TypeError, match="TFVAEGAN"):
        TFVAEGANGenerator(torch.nn.Linear(2, 2))


def test_op_wrapper_checks_weights():
    w = SynthesisWeights.from_model(_model())
    e = F.normalize(torch.randn(3, 10), dim=1)
    c, r = torch.tensor([0]), torch.tensor([0])
    with pytest.raises(ValueError, match="w_dec"):
        tfvaegan_synthesize(w._replace(w_dec=w.w_dec[:, :-1]), e, c, r, seed=0, a1=0.01)
    with pytest.raises(TypeError, match="a1"):
        tfvaegan_synthesize(w, e, c, r, seed=0, a1=float("inf"))


# ------------------------------------------------------------------------------ vMF kind
@pytest.mark.skipif("native" not in BACKENDS, reason="native extension not built")
def test_vmf_generator_rows_are_pure_functions_of_class_and_row():
    e = torch.randn(3, 16)
    gen = VMFGenerator(torch.tensor([50.0, 80.0, 20.0]), 16, backend="native")
    c = torch.tensor([0] * 5 + [2] * 5)
    r = torch.cat([torch.arange(5), torch.arange(5)])
    full = gen.generate(e, c, r, seed=3)
    parts = torch.cat([gen.generate(e, c[i : i + 3], r[i : i + 3], seed=3)
                       for i in range(0, 10, 3)])
    assert torch.equal(parts, full)
    assert torch.allclose(full.norm(dim=1), torch.ones(10), atol=1e-5)
    # mean resultant direction of class 0 points at its embedding
    assert F.cosine_similarity(full[:5].mean(0), e[0], dim=0) > 0.8


# ------------------------------------------------------------------------------ bf16 mode
# Bound for bf16 GEMM operands: each rounding to bf16 moves a vector by a relative 2^-9 at
# most; the chain rounds about 12 vectors (inputs and outputs of six GEMMs), each passed on
# with a gain of O(1) by these layers, so |x_bf16 - x| <= 12 * 2^-9 = 0.023 on unit rows;
# 0.03 leaves room for the gains, and a real error (a wrong weight, bias or noise word) moves
# rows by O(0.1) or more.
TOL_BF16 = 0.03


@pytest.mark.parametrize("backend", BACKENDS)
def test_bf16_mode_close_to_float64(backend):
    m = _model(48, 16, 80, 24)
    e = torch.randn(5, 16)
    c, r = _ids(300, 5)
    gen = TFVAEGANGenerator(m, backend=backend, compute_dtype=torch.bfloat16)
    x = gen.generate(e, c, r, seed=6)
    ref = _f64_rows(m, e, c, r, 6)
    err = (x.double() - ref).norm(dim=1).max()
    assert err < TOL_BF16
    assert err > 1e-6  # it did compute in bf16
    assert gen.describe()["compute_dtype"] == "bfloat16"
    assert gen.fingerprint() != TFVAEGANGenerator(m, backend=backend).fingerprint()


@pytest.mark.skipif("native" not in BACKENDS, reason="native extension not built")
def test_bf16_native_deterministic_and_close_to_reference():
    m = _model(64, 32, 96)
    e = torch.randn(8, 32)
    c, r = _ids(300, 8)
    gen = TFVAEGANGenerator(m, backend="native", compute_dtype=torch.bfloat16)
    full = _assert_batch_and_thread_invariant(gen, e, c, r, seed=2)
    ref = TFVAEGANGenerator(m, backend="torch", compute_dtype=torch.bfloat16).generate(
        e, c, r, seed=2)
    assert (full - ref).norm(dim=1).max() < TOL_BF16
