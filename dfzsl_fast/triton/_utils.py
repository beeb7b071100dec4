"""Launch heuristics of the Triton kernels (house style, section 8: BLOCK_* choices live here).

Only imported when triton is importable (`dfzsl_fast.triton.HAS_TRITON`).
"""

from __future__ import annotations

import torch
import triton

__all__ = ["pow2_block", "dot_precision", "CosineBlocks", "cosine_blocks"]


def pow2_block(n: int, lo: int, hi: int) -> int:
    """The smallest power of two >= n, clamped to [lo, hi] (lo, hi powers of two)."""
    return max(lo, min(hi, triton.next_power_of_2(max(int(n), 1))))


def dot_precision(dtype: torch.dtype, interpreted: bool) -> str:
    """`input_precision` of tl.dot for float32 operands, following torch's own matmul setting.

    "highest" (torch's default) -> "ieee" (true float32 products, as torch.mm computes them);
    "high" -> "tf32x3"; "medium" -> "tf32". Half operands ignore it (tensor cores, fp32
    accumulate). The interpreter computes with NumPy in float32 whatever the setting.
    """
    if dtype != torch.float32 or interpreted:
        return "ieee"
    try:
        mode = torch.get_float32_matmul_precision()
    except Exception:  # pragma: no cover
        mode = "highest"
    return {"high": "tf32x3", "medium": "tf32"}.get(mode, "ieee")


class CosineBlocks:
    """Tile sizes and launch options of one cosine kernel launch."""

    __slots__ = ("block_m", "block_n", "block_k", "block_d", "num_warps", "num_stages")

    def __init__(self, block_m, block_n, block_k, block_d, num_warps, num_stages):
        self.block_m = block_m
        self.block_n = block_n
        self.block_k = block_k
        self.block_d = block_d
        self.num_warps = num_warps
        self.num_stages = num_stages

    def __repr__(self) -> str:  # pragma: no cover - debugging aid
        return (
            f"CosineBlocks(M={self.block_m}, N={self.block_n}, K={self.block_k}, "
            f"D={self.block_d}, warps={self.num_warps}, stages={self.num_stages})"
        )


#: Caps on the tiles under the interpreter: small, so that the tiny test shapes still cross tile
#: boundaries in every dimension (rows, classes, K and the gradient's d tiles).
_INTERP_CAP = 32
#: Largest d tile of a gradient accumulator on a GPU ((BLOCK_M, BLOCK_D) float32 in registers).
#: Larger d is split over a second grid axis; each d tile then recomputes the logits.
GPU_MAX_BLOCK_D = 256


def cosine_blocks(
    kind: str, N: int, C: int, d: int, dtype: torch.dtype, interpreted: bool, k: int = 1
) -> CosineBlocks:
    """Tiles for `kind` in {"logits", "ce_fwd", "ce_fwd_grad", "ce_bwd_w", "topk"}.

    GPU values are first guesses for sm_80/sm_90 (not yet tuned on a GPU): 64-128 row and class
    tiles, K tiles of 64 (32 for float32, whose operands are twice as wide), and at most
    GPU_MAX_BLOCK_D accumulator columns. Every tile is >= 16 (tl.dot's minimum).
    """
    if interpreted:
        cap = _INTERP_CAP
        bm = pow2_block(N, 16, cap)
        bn = pow2_block(C, 16, cap)
        bk = pow2_block(d, 16, cap)
        bd = pow2_block(d, 16, cap)
        if kind == "ce_bwd_w":
            bm, bn = pow2_block(N, 16, cap), pow2_block(C, 16, cap)
        if kind == "topk":
            bn = max(bn, triton.next_power_of_2(k))
        return CosineBlocks(bm, bn, bk, bd, 4, 1)

    half = dtype in (torch.float16, torch.bfloat16)
    bk = pow2_block(d, 16, 64 if half else 32)
    stages = 3 if half else 2
    if kind == "logits":
        bm = pow2_block(N, 16, 128)
        bn = pow2_block(C, 16, 128)
        return CosineBlocks(bm, bn, bk, 16, 8 if bm * bn >= 128 * 128 else 4, stages)
    if kind == "ce_fwd":
        bm = pow2_block(N, 16, 128)
        bn = pow2_block(C, 16, 64)
        return CosineBlocks(bm, bn, bk, 16, 8 if bm >= 128 else 4, stages)
    if kind in ("ce_fwd_grad", "ce_bwd_w"):
        bm = pow2_block(N, 16, 64)
        bn = pow2_block(C, 16, 64)
        bd = pow2_block(d, 16, GPU_MAX_BLOCK_D)
        warps = 8 if bd >= 128 else 4
        return CosineBlocks(bm, bn, bk, bd, warps, 2 if bd >= 256 else stages)
    if kind == "topk":
        bm = pow2_block(N, 16, 64)
        bn = max(pow2_block(C, 16, 64), triton.next_power_of_2(k))
        return CosineBlocks(bm, bn, bk, 16, 4, stages)
    raise ValueError(f"cosine_blocks: unknown kernel kind {kind!r}")
