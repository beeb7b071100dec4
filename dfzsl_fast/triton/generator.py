"""Triton kernels of the TF-VAEGAN synthesis forward: `dfzsl_fast::tfvaegan_synthesize_triton`.

Same contract as `dfzsl_fast::tfvaegan_synthesize` (schema in ops/_library.py, math in
reference/generator.py): per row i, with z = the Philox normals of (seed, class_ids[i],
row_ids[i]) (reference/philox.py) and cond = cond[cond_index[i]],

    h   = LReLU(W_z z + cond)
    x1  = normalize(W_out h + b_out)                   (the output when feedback=False)
    d   = LReLU(W_dec x1 + b_dec)
    t   = LReLU(W_fb1 d + b_fb1)
    hf  = h + a1 LReLU(W_fb2 t + b_fb2)
    out = normalize(W_out hf + b_out)

Design. Every GEMM runs on tensor cores in bf16 with fp32 accumulation (tl.dot); the float32
weights are cast to bf16 once per call (five small matrices), biases and cond stay float32 and
are added in the fp32 epilogues. Rows are processed in chunks (`chunk_rows`, bounded so the
scratch of one chunk stays near 1 GiB); per chunk six launches, each with a fused epilogue:

1. `_hidden_kernel` (grid rows x H tiles): the A operand z is generated in registers, K tile by
   K tile, from Philox4x32-10 (key (seed_lo, seed_hi), counter (j, STAGE_SYNTH, row, class),
   exactly the words of `reference.philox.philox4x32_10`, with tl.umulhi and uint32 multiplies)
   and Box-Muller in float32 (BK/4 Philox blocks per row and K tile, interleaved to BK columns
   with tl.join); no (N, Z) tensor exists. Epilogue: + cond[cond_index] (gathered row), LReLU,
   store h in bf16.
2. `_linear_norm_kernel` (grid: row blocks; each program loops over all D in BLOCK_N tiles):
   y = x W^T + b, sum of squares accumulated across the tiles; the raw fp32 tiles go to a
   chunk-sized fp32 scratch (or stay in registers when D fits one tile) and a second pass
   writes y / max(|y|, 1e-12) in the destination dtype (x1 in bf16, or the output in
   out_dtype). Any D works (D = 4096 is 16-32 tiles).
3.-5. `_linear_act_kernel` (grid rows x N tiles): + bias, LReLU, bf16 store; the last one
   (W_fb2) fuses the feedback add hf = h + a1 f, in place over h (each element is read and
   written by the same program).
6. `_linear_norm_kernel` again for the output (W_out, b_out) into out (float32, float16 or
   bfloat16). feedback=False stops after launch 2, writing the output directly.

Precision: bf16 rounding of z, the weights and the intermediates h, x1, d, t, hf (unit
roundoff u = 2^-8); fp32 accumulation, fp32 bias/cond/normalisation. The unit output rows
agree with the float64 reference to a few u per row (tests/test_generator_triton.py derives
the tolerance), and the noise words are bit-equal to the reference's.

GPU roofline. FLOPs per row with feedback: 2 (Z H + 2 H D + D H + 2 H^2) (the W_z GEMM, W_out
twice, W_dec, W_fb1 and W_fb2); without feedback 2 (Z H + H D).
  H = 1024, D = Z = 512: 8.39 MFLOP/row -> at the H100/H200 SXM dense bf16 peak of 989 TFLOP/s
      ~118 M rows/s. Its scratch traffic (bf16 h written once and read three times, x1, d, t,
      fp32 y written and read twice, the output) is ~24 KB/row, i.e. ~140 M rows/s at
      3.35 TB/s (H100; 4.8 TB/s on H200): close to the ridge, so expect well under peak (the
      launches are not fused across layers; a per-row-block megakernel would keep h in SMEM).
  H = 4096, D = Z = 512: 83.9 MFLOP/row, ~11.8 M rows/s at peak; 80% of the FLOPs are the two
      H x H feedback GEMMs, compute-bound (~390 FLOP/B of scratch traffic).
The Philox + Box-Muller work (~110 integer/SFU ops per block of 4 normals, ~28 per element of
z) is recomputed once per H tile of launch 1 (tiles of 256: H/256 times per row): at ~20 T
simple ops/s on CUDA cores that is ~2.9 ns/row at H = 1024 and ~11 ns/row at H = 4096, against
~8.5 and ~85 ns/row of tensor-core time at peak, i.e. up to ~35% / ~13% extra where it does not
overlap the wgmma (a chunk-sized bf16 z scratch would remove it at 2 Z bytes/row of traffic;
by design z never leaves registers). Launches 1, 3-5 order their tiles in groups of 8 row
tiles so that A tiles are re-read from L2. Tiles are first guesses for sm_90 (128 x 128 x 64,
8 warps, 3 stages), not tuned on a GPU.

CPU tensors run only under the Triton interpreter (TRITON_INTERPRET=1 set before this module is
imported). The interpreter's tl.dot mishandles bf16 operands, so there (only) the bf16 tiles are
widened to float32 before tl.dot: the products of bf16 values are exact in float32 and the
accumulation is float32 either way, so the arithmetic is the GPU path's.
"""

from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl

from .. import _backend
from ..reference.philox import STAGE_SYNTH
from . import devices as _devices
from ._utils import pow2_block

__all__ = ["tfvaegan_synthesize_triton", "chunk_rows", "flops_per_row", "OUT_DTYPES"]

#: Output formats of the Triton kernel (float64 only on the reference).
OUT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
SLOPE = 0.2
EPS = 1e-12
#: Bytes of chunk scratch the host loop aims at (h, d, t in bf16, x1 in bf16, y in fp32).
SCRATCH_BYTES = 1 << 30
MAX_CHUNK_ROWS = 1 << 16

# Philox4x32-10 constants (reference/philox.py, csrc/include/dfzsl/philox.h).
_PHILOX_M0 = tl.constexpr(0xD2511F53)
_PHILOX_M1 = tl.constexpr(0xCD9E8D57)
_PHILOX_W0 = tl.constexpr(0x9E3779B9)
_PHILOX_W1 = tl.constexpr(0xBB67AE85)
_STAGE = tl.constexpr(STAGE_SYNTH)


# --------------------------------------------------------------------------------- device code
@triton.jit
def _philox(c0, c1, c2, c3, k0, k1):
    """Ten Philox4x32 rounds on uint32 tensors (counter c0..c3, key k0, k1)."""
    for _ in tl.static_range(10):
        p0 = c0
        p2 = c2
        c0 = tl.umulhi(p2, _PHILOX_M1) ^ c1 ^ k0
        c2 = tl.umulhi(p0, _PHILOX_M0) ^ c3 ^ k1
        c1 = p2 * _PHILOX_M1
        c3 = p0 * _PHILOX_M0
        k0 = k0 + _PHILOX_W0
        k1 = k1 + _PHILOX_W1
    return c0, c1, c2, c3


@triton.jit
def _cast(x, dtype: tl.constexpr, FIX_BF16: tl.constexpr):
    """x (float32) in `dtype`. With FIX_BF16 (the interpreter, whose float32 -> bf16 conversion
    truncates) a bf16 target is first rounded to nearest even by bit arithmetic, as the GPU's
    cvt.rn.bf16.f32 rounds (finite values; the result is then exact in bf16)."""
    if FIX_BF16 and dtype == tl.bfloat16:
        b = x.to(tl.uint32, bitcast=True)
        b = (b + (0x7FFF + ((b >> 16) & 1))) & 0xFFFF0000
        x = b.to(tl.float32, bitcast=True)
    return x.to(dtype)


@triton.jit
def _box_muller(w_radius, w_angle):
    """Two normals from two uint32 words (fastmath.h box_muller, float32)."""
    u1 = ((w_radius >> 8).to(tl.float32) + 0.5) * 5.9604644775390625e-08
    r = tl.sqrt(-2.0 * tl.log(u1))
    t = 6.283185307179586 * ((w_angle >> 8).to(tl.float32) * 5.9604644775390625e-08)
    return r * tl.cos(t), r * tl.sin(t)


@triton.jit
def _normals_tile(cls, rid, k0, k1, kb, BM: tl.constexpr, BK: tl.constexpr):
    """z[rows, kb*BK : (kb+1)*BK] (BM, BK) float32: Philox blocks j = kb*BK/4 + 0..BK/4-1 of
    each row (class cls, row rid: (BM,) uint32), z[4j + q] from word pair q // 2."""
    j = (kb * (BK // 4) + tl.arange(0, BK // 4)).to(tl.uint32)
    c0 = tl.broadcast_to(j[None, :], (BM, BK // 4))
    c1 = tl.full((BM, BK // 4), _STAGE, tl.uint32)
    c2 = tl.broadcast_to(rid[:, None], (BM, BK // 4))
    c3 = tl.broadcast_to(cls[:, None], (BM, BK // 4))
    w0, w1, w2, w3 = _philox(c0, c1, c2, c3, k0, k1)
    z0, z1 = _box_muller(w0, w1)
    z2, z3 = _box_muller(w2, w3)
    # join adds a LAST axis: join(join(z0, z2), join(z1, z3))[r, j, a, b] = z_{2a+b} of block j,
    # so the row-major (BM, BK) reshape puts z_q of block j at column 4j + q
    return tl.reshape(tl.join(tl.join(z0, z2), tl.join(z1, z3)), (BM, BK))


@triton.jit(do_not_specialize=["seed_lo", "seed_hi", "M"])
def _philox_words_kernel(cls_ptr, rid_ptr, j_ptr, out_ptr, M, seed_lo, seed_hi,
                         BLOCK: tl.constexpr):
    """Test helper: the four Philox words of counters (j[i], STAGE_SYNTH, rid[i], cls[i])."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = offs < M
    c0 = tl.load(j_ptr + offs, mask=m, other=0).to(tl.uint32)
    c2 = tl.load(rid_ptr + offs, mask=m, other=0).to(tl.uint32)
    c3 = tl.load(cls_ptr + offs, mask=m, other=0).to(tl.uint32)
    c1 = tl.full((BLOCK,), _STAGE, tl.uint32)
    k0 = seed_lo.to(tl.uint32)
    k1 = seed_hi.to(tl.uint32)
    w0, w1, w2, w3 = _philox(c0, c1, c2, c3, k0, k1)
    tl.store(out_ptr + offs * 4 + 0, w0.to(tl.int64), mask=m)
    tl.store(out_ptr + offs * 4 + 1, w1.to(tl.int64), mask=m)
    tl.store(out_ptr + offs * 4 + 2, w2.to(tl.int64), mask=m)
    tl.store(out_ptr + offs * 4 + 3, w3.to(tl.int64), mask=m)


@triton.jit(do_not_specialize=["seed_lo", "seed_hi", "n_rows", "Z"])
def _normals_kernel(cls_ptr, rid_ptr, z_ptr, n_rows, Z, seed_lo, seed_hi,
                    BM: tl.constexpr, BK: tl.constexpr):
    """Test helper: the float32 normals z (n_rows, Z) the hidden kernel feeds to its GEMM."""
    rows = tl.program_id(0).to(tl.int64) * BM + tl.arange(0, BM)
    rmask = rows < n_rows
    cls = tl.load(cls_ptr + rows, mask=rmask, other=0).to(tl.uint32)
    rid = tl.load(rid_ptr + rows, mask=rmask, other=0).to(tl.uint32)
    kb = tl.program_id(1)
    z = _normals_tile(cls, rid, seed_lo.to(tl.uint32), seed_hi.to(tl.uint32), kb, BM, BK)
    kz = kb * BK + tl.arange(0, BK)
    tl.store(z_ptr + rows[:, None] * Z + kz[None, :], z,
             mask=rmask[:, None] & (kz < Z)[None, :])


@triton.jit(do_not_specialize=["seed_lo", "seed_hi", "n_rows"])
def _hidden_kernel(cls_ptr, rid_ptr, cidx_ptr, cond_ptr, w_ptr, h_ptr, n_rows, H, Z,
                   seed_lo, seed_hi, stride_cond, stride_w, stride_h, slope,
                   BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
                   UPCAST: tl.constexpr, GROUP_M: tl.constexpr):
    """h = LReLU(z W_z^T + cond[cond_index]) for BM rows x BN hidden units, z from Philox."""
    pid_m, pid_n = _tile_ids(tl.cdiv(n_rows, BM), tl.cdiv(H, BN), GROUP_M)
    rows = pid_m.to(tl.int64) * BM + tl.arange(0, BM)
    rmask = rows < n_rows
    cols = pid_n * BN + tl.arange(0, BN)
    cmask = cols < H
    cls = tl.load(cls_ptr + rows, mask=rmask, other=0).to(tl.uint32)
    rid = tl.load(rid_ptr + rows, mask=rmask, other=0).to(tl.uint32)
    k0 = seed_lo.to(tl.uint32)
    k1 = seed_hi.to(tl.uint32)
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for kb in range(0, tl.cdiv(Z, BK)):
        kz = kb * BK + tl.arange(0, BK)
        kmask = kz < Z
        z = _normals_tile(cls, rid, k0, k1, kb, BM, BK)
        a = _cast(tl.where(kmask[None, :], z, 0.0), tl.bfloat16, UPCAST)
        w = tl.load(w_ptr + cols[None, :].to(tl.int64) * stride_w + kz[:, None],
                    mask=kmask[:, None] & cmask[None, :], other=0.0)
        if UPCAST:
            acc = tl.dot(a.to(tl.float32), w.to(tl.float32), acc)
        else:
            acc = tl.dot(a, w, acc)
    ci = tl.load(cidx_ptr + rows, mask=rmask, other=0)
    mask = rmask[:, None] & cmask[None, :]
    cond = tl.load(cond_ptr + ci[:, None] * stride_cond + cols[None, :], mask=mask, other=0.0)
    h = acc + cond
    h = tl.where(h > 0.0, h, h * slope)
    tl.store(h_ptr + rows[:, None] * stride_h + cols[None, :],
             _cast(h, h_ptr.dtype.element_ty, UPCAST), mask=mask)


@triton.jit
def _tile_ids(n_m, n_n, GROUP_M: tl.constexpr):
    """(row tile, column tile) of this program on a 1-D grid of n_m * n_n, grouped: GROUP_M
    row tiles sweep the column tiles together, so that their A tiles are re-read from L2
    rather than from HBM (the row tiles' A operand is read once per column tile)."""
    pid = tl.program_id(0)
    width = GROUP_M * n_n
    first_m = (pid // width) * GROUP_M
    size_m = tl.minimum(n_m - first_m, GROUP_M)
    return first_m + (pid % width) % size_m, (pid % width) // size_m


@triton.jit
def _gemm_tile(x_ptr, w_ptr, rows, rmask, cols, cmask, K, stride_x, stride_w,
               BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, UPCAST: tl.constexpr):
    """acc (BM, BN) fp32 = x[rows, :K] @ w[cols, :K]^T (bf16 operands)."""
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for k0 in range(0, K, BK):
        kk = k0 + tl.arange(0, BK)
        kmask = kk < K
        a = tl.load(x_ptr + rows[:, None] * stride_x + kk[None, :],
                    mask=rmask[:, None] & kmask[None, :], other=0.0)
        w = tl.load(w_ptr + cols[None, :].to(tl.int64) * stride_w + kk[:, None],
                    mask=kmask[:, None] & cmask[None, :], other=0.0)
        if UPCAST:
            acc = tl.dot(a.to(tl.float32), w.to(tl.float32), acc)
        else:
            acc = tl.dot(a, w, acc)
    return acc


@triton.jit(do_not_specialize=["n_rows", "a1"])
def _linear_act_kernel(x_ptr, w_ptr, b_ptr, res_ptr, y_ptr, n_rows, N, K,
                       stride_x, stride_w, stride_res, stride_y, a1, slope,
                       FBADD: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
                       BK: tl.constexpr, UPCAST: tl.constexpr, GROUP_M: tl.constexpr):
    """y = LReLU(x W^T + b), or with FBADD y = res + a1 LReLU(x W^T + b) (res may be y)."""
    pid_m, pid_n = _tile_ids(tl.cdiv(n_rows, BM), tl.cdiv(N, BN), GROUP_M)
    rows = pid_m.to(tl.int64) * BM + tl.arange(0, BM)
    rmask = rows < n_rows
    cols = pid_n * BN + tl.arange(0, BN)
    cmask = cols < N
    acc = _gemm_tile(x_ptr, w_ptr, rows, rmask, cols, cmask, K, stride_x, stride_w,
                     BM, BN, BK, UPCAST)
    b = tl.load(b_ptr + cols, mask=cmask, other=0.0)
    y = acc + b[None, :]
    y = tl.where(y > 0.0, y, y * slope)
    mask = rmask[:, None] & cmask[None, :]
    if FBADD:
        r = tl.load(res_ptr + rows[:, None] * stride_res + cols[None, :], mask=mask, other=0.0)
        y = r.to(tl.float32) + a1 * y
    tl.store(y_ptr + rows[:, None] * stride_y + cols[None, :],
             _cast(y, y_ptr.dtype.element_ty, UPCAST), mask=mask)


@triton.jit(do_not_specialize=["n_rows"])
def _linear_norm_kernel(x_ptr, w_ptr, b_ptr, scr_ptr, y_ptr, n_rows, N, K,
                        stride_x, stride_w, stride_scr, stride_y, eps,
                        ONE_TILE: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
                        BK: tl.constexpr, UPCAST: tl.constexpr):
    """y = normalize(x W^T + b) over the whole row (all N columns) for BM rows."""
    pid_m = tl.program_id(0)
    rows = pid_m.to(tl.int64) * BM + tl.arange(0, BM)
    rmask = rows < n_rows
    if ONE_TILE:
        cols = tl.arange(0, BN)
        cmask = cols < N
        acc = _gemm_tile(x_ptr, w_ptr, rows, rmask, cols, cmask, K, stride_x, stride_w,
                         BM, BN, BK, UPCAST)
        b = tl.load(b_ptr + cols, mask=cmask, other=0.0)
        y = tl.where(cmask[None, :], acc + b[None, :], 0.0)
        inv = 1.0 / tl.maximum(tl.sqrt(tl.sum(y * y, axis=1)), eps)
        tl.store(y_ptr + rows[:, None] * stride_y + cols[None, :],
                 _cast(y * inv[:, None], y_ptr.dtype.element_ty, UPCAST),
                 mask=rmask[:, None] & cmask[None, :])
    else:
        ss = tl.zeros((BM,), dtype=tl.float32)
        for n0 in range(0, N, BN):
            cols = n0 + tl.arange(0, BN)
            cmask = cols < N
            acc = _gemm_tile(x_ptr, w_ptr, rows, rmask, cols, cmask, K, stride_x, stride_w,
                             BM, BN, BK, UPCAST)
            b = tl.load(b_ptr + cols, mask=cmask, other=0.0)
            y = tl.where(cmask[None, :], acc + b[None, :], 0.0)
            ss += tl.sum(y * y, axis=1)
            tl.store(scr_ptr + rows[:, None] * stride_scr + cols[None, :], y,
                     mask=rmask[:, None] & cmask[None, :])
        inv = 1.0 / tl.maximum(tl.sqrt(ss), eps)
        tl.debug_barrier()  # the second pass may read tiles other threads wrote
        for n0 in range(0, N, BN):
            cols = n0 + tl.arange(0, BN)
            mask = rmask[:, None] & (cols < N)[None, :]
            y = tl.load(scr_ptr + rows[:, None] * stride_scr + cols[None, :], mask=mask,
                        other=0.0)
            tl.store(y_ptr + rows[:, None] * stride_y + cols[None, :],
                     _cast(y * inv[:, None], y_ptr.dtype.element_ty, UPCAST), mask=mask)


_INTERPRETED = type(_linear_act_kernel).__name__ == "InterpretedFunction"


# ----------------------------------------------------------------------------------- host code
class _Tiles:
    __slots__ = ("bm", "bn_hidden", "bk_hidden", "bn", "bk", "bn_norm", "warps", "stages",
                 "group_m")

    def __init__(self, bm, bn_hidden, bk_hidden, bn, bk, bn_norm, warps, stages, group_m):
        self.bm, self.bn_hidden, self.bk_hidden = bm, bn_hidden, bk_hidden
        self.bn, self.bk, self.bn_norm = bn, bk, bn_norm
        self.warps, self.stages, self.group_m = warps, stages, group_m


def _tiles(H: int, D: int, Z: int, interpreted: bool) -> _Tiles:
    """Tile sizes. Interpreter: 16 everywhere (row groups of 2), so that tiny test shapes cross
    tile boundaries in every dimension. GPU (sm_80/sm_90 first guesses, untuned): 128-row
    tiles, 128-wide N tiles (256 for the Philox-fed GEMM: each H tile regenerates z, so wider
    tiles halve that work), K tiles of 64 (32 for the Philox-fed GEMM, whose A tile is
    computed), 8 warps, 3 stages, groups of 8 row tiles."""
    if interpreted:
        return _Tiles(16, 16, 16, 16, 16, 16, 4, 1, 2)
    bk_h = pow2_block(Z, 16, 32)
    return _Tiles(128, pow2_block(H, 16, 256), bk_h, pow2_block(H, 16, 128), 64,
                  pow2_block(D, 16, 128), 8, 3, 8)


def chunk_rows(H: int, D: int, bm: int = 128) -> int:
    """Rows per pass: the chunk's scratch (h, d, t in bf16; x1 in bf16; raw y in fp32) stays
    near SCRATCH_BYTES, at most MAX_CHUNK_ROWS, a multiple of the row tile."""
    per_row = 3 * 2 * H + 2 * D + 4 * D
    rows = max(bm, min(MAX_CHUNK_ROWS, SCRATCH_BYTES // max(per_row, 1)))
    return rows // bm * bm


def flops_per_row(H: int, D: int, Z: int, feedback: bool = True) -> int:
    """GEMM FLOPs of one synthesised row (2 per multiply-add)."""
    if not feedback:
        return 2 * (Z * H + H * D)
    return 2 * (Z * H + 2 * H * D + D * H + 2 * H * H)


def _check(cond, cond_index, class_ids, row_ids, w_z, w_out, b_out, w_dec, b_dec, w_fb1, b_fb1,
           w_fb2, b_fb2, out_dtype):
    H, Z = w_z.shape if w_z.dim() == 2 else (-1, -1)
    torch._check(w_z.dim() == 2 and w_out.dim() == 2,
                 lambda: "tfvaegan_synthesize_triton: w_z must be (H, Z) and w_out (D, H)")
    D = w_out.shape[0]
    want = {"cond": (cond.shape[0], H), "w_out": (D, H), "b_out": (D,), "w_dec": (H, D),
            "b_dec": (H,), "w_fb1": (H, H), "b_fb1": (H,), "w_fb2": (H, H), "b_fb2": (H,)}
    got = {"cond": cond, "w_out": w_out, "b_out": b_out, "w_dec": w_dec, "b_dec": b_dec,
           "w_fb1": w_fb1, "b_fb1": b_fb1, "w_fb2": w_fb2, "b_fb2": b_fb2}
    for name, t in got.items():
        torch._check(tuple(t.shape) == want[name], lambda n=name, t=t: (
            f"tfvaegan_synthesize_triton: {n} must be {want[n]}, got {tuple(t.shape)}"))
    gemm = ("w_z", "w_out", "w_dec", "w_fb1", "w_fb2")  # float32 or bfloat16: bf16 inside
    for name, t in {"w_z": w_z, **got}.items():
        ok = (t.dtype in (torch.float32, torch.bfloat16) and t.dtype == w_z.dtype) \
            if name in gemm else t.dtype == torch.float32
        torch._check(ok, lambda n=name, t=t: (
            f"tfvaegan_synthesize_triton: {n} must be float32 (GEMM weights: float32 or "
            f"bfloat16, cast to bf16 inside), got {t.dtype}"))
        torch._check(t.device == w_z.device, lambda n=name: (
            f"tfvaegan_synthesize_triton: {n} is not on {w_z.device}"))
    n = class_ids.shape[0]
    for name, t in (("cond_index", cond_index), ("class_ids", class_ids), ("row_ids", row_ids)):
        torch._check(t.dim() == 1 and t.shape[0] == n and t.dtype == torch.int64, lambda nm=name: (
            f"tfvaegan_synthesize_triton: {nm} must be ({n},) int64"))
    torch._check(out_dtype in OUT_DTYPES, lambda: (
        f"tfvaegan_synthesize_triton: out_dtype must be one of {OUT_DTYPES} (float64 only on "
        f"the 'torch' backend), got {out_dtype}"))
    return H, Z, D, n


@torch.library.custom_op("dfzsl_fast::tfvaegan_synthesize_triton", mutates_args=())
def tfvaegan_synthesize_triton(
    cond: torch.Tensor,
    cond_index: torch.Tensor,
    class_ids: torch.Tensor,
    row_ids: torch.Tensor,
    w_z: torch.Tensor,
    w_out: torch.Tensor,
    b_out: torch.Tensor,
    w_dec: torch.Tensor,
    b_dec: torch.Tensor,
    w_fb1: torch.Tensor,
    b_fb1: torch.Tensor,
    w_fb2: torch.Tensor,
    b_fb2: torch.Tensor,
    seed: int,
    a1: float,
    feedback: bool,
    out_dtype: torch.dtype,
) -> torch.Tensor:
    """Triton kernel of `dfzsl_fast::tfvaegan_synthesize` (see the module docstring). float32
    weights; returns (N, D) unit rows in out_dtype (float32, float16 or bfloat16)."""
    H, Z, D, n = _check(cond, cond_index, class_ids, row_ids, w_z, w_out, b_out, w_dec, b_dec,
                        w_fb1, b_fb1, w_fb2, b_fb2, out_dtype)
    dev = w_z.device
    if dev.type == "cpu" and not _INTERPRETED:
        raise RuntimeError(
            "tfvaegan_synthesize_triton: CPU tensors need the Triton interpreter; set "
            "TRITON_INTERPRET=1 before importing dfzsl_fast")
    out = torch.empty(n, D, dtype=out_dtype, device=dev)
    if n == 0:
        return out
    seed = int(seed) % (1 << 64)
    seed_lo, seed_hi = seed & 0xFFFFFFFF, seed >> 32
    bf = torch.bfloat16
    wz, wo = w_z.to(bf).contiguous(), w_out.to(bf).contiguous()
    cond = cond.contiguous()
    b_out = b_out.contiguous()
    if feedback:
        wd, w1, w2 = w_dec.to(bf).contiguous(), w_fb1.to(bf).contiguous(), w_fb2.to(bf).contiguous()
        b_dec, b_fb1, b_fb2 = b_dec.contiguous(), b_fb1.contiguous(), b_fb2.contiguous()
    cls_all = class_ids.contiguous()
    rid_all = row_ids.contiguous()
    cidx_all = cond_index.contiguous()
    tiles = _tiles(H, D, Z, _INTERPRETED)
    chunk = _CHUNK_OVERRIDE or chunk_rows(H, D, tiles.bm)
    rows = min(chunk, n)
    h = torch.empty(rows, H, dtype=bf, device=dev)
    one_tile = D <= tiles.bn_norm
    scr = out if one_tile else torch.empty(rows, D, dtype=torch.float32, device=dev)
    if feedback:
        x1 = torch.empty(rows, D, dtype=bf, device=dev)
        d = torch.empty(rows, H, dtype=bf, device=dev)
        t = torch.empty(rows, H, dtype=bf, device=dev)
    opts = {"num_warps": tiles.warps, "num_stages": tiles.stages}
    up = _INTERPRETED
    ctx = torch.cuda.device(dev) if dev.type == "cuda" else contextlib.nullcontext()
    with ctx:
        for s in range(0, n, chunk):
            m = min(chunk, n - s)
            gm = triton.cdiv(m, tiles.bm)
            _hidden_kernel[(gm * triton.cdiv(H, tiles.bn_hidden),)](
                cls_all[s:], rid_all[s:], cidx_all[s:], cond, wz, h, m, H, Z, seed_lo, seed_hi,
                cond.stride(0), wz.stride(0), h.stride(0), SLOPE,
                BM=tiles.bm, BN=tiles.bn_hidden, BK=tiles.bk_hidden, UPCAST=up,
                GROUP_M=tiles.group_m, **opts)
            o = out[s:]
            first = x1 if feedback else o
            _linear_norm_kernel[(gm,)](
                h, wo, b_out, scr, first, m, D, H, h.stride(0), wo.stride(0), scr.stride(0),
                first.stride(0), EPS, ONE_TILE=one_tile, BM=tiles.bm, BN=tiles.bn_norm,
                BK=tiles.bk, UPCAST=up, **opts)
            if not feedback:
                continue
            gh = (gm * triton.cdiv(H, tiles.bn),)
            for x, w, b, y in ((x1, wd, b_dec, d), (d, w1, b_fb1, t)):
                _linear_act_kernel[gh](
                    x, w, b, y, y, m, H, x.shape[1], x.stride(0), w.stride(0), y.stride(0),
                    y.stride(0), 0.0, SLOPE, FBADD=False, BM=tiles.bm, BN=tiles.bn, BK=tiles.bk,
                    UPCAST=up, GROUP_M=tiles.group_m, **opts)
            _linear_act_kernel[gh](  # hf = h + a1 LReLU(t W_fb2^T + b_fb2), in place over h
                t, w2, b_fb2, h, h, m, H, H, t.stride(0), w2.stride(0), h.stride(0),
                h.stride(0), float(a1), SLOPE, FBADD=True, BM=tiles.bm, BN=tiles.bn, BK=tiles.bk,
                UPCAST=up, GROUP_M=tiles.group_m, **opts)
            _linear_norm_kernel[(gm,)](
                h, wo, b_out, scr, o, m, D, H, h.stride(0), wo.stride(0), scr.stride(0),
                o.stride(0), EPS, ONE_TILE=one_tile, BM=tiles.bm, BN=tiles.bn_norm, BK=tiles.bk,
                UPCAST=up, **opts)
    return out


#: Tests set this to a small multiple of the row tile to exercise the chunk loop.
_CHUNK_OVERRIDE: int | None = None


@tfvaegan_synthesize_triton.register_fake
def _fake(cond, cond_index, class_ids, row_ids, w_z, w_out, b_out, w_dec, b_dec, w_fb1, b_fb1,
          w_fb2, b_fb2, seed, a1, feedback, out_dtype):
    _check(cond, cond_index, class_ids, row_ids, w_z, w_out, b_out, w_dec, b_dec, w_fb1, b_fb1,
           w_fb2, b_fb2, out_dtype)
    return w_z.new_empty(class_ids.shape[0], w_out.shape[0], dtype=out_dtype)


# --------------------------------------------------------------------------- test/check helpers
def philox_words(seed: int, class_ids: torch.Tensor, row_ids: torch.Tensor,
                 j: torch.Tensor) -> torch.Tensor:
    """(M, 4) int64: the kernel's Philox words of counters (j, STAGE_SYNTH, row_ids, class_ids)
    (1-D int64 tensors of one length, values < 2^32) for the 64-bit key `seed`."""
    seed = int(seed) % (1 << 64)
    M = class_ids.numel()
    out = torch.zeros(M, 4, dtype=torch.int64, device=class_ids.device)
    if M:
        _philox_words_kernel[(triton.cdiv(M, 64),)](
            class_ids.contiguous(), row_ids.contiguous(), j.contiguous(), out, M,
            seed & 0xFFFFFFFF, seed >> 32, BLOCK=64)
    return out


def normals(seed: int, class_ids: torch.Tensor, row_ids: torch.Tensor, Z: int) -> torch.Tensor:
    """(n, Z) float32: the normals the hidden kernel generates (its `_normals_tile`)."""
    seed = int(seed) % (1 << 64)
    n = class_ids.numel()
    z = torch.zeros(n, Z, dtype=torch.float32, device=class_ids.device)
    if n and Z:
        bk = 16
        _normals_kernel[(triton.cdiv(n, 16), triton.cdiv(Z, bk))](
            class_ids.contiguous(), row_ids.contiguous(), z, n, Z, seed & 0xFFFFFFFF, seed >> 32,
            BM=16, BK=bk)
    return z


_DEVS, _NOTES = _devices((torch.float32, torch.bfloat16))  # of the GEMM weights
_backend.register(
    "tfvaegan_synthesize", "triton", torch.ops.dfzsl_fast.tfvaegan_synthesize_triton,
    devices=_DEVS, notes=_NOTES,
)
