"""The latent noise of synthesis: row r of class c, a pure function of (seed, c, r).

Every feature generator of the package draws its latent z for row ``r`` of class ``c`` from the
counter-based Philox4x32-10 stream of ``csrc/include/dfzsl/philox.h`` with

    key     = (seed_lo, seed_hi)                       the 64-bit synthesis seed
    counter = (j, STAGE_SYNTH, r, c)                   block j gives z[4j .. 4j+3]

and Box-Muller on the block's two word pairs (``fastmath.h: box_muller``): z[4j], z[4j+1] from
words (0, 1), z[4j+2], z[4j+3] from words (2, 3). Nothing depends on which other rows are drawn
in the same call, so batch size, thread count, process count and class order cannot change a
row; the native and Triton kernels compute the same words, and the normals agree to float
rounding (they evaluate log and sincos in float32, this reference in float64).

This module is the pure-PyTorch reference (int64 arithmetic emulating uint32 products); the
kernels draw the noise themselves and never materialise an (N, Z) tensor.
"""

from __future__ import annotations

import math

import torch

__all__ = ["STAGE_SYNTH", "MAX_INDEX", "philox4x32_10", "synth_normals"]

#: Stage word of the synthesis stream (the vMF sampler uses 0 and 1, `vmf.h`).
STAGE_SYNTH = 2
#: Class ids and row ids are 32-bit counter words: both must lie in [0, MAX_INDEX).
MAX_INDEX = 1 << 32

_M0, _M1 = 0xD2511F53, 0xCD9E8D57
_W0, _W1 = 0x9E3779B9, 0xBB67AE85
_U32 = 0xFFFFFFFF


def _mulhilo(a: int, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(hi, lo) 32-bit words of the 64-bit product a * b (a a uint32 constant, b uint32 in
    int64), without int64 overflow: b is split into 16-bit halves."""
    bl, bh = b & 0xFFFF, b >> 16
    p1, p2 = bl * a, bh * a  # each < 2^48
    hi = (p2 + (p1 >> 16)) >> 16
    lo = (p1 + ((p2 & 0xFFFF) << 16)) & _U32
    return hi, lo


def philox4x32_10(c0, c1, c2, c3, k0: int, k1: int):
    """Ten Philox4x32 rounds on int64 tensors holding uint32 words (broadcastable); returns the
    four output words."""
    for _ in range(10):
        hi0, lo0 = _mulhilo(_M0, c0)
        hi1, lo1 = _mulhilo(_M1, c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0 = (k0 + _W0) & _U32
        k1 = (k1 + _W1) & _U32
    return c0, c1, c2, c3


def _box_muller(w_radius: torch.Tensor, w_angle: torch.Tensor):
    u1 = ((w_radius >> 8).double() + 0.5) * 2.0**-24  # (0, 1), as u32_to_open_float
    r = torch.sqrt(-2.0 * torch.log(u1))
    t = 2.0 * math.pi * ((w_angle >> 8).double() * 2.0**-24)
    return r * torch.cos(t), r * torch.sin(t)


def synth_normals(
    seed: int,
    class_ids: torch.Tensor,
    row_ids: torch.Tensor,
    width: int,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Standard normals z (n, width) of rows (class_ids[i], row_ids[i]) of stream `seed`.

    Args:
        seed: int in [0, 2^64) (the key).
        class_ids, row_ids: (n,) integer tensors, values in [0, 2^32) (not checked here: the
            public entry points check them).
        width: Z >= 0.
        dtype: of the result (computed in float64).

    Returns:
        (n, width) tensor on class_ids' device.
    """
    n = int(class_ids.numel())
    dev = class_ids.device
    blocks = (width + 3) // 4
    if n == 0 or width == 0:
        return torch.zeros(n, width, dtype=dtype, device=dev)
    j = torch.arange(blocks, dtype=torch.int64, device=dev).view(1, blocks)
    r = row_ids.to(torch.int64).view(n, 1)
    c = class_ids.to(torch.int64).view(n, 1)
    stage = torch.full((1, 1), STAGE_SYNTH, dtype=torch.int64, device=dev)
    seed = int(seed) % (1 << 64)
    o0, o1, o2, o3 = philox4x32_10(
        j.expand(n, blocks), stage.expand(n, blocks), r.expand(n, blocks), c.expand(n, blocks),
        seed & _U32, seed >> 32,
    )
    z0, z1 = _box_muller(o0, o1)
    z2, z3 = _box_muller(o2, o3)
    z = torch.stack((z0, z1, z2, z3), dim=2).reshape(n, 4 * blocks)[:, :width]
    return z.to(dtype)
