"""Tests of the Triton synthesis forward `dfzsl_fast::tfvaegan_synthesize_triton` (interpreter on
CPU, tiny shapes; the same tests run on a GPU in the prepared GPU check).

Oracles: the float64 reference kernel (reference/generator.py) on a float64 copy of the float32
weights, with a tolerance derived from bf16 rounding (below); a float64 emulation of the
kernel's bf16 roundings, much tighter; and the Philox words of reference/philox.py, bit for bit.

Tolerance against the float64 reference. The kernel rounds to bf16 (unit roundoff u = 2^-8)
the GEMM operands: z, W_z, h, W_out, and with feedback x1, W_dec, d, W_fb1, t, W_fb2, hf and
W_out again: 12 roundings (4 without feedback), each a relative error uniform in [-u, u]
(rms u / sqrt(3)) of one operand. Through layers of gain ~1 (weights of scale 1/sqrt(fan_in),
as here and in trained generators) and the final normalisation (which only removes the radial
part), the error of a unit output row has norm ~ sqrt(12) u / sqrt(3) = 2u rms (1.2u without
feedback); fp32 accumulation and float32 Box-Muller add ~1e-6. We allow 6u = 0.023 per row
in L2 norm (3x the rms, for the max over rows and gains above 1), plus the rounding of the
output itself (u_out, the output dtype's unit roundoff, per element) for half outputs. A wrong
bias, a missing LReLU, a swapped noise column or a missing normalisation gives errors of 0.1 or
more, so these tests can fail.

Tolerance against the bf16 emulation: the same roundings at the same places, in float64, so
only the accumulation order (fp32 in the kernel, ~1e-6) and the float32 noise differ. Those
can flip one bf16 rounding of an intermediate element v by u |v| (rare: a pre-rounding value
within ~1e-6 relative of a rounding boundary); through one weight column that moves the unit
output by ~u |v| |W_ij| < 1e-3 per element. We allow 1e-3 + 2 u_out |x| (one ulp of the output
format: its own rounding can flip too). Seen under the interpreter: 6e-8 with float32 output.
Under the interpreter the kernel rounds float32 -> bf16 to nearest even by bit arithmetic (its
own conversion truncates), so the roundings are the GPU's.
"""

from __future__ import annotations

import math
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

pytest.importorskip("triton", reason="triton is not installed")

from dfzsl_fast import (
    _backend,  # noqa: E402
    testing,  # noqa: E402
)
from dfzsl_fast.ops import generator as og  # noqa: E402
from dfzsl_fast.reference import generator as ref  # noqa: E402
from dfzsl_fast.reference import philox as noise  # noqa: E402

DEVICE, tg, pytestmark = testing.triton_test_setup("generator")

OP = torch.ops.dfzsl_fast.tfvaegan_synthesize_triton.default
U_BF16 = 2.0**-8
U_OUT = {torch.float32: 2.0**-24, torch.float16: 2.0**-11, torch.bfloat16: 2.0**-8}
ROW_TOL = 6 * U_BF16  # per-row L2 error against the float64 reference (module docstring)
EMU_ATOL = 1e-3  # per element against the bf16 emulation (module docstring)


# --------------------------------------------------------------------------------- helpers
def _weights(H, Z, A, D, seed=0) -> og.SynthesisWeights:
    g = torch.Generator().manual_seed(seed)

    def r(*s, scale=1.0):
        return (scale * torch.randn(*s, generator=g, dtype=torch.float64) / math.sqrt(s[-1])
                ).float().to(DEVICE)

    return og.SynthesisWeights(
        r(H, Z), r(H, A), r(H, scale=0.3) * 0.1, r(D, H), r(D, scale=0.3) * 0.1,
        r(H, D), r(H, scale=0.3) * 0.1, r(H, H), r(H, scale=0.3) * 0.1, r(H, H),
        r(H, scale=0.3) * 0.1,
    )


def _embeddings(C, A, seed=1):
    e = torch.randn(C, A, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return (e / e.norm(dim=1, keepdim=True)).float().to(DEVICE)


def _op_args(w: og.SynthesisWeights, emb, class_ids, dtype=None):
    """(cond, cond_index, class_ids) as the checked wrapper builds them."""
    dtype = dtype or w.w_z.dtype
    uniq, inv = torch.unique(class_ids, return_inverse=True)
    cond = torch.addmm(w.b1.to(dtype), emb.to(dtype)[uniq], w.w_a.to(dtype).T)
    return cond, inv


def _tail(w: og.SynthesisWeights, dtype=None):
    names = ("w_z", "w_out", "b_out", "w_dec", "b_dec", "w_fb1", "b_fb1", "w_fb2", "b_fb2")
    return tuple(getattr(w, n) if dtype is None else getattr(w, n).to(dtype) for n in names)


def _run(w, emb, cls, rows, seed, a1, feedback, out_dtype):
    cond, inv = _op_args(w, emb, cls)
    return OP(cond, inv, cls, rows, *_tail(w), seed, a1, feedback, out_dtype)


def _reference64(w, emb, cls, rows, seed, a1, feedback):
    cond, inv = _op_args(w, emb, cls, torch.float64)
    return ref.tfvaegan_synthesize(cond, inv, cls, rows, *_tail(w, torch.float64), seed, a1,
                                   feedback, torch.float64)


def _emulated(w, emb, cls, rows, seed, a1, feedback):
    """The kernel's bf16 roundings, in float64."""
    def b(t):
        return t.to(torch.bfloat16).double()

    def lrelu(t):
        return torch.nn.functional.leaky_relu(t, 0.2)

    def unit(t):
        return torch.nn.functional.normalize(t, dim=1, eps=1e-12)

    cond, inv = _op_args(w, emb, cls)  # float32, as the wrapper passes it
    wz, wo, bo, wd, bd, w1, b1, w2, b2 = (t.double() for t in _tail(w))
    z = noise.synth_normals(seed, cls, rows, wz.shape[1], torch.float64)
    h = b(lrelu(b(z) @ b(wz).T + cond.double()[inv]))
    x1 = unit(h @ b(wo).T + bo)
    if not feedback:
        return x1
    d = b(lrelu(b(x1) @ b(wd).T + bd))
    t = b(lrelu(d @ b(w1).T + b1))
    hf = b(h + a1 * lrelu(t @ b(w2).T + b2))
    return unit(hf @ b(wo).T + bo)


def _ids(n, n_classes, seed=2):
    g = torch.Generator().manual_seed(seed)
    cls = torch.randint(0, n_classes, (n,), generator=g).to(DEVICE)
    rows = torch.randint(0, 2**32, (n,), generator=g, dtype=torch.int64).to(DEVICE)
    return cls, rows


def _check_close(out, w, emb, cls, rows, seed, a1, feedback):
    u_out = U_OUT[out.dtype]
    x = out.double()
    assert torch.isfinite(x).all()
    r64 = _reference64(w, emb, cls, rows, seed, a1, feedback)
    row_err = (x - r64).norm(dim=1).max().item()
    tol = ROW_TOL + u_out * math.sqrt(out.shape[1])
    assert row_err <= tol, f"row error {row_err:.3g} > {tol:.3g} vs the float64 reference"
    emu = _emulated(w, emb, cls, rows, seed, a1, feedback)
    torch.testing.assert_close(x, emu, atol=EMU_ATOL, rtol=2 * u_out)
    assert ((x.norm(dim=1) - 1).abs() <= 1e-5 + 4 * u_out * math.sqrt(out.shape[1])).all()


# ------------------------------------------------------------------------------------- noise
@pytest.mark.parametrize("seed", [0, 1, 2**31, 2**32 - 1, 2**32 + 7, 2**63 - 1, 2**64 - 1])
def test_philox_words_bit_equal(seed):
    g = torch.Generator().manual_seed(seed % 1000)
    M = 70
    cls, rows, j = (torch.randint(0, 2**32, (M,), generator=g, dtype=torch.int64).to(DEVICE)
                    for _ in range(3))
    cls[:3] = torch.tensor([0, 2**32 - 1, 2**31], device=DEVICE)
    words = tg.philox_words(seed, cls, rows, j).cpu()
    lo, hi = seed & 0xFFFFFFFF, seed >> 32
    want = noise.philox4x32_10(j.cpu(), torch.full((M,), noise.STAGE_SYNTH), rows.cpu(),
                               cls.cpu(), lo, hi)
    for q in range(4):
        assert torch.equal(words[:, q], want[q]), f"word {q}"


@pytest.mark.parametrize("Z", [1, 6, 37])
def test_normals_match_reference(Z):
    cls, rows = _ids(23, 2**32, seed=Z)
    z = tg.normals(99, cls, rows, Z).double().cpu()
    want = noise.synth_normals(99, cls.cpu(), rows.cpu(), Z, torch.float64)
    # float32 log / cos / sin against float64: ~1e-6 for |z| < 6
    torch.testing.assert_close(z, want, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------- forward
@pytest.mark.parametrize(
    "H,D,Z,A,feedback,a1,out_dtype",
    [
        (40, 36, 20, 12, True, 0.8, torch.float32),   # all odd: >1 tile in every dimension
        (40, 36, 20, 12, False, 0.8, torch.float16),
        (24, 10, 7, 5, True, 1.5, torch.bfloat16),    # D in one tile (no fp32 scratch)
        (17, 33, 5, 3, True, 0.3, torch.float16),
        (24, 260, 9, 4, True, 0.6, torch.float32),    # D over several tiles on a GPU too
    ],
    ids=["fb-f32", "nofb-f16", "onetile-bf16", "tiny-f16", "wide-d"],
)
def test_matches_reference(H, D, Z, A, feedback, a1, out_dtype):
    w = _weights(H, Z, A, D, seed=H + D)
    emb = _embeddings(4, A)
    cls, rows = _ids(37, 4)
    out = _run(w, emb, cls, rows, 12345, a1, feedback, out_dtype)
    assert out.shape == (37, D) and out.dtype == out_dtype and out.device.type == DEVICE.type
    _check_close(out, w, emb, cls, rows, 12345, a1, feedback)


def test_public_wrapper_one_class_and_large_seed():
    H, D, Z, A = 24, 20, 9, 6
    w = _weights(H, Z, A, D, seed=5)
    emb = _embeddings(3, A)
    cls = torch.full((21,), 2, dtype=torch.int64, device=DEVICE)  # one class
    rows = torch.arange(21, device=DEVICE) * 1000 + 5
    seed = 2**63 - 12345
    out = og.tfvaegan_synthesize(w, emb, cls, rows, seed=seed, a1=0.7, backend="triton")
    assert out.dtype == torch.float32 and out.shape == (21, D)
    _check_close(out, w, emb, cls, rows, seed, 0.7, True)
    # the reference through the same wrapper (float64 weights on the torch backend)
    w64 = og.SynthesisWeights(*(t.double() for t in w))
    r = og.tfvaegan_synthesize(w64, emb.double(), cls, rows, seed=seed, a1=0.7, backend="torch")
    assert (out.double() - r).norm(dim=1).max().item() <= ROW_TOL


def test_a1_zero_equals_no_feedback():
    # a1 = 0: hf = h exactly (h is bf16 already), so the second pass repeats the first GEMM
    H, D, Z, A = 20, 24, 8, 4
    w = _weights(H, Z, A, D, seed=7)
    emb = _embeddings(2, A)
    cls, rows = _ids(19, 2, seed=3)
    a = _run(w, emb, cls, rows, 3, 0.0, True, torch.float32)
    b = _run(w, emb, cls, rows, 3, 0.0, False, torch.float32)
    assert torch.equal(a, b)
    c = _run(w, emb, cls, rows, 3, 0.5, True, torch.float32)
    assert (c - a).abs().max().item() > 1e-2  # feedback changes the rows


def test_rows_independent_of_chunks_and_batch():
    H, D, Z, A = 20, 18, 10, 4
    w = _weights(H, Z, A, D, seed=9)
    emb = _embeddings(3, A)
    cls, rows = _ids(40, 3, seed=4)
    full = _run(w, emb, cls, rows, 77, 0.9, True, torch.float32)
    old = tg._CHUNK_OVERRIDE
    tg._CHUNK_OVERRIDE = 16  # three chunks, the last one partial
    try:
        chunked = _run(w, emb, cls, rows, 77, 0.9, True, torch.float32)
    finally:
        tg._CHUNK_OVERRIDE = old
    torch.testing.assert_close(chunked, full, atol=EMU_ATOL, rtol=0)
    part = _run(w, emb, cls[5:12], rows[5:12], 77, 0.9, True, torch.float32)
    torch.testing.assert_close(part, full[5:12], atol=EMU_ATOL, rtol=0)
    other = _run(w, emb, cls, rows, 78, 0.9, True, torch.float32)
    assert (other - full).abs().max().item() > 0.1  # the seed matters


def test_empty_rows():
    H, D, Z, A = 8, 6, 4, 3
    w = _weights(H, Z, A, D)
    emb = _embeddings(2, A)
    e = torch.empty(0, dtype=torch.int64, device=DEVICE)
    for dt in (torch.float32, torch.bfloat16):
        out = _run(w, emb, e, e, 0, 1.0, True, dt)
        assert out.shape == (0, D) and out.dtype == dt
    out = og.tfvaegan_synthesize(w, emb, e, e, seed=0, a1=1.0, backend="triton")
    assert out.shape == (0, D)


def test_bad_inputs_and_routing():
    H, D, Z, A = 8, 6, 4, 3
    w = _weights(H, Z, A, D)
    emb = _embeddings(2, A)
    cls, rows = _ids(3, 2)
    with pytest.raises(RuntimeError, match="out_dtype"):
        _run(w, emb, cls, rows, 0, 1.0, True, torch.float64)
    w64 = og.SynthesisWeights(*(t.double() for t in w))
    cond, inv = _op_args(w64, emb, cls)
    with pytest.raises(RuntimeError, match="float32"):
        OP(cond, inv, cls, rows, *_tail(w64), 0, 1.0, True, torch.float32)
    # the router refuses float64 weights on the Triton backend, with the reason
    with pytest.raises(ValueError, match="float32"):
        og.tfvaegan_synthesize(w64, emb, cls, rows, seed=0, a1=1.0, backend="triton")
    assert _backend.reasons("tfvaegan_synthesize", "triton", torch.device("cuda"),
                            torch.float32) == []
    if DEVICE.type == "cpu":
        assert _backend.reasons("tfvaegan_synthesize", "triton", DEVICE, torch.float32) == []


def test_opcheck():
    H, D, Z, A = 8, 6, 5, 3
    w = _weights(H, Z, A, D)
    emb = _embeddings(2, A)
    cls, rows = _ids(4, 2)
    cond, inv = _op_args(w, emb, cls)
    torch.library.opcheck(OP, (cond, inv, cls, rows, *_tail(w), 1, 0.5, True, torch.float32),
                          test_utils=("test_schema", "test_faketensor"))


def test_flops_and_chunk_helpers():
    assert tg.flops_per_row(1024, 512, 512) == 2 * (512 * 1024 + 2 * 1024 * 512 + 512 * 1024
                                                    + 2 * 1024 * 1024)
    assert tg.flops_per_row(1024, 512, 512, feedback=False) == 2 * (512 * 1024 + 1024 * 512)
    for H, D in ((1024, 512), (4096, 512), (4096, 4096), (8, 8)):
        c = tg.chunk_rows(H, D)
        assert c % 128 == 0 and 128 <= c <= tg.MAX_CHUNK_ROWS
        assert c * (6 * H + 6 * D) <= max(tg.SCRATCH_BYTES, 128 * (6 * H + 6 * D))


_COMPILE_SM90 = r"""
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from dfzsl_fast.triton import generator as tg
tgt = GPUTarget("cuda", 90, 32)
i = dict.fromkeys(("n_rows", "N", "K", "H", "Z", "stride_x", "stride_w", "stride_res",
                   "stride_y", "stride_scr", "stride_cond", "stride_h", "seed_hi"), "i32")
f = {"a1": "fp32", "slope": "fp32", "eps": "fp32", "seed_lo": "i64"}
def sig(fn, ptrs, consts):
    names = fn.arg_names
    s = {n: ptrs.get(n) or i.get(n) or f.get(n) or "constexpr" for n in names}
    k = triton.compile(ASTSource(fn=fn, signature=s, constexprs=consts), target=tgt,
                       options={"num_warps": 8, "num_stages": 3})
    assert "wgmma" in k.asm["ptx"], fn.__name__
ptr = {"cls_ptr": "*i64", "rid_ptr": "*i64", "cidx_ptr": "*i64", "cond_ptr": "*fp32",
       "w_ptr": "*bf16", "h_ptr": "*bf16"}
sig(tg._hidden_kernel, ptr, {"BM": 128, "BN": 256, "BK": 32, "UPCAST": False, "GROUP_M": 8})
ptr = {"x_ptr": "*bf16", "w_ptr": "*bf16", "b_ptr": "*fp32", "res_ptr": "*bf16", "y_ptr": "*bf16"}
sig(tg._linear_act_kernel, ptr,
    {"FBADD": True, "BM": 128, "BN": 128, "BK": 64, "UPCAST": False, "GROUP_M": 8})
for one, yt in ((False, "*bf16"), (True, "*fp16"), (False, "*fp32")):
    ptr = {"x_ptr": "*bf16", "w_ptr": "*bf16", "b_ptr": "*fp32", "scr_ptr": "*fp32", "y_ptr": yt}
    sig(tg._linear_norm_kernel, ptr,
        {"ONE_TILE": one, "BM": 128, "BN": 128, "BK": 64, "UPCAST": False})
print("COMPILED")
"""


def test_kernels_compile_for_hopper():
    # The interpreter does not run Triton's compiler: compile the GPU kernels for sm_90 here
    # (no GPU needed; ptxas ships with triton) and check that the GEMMs use wgmma.
    import subprocess
    import sys
    from pathlib import Path

    pytest.importorskip("triton.backends.compiler")
    env = dict(os.environ, TRITON_INTERPRET="0",
               PYTHONPATH=os.pathsep.join([str(Path(__file__).resolve().parent.parent),
                                           os.environ.get("PYTHONPATH", "")]))
    r = subprocess.run([sys.executable, "-c", _COMPILE_SM90], env=env, capture_output=True,
                       text=True, timeout=240)
    assert "COMPILED" in r.stdout, r.stderr[-3000:]
