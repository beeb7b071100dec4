"""The synthesis contract: `FeatureGenerator`, and its TF-VAEGAN and vMF implementations.

A feature generator maps (class embedding, class id, row id) to a feature row:

    generate(class_embeddings (C, A), class_ids (n,), row_ids (n,), *, seed) -> (n, D)

Row r of class c is a pure function of (seed, c, r) and the generator's weights: its noise comes
from the counter-based Philox stream of `reference.philox` (TF-VAEGAN, SHIP) or the vMF sampler's
per-row streams (vMF). So the same rows come out whatever the batch size, thread count, number
of processes or order of classes, and on another device to float rounding. `synthesize_to`
(writing shards) and the pipeline call nothing else.

Example:
    >>> gen = TFVAEGANGenerator(model)                     # a trained pipeline.generator model
    >>> x = gen.generate(text, torch.tensor([3, 3]), torch.tensor([0, 1]), seed=0)  # (2, D)
"""

from __future__ import annotations

import abc
import json
import math
from typing import Any

import torch
import torch.nn.functional as F

from .._checks import check_index_vector, check_seed
from ..hashing import fingerprint, sha256_text
from ..reference.philox import MAX_INDEX

__all__ = ["FeatureGenerator", "TFVAEGANGenerator", "VMFGenerator", "SHIPGenerator", "OUT_DTYPES",
           "generate_all"]

#: Output dtypes every generator supports (the stored formats of feature shards).
OUT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


class FeatureGenerator(abc.ABC):
    """A conditional feature generator behind the one synthesis path.

    Subclasses set `kind`, `embed_dim` (A) and `feature_dim` (D), and implement `_generate` and
    `describe`; `generate` checks the arguments first (so bad input fails before any work).
    """

    kind: str
    embed_dim: int
    feature_dim: int

    def generate(
        self,
        class_embeddings: torch.Tensor,
        class_ids: Any,
        row_ids: Any,
        *,
        seed: int,
        out_dtype: torch.dtype = torch.float32,
    ) -> torch.Tensor:
        """Features of rows (class_ids[i], row_ids[i]).

        Args:
            class_embeddings: (C, A) float class embeddings (any norm unless the generator says
                otherwise; only the rows named by class_ids are read, and must be finite).
            class_ids: (n,) ints in [0, C) and [0, 2^32).
            row_ids: (n,) ints in [0, 2^32): the index of each row within its class.
            seed: int in [0, 2^63).
            out_dtype: float32, float16 or bfloat16.

        Returns:
            (n, D) features in `out_dtype` on the generator's device.
        """
        e = class_embeddings
        if not isinstance(e, torch.Tensor) or not e.is_floating_point() or e.dim() != 2:
            what = type(e).__name__ if not isinstance(e, torch.Tensor) else \
                f"{e.dtype} tensor of shape {tuple(e.shape)}"
            raise TypeError(f"class_embeddings: expected a (C, {self.embed_dim}) float tensor, "
                            f"got {what}")
        if e.shape[1] != self.embed_dim:
            raise ValueError(f"class_embeddings: width {e.shape[1]} does not match the "
                             f"generator's embedding width {self.embed_dim}")
        cls = check_index_vector(class_ids, "class_ids", None, min(e.shape[0], MAX_INDEX))
        rows = check_index_vector(row_ids, "row_ids", cls.numel(), MAX_INDEX)
        seed = check_seed(seed)
        if out_dtype not in OUT_DTYPES:
            raise TypeError(f"out_dtype: expected one of {OUT_DTYPES}, got {out_dtype}")
        if cls.numel() and not bool(torch.isfinite(e.detach()[cls.unique().to(e.device)]).all()):
            raise ValueError("class_embeddings: the requested classes' rows hold NaN or Inf")
        if cls.numel() == 0:
            return torch.empty(0, self.feature_dim, dtype=out_dtype, device=self.device)
        return self._generate(e.detach(), cls, rows, seed, out_dtype)

    @abc.abstractmethod
    def _generate(self, e: torch.Tensor, cls: torch.Tensor, rows: torch.Tensor, seed: int,
                  out_dtype: torch.dtype) -> torch.Tensor:
        """`generate` after its checks: cls, rows (n,) int64 CPU, n >= 1."""

    @abc.abstractmethod
    def describe(self) -> dict[str, Any]:
        """JSON-able identity of the generator: kind, shapes, settings, weight fingerprint.
        Recorded in shard manifests; two generators with equal descriptions give equal rows."""

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def fingerprint(self) -> str:
        """16 hex digits of `describe()` (a manifest compares it on resume)."""
        return sha256_text(json.dumps(self.describe(), sort_keys=True))[:16]


class TFVAEGANGenerator(FeatureGenerator):
    """A trained TF-VAEGAN (`pipeline.generator.train_generator`) as a feature generator.

    Rows are G(z, a_c, F(Dec.hidden(G(z, a_c))), a2) (the reference `generate_syn_feature`),
    computed by the fused `dfzsl_fast::tfvaegan_synthesize` op; class embeddings are
    L2-normalised first, as in training.

    Args:
        model: a `TFVAEGAN` (its device is used; float32, or float64 on backend="torch").
        a2: feedback weight (None: `model.config.feedback_weight_syn`).
        use_feedback: False uses G(z, a) alone.
        backend: "native", "triton", "torch" or None (auto).
        compute_dtype: None (the model's dtype, float32) or torch.bfloat16: GEMMs on bf16
            operands with float32 accumulation and float32 epilogues (the GPU kernels' precision;
            on CPUs with AVX512-BF16 or AMX about twice the float32 rate). Rows then differ from
            float32 ones by bf16 rounding (~4e-3 relative), far below the spread of synthetic
            features; a different generator identity (`describe()`).
    """

    kind = "tfvaegan"

    def __init__(self, model, *, a2: float | None = None, use_feedback: bool = True,
                 backend: str | None = None, compute_dtype: torch.dtype | None = None) -> None:
        from ..models.tfvaegan import TFVAEGAN
        from ..ops.generator import SynthesisWeights

        if not isinstance(model, TFVAEGAN):
            raise TypeError(f"model: expected a TFVAEGAN, got {type(model).__name__}")
        if a2 is None:
            a2 = model.config.feedback_weight_syn
        if isinstance(a2, bool) or not isinstance(a2, (int, float)) or not math.isfinite(a2):
            raise TypeError(f"a2: expected a finite number, got {a2!r}")
        self.model = model
        self.a2 = float(a2)
        self.use_feedback = bool(use_feedback)
        self.backend = backend
        if compute_dtype not in (None, torch.float32, torch.bfloat16, torch.float64):
            raise TypeError(f"compute_dtype: expected None, torch.float32 or torch.bfloat16, "
                            f"got {compute_dtype!r}")
        self.weights = SynthesisWeights.from_model(model, compute_dtype)
        self.weights.check()
        self.embed_dim, self.feature_dim = model.embed_dim, model.feature_dim

    @property
    def device(self) -> torch.device:
        return self.weights.w_z.device

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, **self.model.shape_dict(), "a2": self.a2,
                "use_feedback": self.use_feedback,
                "compute_dtype": str(self.weights.w_z.dtype).replace("torch.", ""),
                "weights": fingerprint(*self.weights)}

    def _generate(self, e, cls, rows, seed, out_dtype):
        from ..ops.generator import tfvaegan_synthesize

        emb = F.normalize(e.to(self.device, self.weights.b1.dtype), dim=1)
        return tfvaegan_synthesize(self.weights, emb, cls, rows, seed=seed, a1=self.a2,
                                   feedback=self.use_feedback, out_dtype=out_dtype,
                                   backend=self.backend)


class VMFGenerator(FeatureGenerator):
    """vMF(normalize(class embedding), kappa_c) features (`generator.kind="vmf"`).

    Row r of class c is the vMF sampler's row with stream index c * 2^32 + r: a pure function
    of (seed, c, r) on the native and Triton backends; the "torch" reference seeds one generator
    per call, so there rows depend on how they are split into calls.

    Args:
        kappa: a number or (C,) concentrations >= 0 (one per class of the embeddings).
        dim: D = A, the embedding (and feature) width.
        wood_b: the sampler's envelope ("exact").
        backend: the sampler's backend (None: auto).
        device: where features are made (default CPU).
    """

    kind = "vmf"

    def __init__(self, kappa, dim: int, *, wood_b: str = "exact", backend: str | None = None,
                 device: str | torch.device = "cpu") -> None:
        k = torch.as_tensor(kappa, dtype=torch.float64)
        if k.dim() > 1 or not bool(torch.isfinite(k).all()) or bool((k < 0).any()):
            raise ValueError("kappa: expected a finite number or (C,) numbers >= 0")
        self.kappa = k.to(device)
        self.embed_dim = self.feature_dim = int(dim)
        self.wood_b, self.backend, self._device = wood_b, backend, torch.device(device)

    @property
    def device(self) -> torch.device:
        return self._device

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "dim": self.embed_dim, "wood_b": self.wood_b,
                "kappa": fingerprint(self.kappa)}

    def _generate(self, e, cls, rows, seed, out_dtype):
        from ..ops.vmf import sample_vmf

        if self.kappa.dim() == 1 and int(cls.max()) >= self.kappa.numel():
            raise ValueError(f"class_ids: kappa has {self.kappa.numel()} entries, got class "
                             f"{int(cls.max())}")
        n = cls.numel()
        out = torch.empty(n, self.feature_dim, dtype=out_dtype, device=self.device)
        # runs of consecutive rows of one class: one sampler call each, stream c * 2^32 + r
        brk = torch.ones(n, dtype=torch.bool)
        if n > 1:
            brk[1:] = (cls[1:] != cls[:-1]) | (rows[1:] != rows[:-1] + 1)
        starts = torch.nonzero(brk).flatten().tolist() + [n]
        emb = e.to(self.device, torch.float32)
        for s, t in zip(starts[:-1], starts[1:], strict=True):
            c = int(cls[s])
            kap = self.kappa[c] if self.kappa.dim() == 1 else self.kappa
            x, _ = sample_vmf(emb[c : c + 1], kap.reshape(1), n_per_class=t - s, seed=seed,
                              offset=c * MAX_INDEX + int(rows[s]), wood_b=self.wood_b,
                              backend=self.backend)
            out[s:t] = x.to(out_dtype)
        return out


class SHIPGenerator(FeatureGenerator):
    """A trained SHIP VAE (`pipeline.ship.train_ship`) as a feature generator.

    Row r of class c: z from the counter-based stream (seed, c, r) (`reference.philox`), then
    normalize(tower(ctx + G(z), class name c)), the tower running in batches of its rows only.
    Classes are the prompts' classes: `class_embeddings` only fixes C (its rows are not read;
    SHIP conditions on the class *name*, through the tower), so pass the (C, D) text features.

    Args:
        model: a `SHIPVAE`.
        prompts: the `PreparedPrompts` of all C class names (`pipeline.ship.ship_prompts`).
        batch_rows: rows per tower pass (bounds memory; rows do not depend on it beyond float
            rounding of the tower's batched matmuls).
    """

    kind = "ship"

    def __init__(self, model, prompts, *, batch_rows: int = 512) -> None:
        from ..models.ship import SHIPVAE

        if not isinstance(model, SHIPVAE):
            raise TypeError(f"model: expected a SHIPVAE, got {type(model).__name__}")
        if prompts.n_ctx != model.n_ctx or prompts.width != model.token_width:
            raise ValueError(f"prompts: {prompts.n_ctx} context slots of width {prompts.width} "
                             f"do not match the model's {model.n_ctx} x {model.token_width}")
        self.model, self.prompts = model, prompts
        self.batch_rows = int(batch_rows)
        self.embed_dim = self.feature_dim = prompts.output_dim

    @property
    def device(self) -> torch.device:
        return self.model.ctx.device

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, **self.model.shape_dict(),
                "tower": getattr(self.prompts.tower, "name", "?"),
                "prompts": sha256_text(*self.prompts.texts)[:16],
                "weights": fingerprint(*[p.detach() for p in self.model.parameters()])}

    def _generate(self, e, cls, rows, seed, out_dtype):
        from ..reference.philox import synth_normals

        if int(cls.max()) >= len(self.prompts):
            raise ValueError(f"class_ids: the prompts hold {len(self.prompts)} classes, got "
                             f"class {int(cls.max())}")
        out = torch.empty(cls.numel(), self.feature_dim, dtype=out_dtype, device=self.device)
        with torch.no_grad():
            for s in range(0, cls.numel(), self.batch_rows):
                c, r = cls[s : s + self.batch_rows], rows[s : s + self.batch_rows]
                z = synth_normals(seed, c, r, self.model.latent_dim).to(self.device)
                out[s : s + c.numel()] = self.model.decode(z, self.prompts, c).to(out_dtype)
        return out


def generate_all(
    generator: FeatureGenerator,
    class_embeddings: torch.Tensor,
    classes: Any,
    num_per_class: int,
    *,
    seed: int,
    batch_rows: int = 65536,
    out_dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """All rows of `classes` in memory, class-major (the row order of `synthesize_to`).

    Args:
        generator: a `FeatureGenerator`.
        class_embeddings: (C, A).
        classes: (K,) distinct class ids into class_embeddings.
        num_per_class: rows per class n >= 1.
        seed: synthesis seed.
        batch_rows: rows per `generate` call (bounds the working memory, not the result).

    Returns:
        x (K * n, D) in out_dtype on the generator's device; y (K * n,) int64 class ids.
    """
    from .._checks import check_class_indices, check_int

    if not isinstance(generator, FeatureGenerator):
        raise TypeError(f"generator: expected a FeatureGenerator, got {type(generator).__name__}")
    if not isinstance(class_embeddings, torch.Tensor) or class_embeddings.dim() != 2:
        raise TypeError("class_embeddings: expected a (C, A) tensor")
    cls = check_class_indices(classes, "classes", class_embeddings.shape[0])
    n = check_int(num_per_class, "num_per_class", 1)
    b = check_int(batch_rows, "batch_rows", 1)
    total = cls.numel() * n
    x = torch.empty(total, generator.feature_dim, dtype=out_dtype, device=generator.device)
    for s in range(0, total, b):
        g = torch.arange(s, min(s + b, total))
        x[s : s + g.numel()] = generator.generate(class_embeddings, cls[g // n], g % n,
                                                  seed=seed, out_dtype=out_dtype)
    return x, cls.repeat_interleave(n).to(generator.device)
