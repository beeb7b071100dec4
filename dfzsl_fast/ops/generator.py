"""`dfzsl_fast::tfvaegan_synthesize`: the fused TF-VAEGAN synthesis forward, routed to a backend.

Kernels: C++ CPU (`csrc/cpu/generator_cpu.cpp`: float32 weights, tiles of a fixed row count so
that a row never depends on its neighbours, noise drawn per tile, the condition term hoisted,
LeakyReLU / feedback add / normalisation fused around ATen's GEMM), Triton
(`triton/generator.py`, GPUs) and the reference (`reference/generator.py`, eager PyTorch in the
weights' dtype, float64 capable) as the default kernel and "torch" backend. Inference only: no
autograd formula (training uses the eager networks).

This module holds the fake kernel, the default-kernel registration, the "torch" entry of the
backend table, and `tfvaegan_synthesize`, the checked wrapper `synthesis.TFVAEGANGenerator`
calls.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from .. import _backend, _load  # noqa: F401  (_load fills the backend table)
from .._checks import check_index_vector, check_seed
from ..reference import generator as ref
from ..reference.philox import MAX_INDEX
from . import _library  # noqa: F401  (defines the schema)

__all__ = ["SynthesisWeights", "tfvaegan_synthesize", "OUT_DTYPES"]

_OP = "tfvaegan_synthesize"
_DTYPES = (torch.float32, torch.float64, torch.bfloat16)  # of the GEMM weights
#: Output formats: the stored formats of feature shards (float64 on the reference only).
OUT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


@torch.library.register_fake("dfzsl_fast::tfvaegan_synthesize")
def _fake(cond, cond_index, class_ids, row_ids, w_z, w_out, b_out, w_dec, b_dec, w_fb1, b_fb1,
          w_fb2, b_fb2, seed, a1, feedback, out_dtype):
    torch._check(w_out.dim() == 2, lambda: "tfvaegan_synthesize: w_out must be (D, H)")
    return w_z.new_empty(class_ids.shape[0], w_out.shape[0], dtype=out_dtype)


@torch.library.register_kernel("dfzsl_fast::tfvaegan_synthesize", "default")
def _default(*args):
    with torch.no_grad():
        return ref.tfvaegan_synthesize(*args)


_backend.register(_OP, "torch", ref.tfvaegan_synthesize,
                  devices={"cpu": _DTYPES, "cuda": _DTYPES})


class SynthesisWeights(NamedTuple):
    """The weights the synthesis forward reads, split out of a `TFVAEGAN` (`from_model`).

    Shapes (H hidden, Z latent, A embedding, D feature width): w_z (H, Z), w_a (H, A), b1 (H,)
    [G's first layer split into its z and a halves], w_out (D, H), b_out (D,) [G's output
    layer], w_dec (H, D), b_dec (H,) [the decoder's hidden layer], w_fb1, w_fb2 (H, H), b_fb1,
    b_fb2 (H,) [feedback F]. One device for all. dtypes: the five GEMM weights (w_z, w_out,
    w_dec, w_fb1, w_fb2) in the compute dtype (float32, bfloat16, or float64 on the reference);
    w_a and the biases in the epilogue dtype (float64 with float64 GEMM weights, else float32).
    """

    w_z: torch.Tensor
    w_a: torch.Tensor
    b1: torch.Tensor
    w_out: torch.Tensor
    b_out: torch.Tensor
    w_dec: torch.Tensor
    b_dec: torch.Tensor
    w_fb1: torch.Tensor
    b_fb1: torch.Tensor
    w_fb2: torch.Tensor
    b_fb2: torch.Tensor

    @classmethod
    def from_model(cls, model, compute_dtype: torch.dtype | None = None) -> SynthesisWeights:
        """Detached copies of a `TFVAEGAN`'s G, decoder hidden layer and F; the GEMM weights in
        `compute_dtype` (None: the model's dtype; torch.bfloat16: the bf16 mode)."""
        G, Dec, Fb = model.generator, model.decoder, model.feedback
        Z = model.latent_dim
        w1 = G.fc1.weight.detach()
        mats = [w1[:, :Z], G.fc3.weight, Dec.fc1.weight, Fb.fc1.weight, Fb.fc2.weight]
        wz, wo, wd, wf1, wf2 = (
            m.detach().to(compute_dtype or m.dtype).contiguous() for m in mats)
        return cls(
            wz, w1[:, Z:].contiguous(), G.fc1.bias.detach(),
            wo, G.fc3.bias.detach(),
            wd, Dec.fc1.bias.detach(),
            wf1, Fb.fc1.bias.detach(),
            wf2, Fb.fc2.bias.detach(),
        )

    def check(self) -> tuple[int, int, int, int]:
        """(H, Z, A, D) after checking shapes, dtypes, one device and finite values."""
        H, Z = self.w_z.shape
        A, D = self.w_a.shape[1], self.w_out.shape[0]
        want = {"w_z": (H, Z), "w_a": (H, A), "b1": (H,), "w_out": (D, H), "b_out": (D,),
                "w_dec": (H, D), "b_dec": (H,), "w_fb1": (H, H), "b_fb1": (H,),
                "w_fb2": (H, H), "b_fb2": (H,)}
        if self.w_z.dtype not in _DTYPES:
            raise TypeError(f"weights.w_z: expected float32, bfloat16 or float64, got "
                            f"{self.w_z.dtype}")
        edt = epilogue_dtype(self.w_z.dtype)
        for name, shape in want.items():
            t = getattr(self, name)
            dt = self.w_z.dtype if name in _GEMM_WEIGHTS else edt
            if tuple(t.shape) != shape:
                raise ValueError(f"weights.{name}: expected shape {shape}, got {tuple(t.shape)}")
            if t.dtype != dt or t.device != self.w_z.device:
                raise ValueError(f"weights.{name}: expected {dt} on {self.w_z.device}, got "
                                 f"{t.dtype} on {t.device}")
            if not bool(torch.isfinite(t).all()):
                raise ValueError(f"weights.{name}: holds NaN or Inf values")
        return H, Z, A, D


_GEMM_WEIGHTS = ("w_z", "w_out", "w_dec", "w_fb1", "w_fb2")


def epilogue_dtype(compute_dtype: torch.dtype) -> torch.dtype:
    """dtype of the condition, biases and epilogues for GEMM weights of `compute_dtype`."""
    return torch.float64 if compute_dtype == torch.float64 else torch.float32


_COND_TILE = 256


def hoisted_condition(emb: torch.Tensor, w_a: torch.Tensor, b1: torch.Tensor) -> torch.Tensor:
    """cond (K, H) = emb (K, A) @ w_a^T + b1: G's first layer on the class embeddings, once per
    class.

    Computed in zero-padded tiles of a fixed row count so that every GEMM has the same shape:
    BLAS picks its kernel (and summation order) by shape, e.g. a matrix-vector path for one
    row, so without padding a class's condition, and so its rows, would depend on how many
    other classes share the call.
    """
    K, A = emb.shape
    out = torch.empty(K, w_a.shape[0], dtype=w_a.dtype, device=w_a.device)
    tile = emb.new_zeros(_COND_TILE, A)
    for s in range(0, K, _COND_TILE):
        m = min(_COND_TILE, K - s)
        tile[:m] = emb[s : s + m]
        tile[m:] = 0
        out[s : s + m] = torch.addmm(b1, tile, w_a.T)[:m]
    return out


def tfvaegan_synthesize(
    weights: SynthesisWeights,
    embeddings: torch.Tensor,
    class_ids: torch.Tensor,
    row_ids: torch.Tensor,
    *,
    seed: int,
    a1: float,
    feedback: bool = True,
    out_dtype: torch.dtype = torch.float32,
    backend: str | None = None,
) -> torch.Tensor:
    """Synthesise rows (class_ids[i], row_ids[i]) with TF-VAEGAN weights (no grad).

    Args:
        weights: `SynthesisWeights` (GEMM weights float32 or bfloat16; float64 on "torch").
        embeddings: (C, A) unit class embeddings, already normalised as in training; the
            condition term W_a a_c + b1 is computed once per distinct class of the call.
        class_ids: (N,) int class of each row, in [0, C) and < 2^32 (its noise stream).
        row_ids: (N,) int index of each row within its class, in [0, 2^32).
        seed: noise seed in [0, 2^63).
        a1: feedback weight (0 and feedback=True still run F, as the reference does).
        feedback: False gives G(z, a) alone.
        out_dtype: float32, float16, bfloat16 (float64 on the "torch" backend).
        backend: "native", "triton", "torch" or None (auto).

    Returns:
        (N, D) unit rows in `out_dtype`, on the weights' device.
    """
    if not isinstance(weights, SynthesisWeights):
        raise TypeError(f"weights: expected SynthesisWeights, got {type(weights).__name__}")
    H, Z, A, D = weights.check()
    seed = check_seed(seed)
    if isinstance(a1, bool) or not isinstance(a1, (int, float)) or not math.isfinite(a1):
        raise TypeError(f"a1: expected a finite number, got {a1!r}")
    dev, dt = weights.w_z.device, weights.w_z.dtype
    edt = epilogue_dtype(dt)
    if not isinstance(embeddings, torch.Tensor) or embeddings.dim() != 2:
        raise ValueError("embeddings: expected a (C, A) tensor")
    if embeddings.shape[1] != A:
        raise ValueError(f"embeddings: width {embeddings.shape[1]} does not match the "
                         f"generator's embedding width {A}")
    if out_dtype not in OUT_DTYPES:
        raise TypeError(f"out_dtype: expected one of {OUT_DTYPES}, got {out_dtype}")
    C = embeddings.shape[0]
    cls = check_index_vector(class_ids, "class_ids", None, min(C, MAX_INDEX))
    rows = check_index_vector(row_ids, "row_ids", cls.numel(), MAX_INDEX)
    cls, rows = cls.to(dev).contiguous(), rows.to(dev).contiguous()
    uniq, inv = torch.unique(cls, return_inverse=True)
    emb = embeddings.detach().to(device=dev, dtype=edt)[uniq]
    if not bool(torch.isfinite(emb).all()):
        raise ValueError("embeddings: the rows of the requested classes hold NaN or Inf values")
    with torch.no_grad():
        cond = hoisted_condition(emb, weights.w_a, weights.b1)
        _, fn = _backend.select(_OP, dev, dt, backend)
        return fn(cond, inv.contiguous(), cls, rows, weights.w_z, weights.w_out, weights.b_out,
                  weights.w_dec, weights.b_dec, weights.w_fb1, weights.b_fb1, weights.w_fb2,
                  weights.b_fb2, int(seed), float(a1), bool(feedback), out_dtype)
