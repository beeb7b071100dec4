"""Simulated worlds calibrated to real CLIP statistics (issue 8, item 1).

The demo world (:mod:`dfzsl_fast.world`) projects MiniLM sentence embeddings into a 512-d space;
its text features share little (mean pairwise cosine about 0.3) and its images sit around a
single gap offset. Real CLIP is different in ways that matter for a data-free method: its text
features share a **large common component** (mean pairwise cosine 0.61 over the 1000 prompts of
the real ViT-B/32 ImageNet head, measured), its image features share **another** one (the cone
effect), the two cones are apart (the **modality gap**), and within-class spread is strongly
anisotropic. This module builds a world from **any real (C, D) text matrix** (e.g. the real
ViT-B/32 ImageNet head in ``../shared/data``) with those properties at realistic sizes, and
**calibrates** it to a target zero-shot and linear-probe accuracy.

Construction (t_c = normalize(text_c), tbar = mean_c t_c, delta_c = t_c - tbar):

1. **Image class centres.** m_c = beta * u_img + R delta_c / s_delta + rho * n_c:

   - u_img: the unit direction of the image cone, at the angle to tbar that produces the target
     modality gap ||mean_x x_hat - mean_c t_c|| (``modality_gap``);
   - R: a near-identity rotation of the specific parts (``rotation_cos``, default 1: no
     rotation; measured on the real ImageNet head, R with cos 0.99 already caps zero-shot at
     0.58 at the linear-probe target, below the 0.60 target, so the misalignment between text
     and image is left to n_c);
     s_delta = rms ||delta_c|| so that the class-specific part has unit typical norm;
   - n_c: class-specific noise with the covariance of the rotated specific text parts (errors
     are confusions between similar classes), unpredictable from text: ``rho`` sets zero-shot
     accuracy;
   - beta: the shared image component, set so that the mean pairwise cosine of image features
     is ``image_pairwise_cos``.
2. **Samples.** x = s * normalize(m_c + tau_c * (a U diag(sqrt(lambda)) z + b V w + c eps)) (one
   normalisation, so the noise competes with the small specific parts, not the shared cone): an
   anisotropic nuisance subspace U (rank ``nuisance_rank``, power-law spectrum lambda_k ∝
   k^-``spectrum_power``), sample-level semantic variation V (rows of the rotated specific text
   parts), isotropic rest; tau_c = ``spread`` * lognormal(``spread_jitter``); norms s about 10.
   ``spread`` sets the linear-probe accuracy.
3. **Calibration** (:func:`calibrate_clip_world`, run by :func:`build_clip_world` unless the
   parameters are given): alternating bisections over beta (image cone), the gap angle, spread
   (linear probe) and rho (zero-shot) on a calibration draw of ``calib_per_class`` samples per
   class. The linear probe is measured by its population proxy, the cosine classifier with the
   true class means of the normalised samples (an upper bound of a trained probe; the trained
   teacher's accuracy is reported beside it in :meth:`World.summary`).
4. **Splits and teacher** as in :mod:`dfzsl_fast.world`: seen-class train samples only, test
   samples for every class, a multinomial logistic regression without intercept on the raw
   seen train features (DFZSL's black box, used as a cosine classifier).

Default targets and where they come from:

- zero-shot top-1 over all C classes, 0.60: CLIP ViT-B/32 on ImageNet with one prompt
  "a photo of a {}" is about 59-60 % (Radford et al. 2021; 63.2 % with the 80-prompt ensemble);
- linear-probe top-1, 0.76: CLIP ViT-B/32 ImageNet linear probe, 76.1 % (Radford et al. 2021,
  Table 10);
- image pairwise cosine, 0.50: the cone effect of CLIP image embeddings (Liang et al. 2022,
  "Mind the Gap"): random pairs of images have cosines around 0.5;
- modality gap, 0.82: distance between the centres of normalised image and text embeddings of
  CLIP ViT-B/32 (Liang et al. 2022);
- text pairwise cosine: measured, not set (0.61 on the real ImageNet head's 1000 prompts).

The MiniLM world of :mod:`dfzsl_fast.world` stays the other member of the family; both return a
:class:`dfzsl_fast.world.World` (``family`` says which), so every tool takes either.

Example:
    >>> from dfzsl_fast.clip_world import build_clip_world, load_imagenet_text_head
    >>> text, names = load_imagenet_text_head()              # real CLIP ViT-B/32 head
    >>> world = build_clip_world(text, names, n_unseen=500, seed=0)
    >>> world.summary()["zero_shot"]["H"]
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ._checks import check_matrix
from .data.classnames import check_classnames, name_key
from .hashing import seeded_generator
from .teacher_fit import fit_logistic_regression
from .world import (
    World,
    _counts,
    _near_identity_rotation,
    _orthonormal,
    _resolve_unseen,
    check_world_fields,
)

__all__ = [
    "CLIPWorldConfig",
    "CLIPWorldParams",
    "build_clip_world",
    "calibrate_clip_world",
    "load_imagenet_text_head",
    "text_statistics",
]


@dataclass
class CLIPWorldConfig:
    """Targets and fixed shape parameters of a CLIP-like world.

    Attributes:
        target_zero_shot: closed-set zero-shot top-1 over all C classes to calibrate to.
        target_linear_probe: closed-set top-1 of the true-class-mean cosine classifier.
        image_pairwise_cos: mean cosine between image features of different classes.
        modality_gap: ||mean image - mean text|| of unit-norm features.
        rotation_cos: mean cos(R v, v) of the near-identity rotation of the specific parts.
        nuisance_rank, spectrum_power: the anisotropic within-class subspace and its spectrum.
        nuisance_frac, semantic_frac: shares of within-class variance in the nuisance subspace
            and along the semantic (text) directions; the rest is isotropic.
        spread_jitter: log-normal sd of the per-class spread.
        n_train, n_test, count_jitter: samples per class (train: seen classes only).
        n_unseen: unseen classes drawn with the seed when ``unseen`` is not given.
        image_norm: typical norm of an image feature (CLIP: about 10).
        teacher_C, teacher_max_iter: the black-box logistic regression.
        calib_per_class: samples per class of the calibration draw.
        calib_rounds: alternating-bisection rounds.
        seed: master seed.
    """

    target_zero_shot: float = 0.60
    target_linear_probe: float = 0.76
    image_pairwise_cos: float = 0.50
    modality_gap: float = 0.82
    rotation_cos: float = 1.0
    nuisance_rank: int = 64
    spectrum_power: float = 1.0
    nuisance_frac: float = 0.4
    semantic_frac: float = 0.3
    spread_jitter: float = 0.2
    n_train: int = 100
    n_test: int = 50
    count_jitter: float = 0.2
    n_unseen: int = 10
    image_norm: float = 10.0
    teacher_C: float = 0.316
    teacher_max_iter: int = 300
    calib_per_class: int = 10
    calib_rounds: int = 2
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("target_zero_shot", "target_linear_probe"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and 0.0 < v < 1.0):
                raise ValueError(f"CLIPWorldConfig.{name} must be in (0, 1), got {v!r}")
        if self.target_zero_shot >= self.target_linear_probe:
            raise ValueError("CLIPWorldConfig.target_zero_shot must be below target_linear_probe "
                             f"(got {self.target_zero_shot} >= {self.target_linear_probe})")
        if not 0.0 <= self.image_pairwise_cos < 0.95:
            raise ValueError("CLIPWorldConfig.image_pairwise_cos must be in [0, 0.95), got "
                             f"{self.image_pairwise_cos!r}")
        if not 0.0 <= self.modality_gap < 2.0:
            raise ValueError(f"CLIPWorldConfig.modality_gap must be in [0, 2), got "
                             f"{self.modality_gap!r}")
        check_world_fields(
            self,
            ints=("nuisance_rank", "n_train", "n_test", "n_unseen", "teacher_max_iter",
                  "calib_per_class", "calib_rounds"),
            nonneg=("spectrum_power", "spread_jitter", "count_jitter"),
            positive=("image_norm", "teacher_C"),
        )


@dataclass
class CLIPWorldParams:
    """The calibrated parameters (what :func:`calibrate_clip_world` returns).

    Attributes:
        beta: size of the shared image component.
        gap_angle: angle (radians) between the image cone direction and the text mean.
        spread: within-class spread tau.
        rho: size of the class-specific, unpredictable mean shift.
        achieved: the statistics measured on the calibration draw with these values.
    """

    beta: float
    gap_angle: float
    spread: float
    rho: float
    achieved: dict[str, float] = field(default_factory=dict)


def text_statistics(text: torch.Tensor) -> dict[str, float]:
    """Shared-component statistics of a (C, D) text matrix (rows normalised first)."""
    if isinstance(text, np.ndarray):
        text = torch.from_numpy(text)
    t = _unit(check_matrix(text, "text", "(C, D)").to("cpu", torch.float64))
    C = t.shape[0]
    g = t @ t.T
    off = (g.sum() - g.diagonal().sum()) / max(C * (C - 1), 1)
    tbar = t.mean(0)
    spec = ((t - tbar).norm(dim=1) ** 2).mean()
    return {"pairwise_cos": float(off), "mean_norm": float(tbar.norm()),
            "specific_rms": float(spec.sqrt())}


def load_imagenet_text_head(root: str | Path | None = None) -> tuple[torch.Tensor, list[str]]:
    """The real CLIP ViT-B/32 ImageNet text head: ((1000, 512) float32, 1000 names).

    Looks in ``root`` or ``shared_data_dir()/imagenet_clip_vitb32/text_head.npz``.

    Raises:
        FileNotFoundError: the file is not there (it is not shipped with the package).
    """
    if root is None:
        from .data import shared_data_dir

        base = shared_data_dir()
        if base is None:
            raise FileNotFoundError("the shared data folder (../shared/data) was not found; "
                                    "pass root= the folder holding text_head.npz")
        path = base / "imagenet_clip_vitb32" / "text_head.npz"
    else:
        path = Path(root)
        if path.is_dir():
            path = path / "text_head.npz"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    with np.load(path, allow_pickle=False) as z:
        w = torch.from_numpy(np.asarray(z["weights"], dtype=np.float32))
        names = [str(n) for n in z["names"].tolist()]
    # a few ImageNet names repeat ("crane", "maillot"): make them distinct the way the class-name
    # checks compare them (case counts: "Cardigan" and "cardigan" stay as they are), keep order
    seen: dict[str, int] = {}
    out = []
    for n in names:
        key = name_key(n)
        k = seen.get(key, 0)
        seen[key] = k + 1
        out.append(n if k == 0 else f"{n} ({k + 1})")
    return w, out


# ------------------------------------------------------------------------------------------
# geometry
# ------------------------------------------------------------------------------------------


def _unit(t: torch.Tensor) -> torch.Tensor:
    return t / t.norm(dim=-1, keepdim=True).clamp_min(1e-12)


@dataclass
class _Geometry:
    """Everything the calibration varies around: fixed random draws of one seed."""

    t: torch.Tensor  # (C, D) unit text features
    tbar_dir: torch.Tensor  # (D,)
    ortho_dir: torch.Tensor  # (D,) unit, orthogonal to tbar_dir (the gap's other direction)
    specific: torch.Tensor  # (C, D) R delta_c / s_delta
    class_noise: torch.Tensor  # (C, D) n_c, E|n|^2 ~ 1
    semantic: torch.Tensor  # (C, D) rows of the sample-level semantic variation
    nuisance: torch.Tensor  # (D, r) orthonormal
    nuisance_scale: torch.Tensor  # (r,) sqrt of the power-law spectrum, sum of squares = 1
    jitter: torch.Tensor  # (C,) lognormal spread factors
    R: torch.Tensor


def _geometry(t: torch.Tensor, cfg: CLIPWorldConfig, gen: torch.Generator) -> _Geometry:
    C, D = t.shape
    tbar = t.mean(0)
    tbar_dir = _unit(tbar)
    delta = t - tbar
    s_delta = float(delta.norm(dim=1).pow(2).mean().sqrt()) or 1.0
    R = _near_identity_rotation(D, cfg.rotation_cos, gen)
    specific = (delta / s_delta) @ R.T
    coef = torch.randn(C, C, generator=gen, dtype=torch.float64) / math.sqrt(C)
    class_noise = coef @ specific
    o = torch.randn(D, generator=gen, dtype=torch.float64)
    o = o - (o @ tbar_dir) * tbar_dir
    r = min(cfg.nuisance_rank, D)
    nuisance = _orthonormal(D, r, gen)
    lam = torch.arange(1, r + 1, dtype=torch.float64) ** (-cfg.spectrum_power)
    jitter = torch.exp(cfg.spread_jitter * torch.randn(C, generator=gen, dtype=torch.float64))
    return _Geometry(t=t, tbar_dir=tbar_dir, ortho_dir=_unit(o), specific=specific,
                     class_noise=class_noise, semantic=specific, nuisance=nuisance,
                     nuisance_scale=(lam / lam.sum()).sqrt(), jitter=jitter, R=R)


def _image_dir(geo: _Geometry, gap_angle: float) -> torch.Tensor:
    return math.cos(gap_angle) * geo.tbar_dir + math.sin(gap_angle) * geo.ortho_dir


def _means(geo: _Geometry, beta: float, gap_angle: float, rho: float) -> torch.Tensor:
    """(C, D) unnormalised class centres: shared cone + specific part + class noise."""
    return beta * _image_dir(geo, gap_angle) + geo.specific + rho * geo.class_noise


def _draw(geo: _Geometry, means: torch.Tensor, spread: float, counts: torch.Tensor,
          classes: torch.Tensor, cfg: CLIPWorldConfig, gen: torch.Generator,
          norms: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Samples of ``classes``: ((N, D) float32, (N,) int64); unit rows when ``norms`` is False."""
    f32 = torch.float32
    labels = torch.repeat_interleave(classes, counts[classes])
    n, D = labels.numel(), means.shape[1]
    r, k = geo.nuisance.shape[1], geo.semantic.shape[0]
    z = torch.randn(n, r, generator=gen, dtype=f32) * geo.nuisance_scale.to(f32)
    sem = torch.randn(n, k, generator=gen, dtype=f32) / math.sqrt(k)
    eps = torch.randn(n, D, generator=gen, dtype=f32) / math.sqrt(D)
    iso = max(1.0 - cfg.nuisance_frac - cfg.semantic_frac, 0.0)
    noise = (math.sqrt(cfg.nuisance_frac) * (z @ geo.nuisance.to(f32).T)
             + math.sqrt(cfg.semantic_frac) * (sem @ geo.semantic.to(f32))
             + math.sqrt(iso) * eps)
    tau = (spread * geo.jitter).to(f32)
    # one normalisation of centre + noise: the noise competes with the small specific parts,
    # not with the large shared component (high image-image cosines, yet confusable classes)
    x = _unit(means.to(f32)[labels] + tau[labels, None] * noise)
    if norms:
        s = cfg.image_norm * torch.exp(0.1 * torch.randn(n, 1, generator=gen, dtype=f32))
        x = x * s
    return x.contiguous(), labels


def _stats(geo: _Geometry, p: CLIPWorldParams, cfg: CLIPWorldConfig, seed: int,
           ) -> dict[str, float]:
    """Zero-shot and linear-probe proxy accuracies, image cosine and gap on a calibration draw."""
    gen = seeded_generator(seed)
    C = geo.t.shape[0]
    m = _means(geo, p.beta, p.gap_angle, p.rho)
    counts = torch.full((C,), cfg.calib_per_class, dtype=torch.int64)
    x, y = _draw(geo, m, p.spread, counts, torch.arange(C), cfg, gen, norms=False)
    t32 = geo.t.to(torch.float32)
    zs = float(((x @ t32.T).argmax(1) == y).double().mean())
    # the probe's population proxy: the cosine classifier with the true class centres
    lp = float(((x @ _unit(m).to(torch.float32).T).argmax(1) == y).double().mean())
    xm = x.double().mean(0)
    n = x.shape[0]
    pair = float((xm.dot(xm) * n * n - n) / (n * (n - 1)))
    gap = float((xm - geo.t.mean(0)).norm())
    matched = float((x.double() * geo.t[y]).sum(1).mean())
    return {"zero_shot": zs, "linear_probe": lp, "image_pairwise_cos": pair,
            "modality_gap": gap, "cos_image_text_matched": matched}


def _bisect(f, lo: float, hi: float, target: float, increasing: bool, iters: int = 12) -> float:
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        v = f(mid)
        if (v < target) == increasing:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def _beta_for(pairwise: float, rho: float, spread: float, factor: float) -> float:
    """The shared image component for a target pairwise cosine (first order, times a factor).

    Between classes, cos(x, x') ~ beta^2 / (beta^2 + 1 + rho^2 + tau^2): the specific parts
    are centred with unit typical norm, and the class and sample noise are independent.
    """
    return factor * math.sqrt(pairwise / (1.0 - pairwise) * (1.0 + rho * rho + spread * spread))


def calibrate_clip_world(text: torch.Tensor, config: CLIPWorldConfig | None = None,
                         ) -> CLIPWorldParams:
    """Find beta, gap angle, spread and rho that meet the config's targets for this text matrix.

    Alternating bisections: the spread on the linear-probe proxy, rho on zero-shot accuracy,
    then a correction factor on the first-order beta (:func:`_beta_for`) for the image pairwise
    cosine, and the angle of the image cone to the text mean for the modality gap. The
    accuracies barely depend on beta and the angle (a component shared by all classes), so
    two rounds settle.

    Args:
        text: (C, D) real text features (any norm; rows are normalised).
        config: targets and shape parameters.

    Returns:
        :class:`CLIPWorldParams` with the achieved statistics (on a fresh calibration draw).
        Deterministic for a seed. Cost: about 30 s for 1000 classes on two cores.
    """
    cfg = config or CLIPWorldConfig()
    t = _unit(_check_text(text))
    geo = _geometry(t, cfg, seeded_generator(cfg.seed))
    state = {"factor": 1.0, "gap_angle": 1.2, "spread": 0.5, "rho": 0.5}
    s = int(cfg.seed) + 7919

    def params(**kw) -> CLIPWorldParams:
        v = {**state, **kw}
        beta = _beta_for(cfg.image_pairwise_cos, v["rho"], v["spread"], v["factor"])
        return CLIPWorldParams(beta=beta, gap_angle=v["gap_angle"], spread=v["spread"],
                               rho=v["rho"])

    def stat(key):
        return lambda name: (lambda v: _stats(geo, params(**{name: v}), cfg, s)[key])

    for _ in range(cfg.calib_rounds):
        state["spread"] = _bisect(stat("linear_probe")("spread"), 0.01, 6.0,
                                  cfg.target_linear_probe, increasing=False)
        state["rho"] = _bisect(stat("zero_shot")("rho"), 0.0, 6.0, cfg.target_zero_shot,
                               increasing=False)
        state["factor"] = _bisect(stat("image_pairwise_cos")("factor"), 0.2, 3.0,
                                  cfg.image_pairwise_cos, increasing=True, iters=10)
        state["gap_angle"] = _bisect(stat("modality_gap")("gap_angle"), 0.0, math.pi,
                                     cfg.modality_gap, increasing=True, iters=10)
    p = params()
    p.achieved = _stats(geo, p, cfg, s + 1)
    return p


def _check_text(text) -> torch.Tensor:
    if isinstance(text, np.ndarray):
        text = torch.from_numpy(text)
    t = check_matrix(text, "text", "(C, D)")  # float, finite, no zero row, not meta
    if t.shape[0] < 3 or t.shape[1] < 2:
        raise ValueError(f"text: expected at least 3 classes and 2 dimensions, got "
                         f"{tuple(t.shape)}")
    return t.to("cpu", torch.float64)


def build_clip_world(
    text: torch.Tensor | np.ndarray,
    class_names: Sequence[str],
    *,
    unseen: Sequence[str] | Sequence[int] | torch.Tensor | None = None,
    config: CLIPWorldConfig | None = None,
    params: CLIPWorldParams | None = None,
    **overrides: Any,
) -> World:
    """Build a CLIP-like world on real text features, calibrated to the config's targets.

    Args:
        text: (C, D) real CLIP text features of the class prompts (the zero-shot head).
        class_names: C distinct names.
        unseen: unseen classes (names or indices); default ``n_unseen`` drawn with the seed.
        config: a :class:`CLIPWorldConfig`; keyword ``overrides`` replace its fields.
        params: skip calibration and use these parameters.

    Returns:
        A :class:`dfzsl_fast.world.World` with ``family="clip"``; ``text_features`` are the
        normalised input rows (the world's zero-shot classifier) and ``projection`` is None.
    """
    t = _unit(_check_text(text))
    names = check_classnames(list(class_names))
    C, D = t.shape
    if len(names) != C:
        raise ValueError(f"class_names: {len(names)} names for {C} text rows")
    cfg = config if config is not None else CLIPWorldConfig()
    if overrides:
        unknown = [k for k in overrides if k not in CLIPWorldConfig.__dataclass_fields__]
        if unknown:
            raise TypeError(f"unknown CLIPWorldConfig field {unknown[0]!r}")
        cfg = CLIPWorldConfig(**{**asdict(cfg), **overrides})
    if params is None:
        params = calibrate_clip_world(t, cfg)
    gen = seeded_generator(cfg.seed)
    geo = _geometry(t, cfg, gen)
    gen = seeded_generator(cfg.seed, 1)
    m = _means(geo, params.beta, params.gap_angle, params.rho)
    unseen_idx = _resolve_unseen(unseen, names, cfg.n_unseen, gen)
    is_unseen = torch.zeros(C, dtype=torch.bool)
    is_unseen[unseen_idx] = True
    seen_idx = (~is_unseen).nonzero().flatten()
    n_tr = _counts(cfg.n_train, cfg.count_jitter, C, gen)
    n_te = _counts(cfg.n_test, cfg.count_jitter, C, gen)
    x_tr, y_tr = _draw(geo, m, params.spread, n_tr, seen_idx, cfg, gen)
    x_te, y_te = _draw(geo, m, params.spread, n_te, torch.arange(C), cfg, gen)
    teacher = fit_logistic_regression(x_tr, y_tr, C=cfg.teacher_C,
                                      max_iter=cfg.teacher_max_iter, fit_intercept=False)
    return World(
        config=cfg,
        class_names=names,
        prompts=[f"a photo of a {n}." for n in names],
        text_embeddings=t.float(),
        projection=None,
        text_features=t.float(),
        rotation=geo.R.float(),
        gap=(params.beta * _image_dir(geo, params.gap_angle)).float(),
        image_means=_unit(m).float(),
        spread=(params.spread * geo.jitter).float(),
        seen_classes=seen_idx,
        unseen_classes=unseen_idx,
        train_features=x_tr,
        train_labels=y_tr,
        test_features=x_te,
        test_labels=y_te,
        teacher=teacher,
        family="clip",
        calibration=params,
    )
