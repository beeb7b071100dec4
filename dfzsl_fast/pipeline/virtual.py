"""Stage 1 of DFZSL: the von Mises-Fisher virtual domain (method.md 2.3 and 9).

Three steps, each usable alone:

1. `fit_vmf_means`: fit the vMF mean directions mu (C_s, d), initialised from the base-class text
   features, so that the cosine logits of vMF samples against mu reproduce the black-box
   teacher's cosine logits (MSE). One batched sampler call per optimiser step.
2. `virtual_features`: draw `num_per_class` samples per class from vMF(mu_c, kappa) and keep
   only the samples the teacher labels correctly (`select_trusted`).
3. `kappa` comes from `dfzsl_fast.kappa_from_prototypes(text_features, shared=True)` (one shared
   kappa = max_c 36 / theta_c^2) unless given.

Differences from the reference code (by design, see method.md 9): the sampler is exact by
default (`wood_b="exact"`; `"reference"` reproduces the biased published envelope), the sampler
is called once per step for all classes instead of in a Python loop, and the optional "best"
selection really copies the state (the reference's aliased copy always returned the final mu).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .._checks import check_matrix, numeric_tensor
from ..config import SimulatorConfig, check_count
from ..hashing import mix_seed
from ..ops.cosine import cosine_logit_mse
from ..ops.vmf import sample_vmf
from ..ops.vmf_fit import vmf_logit_mse
from ..theory import kappa_from_prototypes
from ._progress import Progress
from .teacher import Teacher, as_teacher

__all__ = [
    "VMFFitInfo",
    "KeepStats",
    "inverse_decay_lr",
    "default_kappa",
    "fit_vmf_means",
    "select_trusted",
    "virtual_stage",
    "VirtualDomain",
    "virtual_features",
]

_LR_GAMMA = 1e-3
_LR_POWER = 0.75


def inverse_decay_lr(
    step: int, lr0: float, gamma: float = _LR_GAMMA, power: float = _LR_POWER
) -> float:
    """The DFZSL simulator schedule lr_t = lr0 * (1 + gamma t)^(-power), t = 0, 1, ...

    Example:
        >>> inverse_decay_lr(1000, 3e-3)  # 3e-3 * 2 ** -0.75
        0.0017838...
    """
    return lr0 * (1.0 + gamma * step) ** (-power)


@dataclass
class VMFFitInfo:
    """What `fit_vmf_means(..., return_info=True)` records (all tensors on the CPU).

    Attributes:
        losses: (steps,) float64 MSE loss at each step (before that step's update).
        lrs: (steps,) float64 learning rate used by each step.
        cos_to_teacher: (steps,) float64 mean_c cos(mu_c, W_c) after each step (the
            reference's selection criterion; it uses the teacher's weights, no data).
        kappa: (C_s,) float64 concentrations used.
        final_mu: (C_s, d) unit rows after the last step.
        best_mu: (C_s, d) unit rows, a copy taken at `best_step` (highest `cos_to_teacher`);
            equal to the initial mu when steps = 0.
        best_step: the step whose update produced `best_mu` (-1: the initial mu).
        seconds: wall time of the fit.
    """

    losses: torch.Tensor
    lrs: torch.Tensor
    cos_to_teacher: torch.Tensor
    kappa: torch.Tensor
    final_mu: torch.Tensor
    best_mu: torch.Tensor
    best_step: int
    seconds: float


@dataclass
class KeepStats:
    """Per-class counts of the trusted-sample filter.

    Attributes:
        drawn: (C,) int64 samples drawn per class.
        kept: (C,) int64 samples the teacher labelled correctly.
    """

    drawn: torch.Tensor
    kept: torch.Tensor
    extra: dict = field(default_factory=dict)

    @property
    def total_drawn(self) -> int:
        return int(self.drawn.sum())

    @property
    def total_kept(self) -> int:
        return int(self.kept.sum())

    @property
    def fraction_kept(self) -> float:
        return self.total_kept / max(self.total_drawn, 1)

    def __str__(self) -> str:
        frac = self.kept.double() / self.drawn.clamp(min=1).double()
        head = (
            f"trusted filter kept {self.total_kept}/{self.total_drawn} "
            f"({100 * self.fraction_kept:.2f}%)"
        )
        if not frac.numel():
            return head
        c = int(frac.argmin())
        return f"{head}; lowest class {c}: {int(self.kept[c])}/{int(self.drawn[c])}"


# ------------------------------------------------------------------------------- checks
def _check_features(t, name: str) -> torch.Tensor:
    return check_matrix(t, name, "(C, d)")


def _check_pos(v, name: str, allow_zero: bool = False) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise TypeError(f"{name}: expected a number, got {type(v).__name__}")
    v = float(v)
    if not math.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
        raise ValueError(
            f"{name}: expected a finite number {'>=' if allow_zero else '>'} 0, got {v}"
        )
    return v


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _teacher_for(teacher, C: int, d: int, what: str) -> Teacher:
    teacher = as_teacher(teacher)
    teacher.check_width(d, what)
    if teacher.num_classes != C:
        raise ValueError(
            f"{what}: {C} rows but the teacher has {teacher.num_classes} classes; give one row "
            "per base (seen) class, in the teacher's class order"
        )
    return teacher


def default_kappa(
    text_features: torch.Tensor, shared: bool = True, multiplier: float = 1.0
) -> torch.Tensor:
    """DFZSL's kappa from the base-class text features: (C_s,) float64, max_c 36/theta_c^2 shared.

    A thin wrapper of `dfzsl_fast.kappa_from_prototypes(text_features, shared=shared)`.
    """
    text_features = check_matrix(text_features, "text_features", "(C_s, d)")
    k = kappa_from_prototypes(
        _check_features(text_features, "text_features"), shared=shared, multiplier=multiplier
    )
    return torch.as_tensor(k, dtype=torch.float64)


def _kappa_tensor(kappa, C: int, device) -> torch.Tensor:
    if isinstance(kappa, bool):
        raise TypeError("kappa: expected a number or a (C,) tensor, got bool")
    if isinstance(kappa, (int, float)):
        k = torch.full((C,), float(kappa), dtype=torch.float64)
    else:
        try:
            k = numeric_tensor(kappa, "kappa", "kappa").to(dtype=torch.float64).reshape(-1)
        except ValueError as exc:
            raise TypeError(f"kappa: expected a number or a (C,) tensor ({exc})") from None
        if k.numel() == 1:
            k = k.expand(C).clone()
        if k.shape != (C,):
            raise ValueError(f"kappa: expected a scalar or shape ({C},), got {tuple(k.shape)}")
    if not bool(torch.isfinite(k).all()) or bool((k < 0).any()):
        raise ValueError("kappa: expected finite values >= 0")
    return k.to(device)


# ------------------------------------------------------------------------------- fit
def fit_vmf_means(
    teacher: Teacher | torch.Tensor | torch.nn.Linear,
    text_features: torch.Tensor,
    kappa: float | torch.Tensor | None = None,
    *,
    steps: int = 1000,
    lr: float = 3e-3,
    nsample: int = 50,
    weight_decay: float = 5e-4,
    lr_gamma: float = _LR_GAMMA,
    lr_power: float = _LR_POWER,
    seed: int | None = 0,
    wood_b: str = "exact",
    select: str = "final",
    return_info: bool = False,
    progress: bool = True,
    backend: str | None = None,
    fused: bool = True,
) -> torch.Tensor | tuple[torch.Tensor, VMFFitInfo]:
    """Fit the vMF mean directions of the base classes to a black-box cosine teacher.

    mu starts at normalize(text_features). Each step draws `nsample` samples per class with ONE
    call `sample_vmf(mu, kappa, n_per_class=nsample, seed=seed, offset=step * C_s * nsample)`
    (gradients reach mu through the reparameterised sample and through the student logits),
    and minimises MSE(cos(x, mu), cos(x, W) / T) over all N x C_s entries with the teacher
    logits detached (`dfzsl_fast.cosine_logit_mse`). Optimiser: Adam(lr, betas (0.9, 0.999),
    weight_decay, coupled L2 as torch.optim.Adam) with lr_t = lr * (1 + 0.001 t)^(-0.75).
    By default (`fused=True`) one call `dfzsl_fast.vmf_logit_mse` gives each step's loss and
    gradient without materialising the samples or the logits (the same values to float
    rounding, from the same samples); `fused=False` runs the composed ops and autograd.

    Args:
        teacher: a `Teacher`, a (C_s, d) weight tensor or an nn.Linear (see `as_teacher`).
        text_features: (C_s, d) float text features of the base classes, in the teacher's class
            order (any norm; NaN or zero rows are errors).
        kappa: scalar or (C_s,) concentrations, fixed; None: `default_kappa(text_features)`.
        steps: optimiser steps (DFZSL "epochs": 1000; SUN, UCF101, food-101 1500; caltech 500).
        lr: initial learning rate (3e-3 AWA2/APY/..., 1.5e-3 CUB/SUN397, 1e-3 SUN/FLO/...).
        nsample: samples per class per step (50).
        weight_decay: Adam weight decay (5e-4).
        seed: sampler seed (None: drawn from torch's default generator).
        wood_b: "exact" (default) or "reference" (the biased published sampler; parity only).
        select: "final" (reference behaviour: the last mu) or "best" (the mu with the highest
            mean_c cos(mu_c, W_c), copied when reached).
        return_info: also return a `VMFFitInfo` (loss and lr curves, both candidates).
        progress: show a progress bar (tqdm if installed, else lines on stderr).
        backend: backend for the sampler and the fused loss (None: automatic).
        fused: True (default): `vmf_logit_mse` per step; False: `sample_vmf` +
            `cosine_logit_mse` + backward (the composed path; same results to rounding).

    Returns:
        mu: (C_s, d) unit rows, detached, in text_features' dtype (float32 for half inputs) and
        device; with `return_info`, (mu, info).

    Differentiable: no (returns a fitted tensor).

    Example:
        >>> teacher = Teacher(W)                          # (40, 512)
        >>> mu = fit_vmf_means(teacher, text_base, steps=1000, lr=3e-3, seed=0)
        >>> x, y, stats = virtual_features(mu, None, 600, teacher, seed=1, text_features=text_base)
    """
    t = _check_features(text_features, "text_features")
    C, d = t.shape
    teacher = _teacher_for(teacher, C, d, "text_features")
    steps = check_count(steps, "simulator.epochs", 0)
    nsample = check_count(nsample, "simulator.nsample", 1)
    lr = _check_pos(lr, "lr")
    weight_decay = _check_pos(weight_decay, "weight_decay", allow_zero=True)
    lr_gamma = _check_pos(lr_gamma, "lr_gamma", allow_zero=True)
    lr_power = _check_pos(lr_power, "lr_power", allow_zero=True)
    if select not in ("final", "best"):
        raise ValueError(f"select: expected 'final' or 'best', got {select!r}")
    if not isinstance(fused, bool):
        raise TypeError(f"fused: expected True or False, got {type(fused).__name__}")
    if seed is None:
        seed = int(torch.randint(0, 2**62, ()).item())
    elif isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed: expected an int or None, got {type(seed).__name__}")

    dtype = _compute_dtype(t)
    device = t.device
    k = default_kappa(t) if kappa is None else kappa
    k = _kappa_tensor(k, C, device)

    mu = torch.nn.Parameter(F.normalize(t.to(dtype), dim=1).clone())
    w_teacher = teacher.weight_like(mu.detach())
    w_hat = F.normalize(w_teacher, dim=1)
    scale_t = 1.0 / teacher.temperature
    opt = torch.optim.Adam([mu], lr=lr, betas=(0.9, 0.999), weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda step: (1.0 + lr_gamma * step) ** (-lr_power)
    )

    losses = torch.zeros(steps, dtype=torch.float64, device=device)
    scores = torch.zeros(steps, dtype=torch.float64, device=device)
    lrs = torch.zeros(steps, dtype=torch.float64)
    with torch.no_grad():
        best_mu = F.normalize(mu.detach(), dim=1).clone()
        best_score = (best_mu * w_hat).sum(1).mean().double()
        best_step = torch.tensor(-1, device=device)
    rows = C * nsample
    show_every = max(1, steps // 100)
    t0 = time.perf_counter()
    with Progress(steps, "dfzsl stage 1: fit vMF means", enabled=progress) as bar:
        for step in range(steps):
            if fused:
                loss, grad = vmf_logit_mse(
                    mu.detach(), k, w_teacher, nsample, seed=seed, offset=step * rows,
                    scale_s=1.0, scale_t=scale_t, wood_b=wood_b, backend=backend,
                    check_inputs=False,  # mu: this loop's parameter, checked before the loop
                )
                opt.zero_grad(set_to_none=True)
                mu.grad = grad
            else:
                x, _ = sample_vmf(
                    mu,
                    k,
                    n_per_class=nsample,
                    seed=seed,
                    offset=step * rows,
                    wood_b=wood_b,
                    backend=backend,
                    check_inputs=False,  # mu: this loop's parameter, checked before the loop
                )
                # unit samples and unit means: no per-step NaN scan (a host sync per step on a
                # GPU)
                loss = cosine_logit_mse(x, mu, w_teacher, 1.0, scale_t, backend=backend,
                                        check_inputs=False)
                opt.zero_grad(set_to_none=True)
                loss.backward()
            lrs[step] = opt.param_groups[0]["lr"]
            opt.step()
            sched.step()
            with torch.no_grad():
                losses[step] = loss.detach()
                mu_hat = F.normalize(mu.detach(), dim=1)
                score = (mu_hat * w_hat).sum(1).mean().double()
                scores[step] = score
                better = score > best_score  # on device: no host sync per step
                best_mu = torch.where(better, mu_hat, best_mu)  # a new tensor: a copy, not an alias
                best_score = torch.where(better, score, best_score)
                best_step = torch.where(better, torch.tensor(step, device=device), best_step)
            if progress and (step % show_every == 0 or step == steps - 1):
                bar.update(step + 1 - bar.n, loss=float(loss.detach()))
    seconds = time.perf_counter() - t0

    final_mu = F.normalize(mu.detach(), dim=1)
    out = final_mu if select == "final" else best_mu
    out_dtype = t.dtype if t.dtype in (torch.float32, torch.float64) else torch.float32
    out = out.to(out_dtype).clone()
    if not return_info:
        return out
    info = VMFFitInfo(
        losses=losses.cpu(),
        lrs=lrs,
        cos_to_teacher=scores.cpu(),
        kappa=k.cpu(),
        final_mu=final_mu.cpu().clone(),
        best_mu=best_mu.cpu().clone(),
        best_step=int(best_step),
        seconds=seconds,
    )
    return out, info


# ------------------------------------------------------------------------------- sampling
_MAX_ROWS = 2**31 - 1  # rows of one call: int32 indexing in the kernels, and far beyond memory


def _labels_for(num_per_class, C: int, order: str, device) -> torch.Tensor:
    if isinstance(num_per_class, bool):
        raise TypeError("num_per_class: expected an int or (C,) integer counts, got bool")
    if isinstance(num_per_class, int):
        if not 0 <= num_per_class <= _MAX_ROWS:
            raise ValueError(f"num_per_class: expected an int in [1, {_MAX_ROWS}], got "
                             f"{num_per_class}")
        counts = torch.full((C,), num_per_class, dtype=torch.int64)
    else:
        try:
            counts = torch.as_tensor(num_per_class)
        except (TypeError, ValueError, RuntimeError):
            raise TypeError("num_per_class: expected an int or (C,) integer counts, got "
                            f"{type(num_per_class).__name__}") from None
        if counts.dtype.is_floating_point or counts.is_complex() or counts.dtype == torch.bool:
            raise TypeError(f"num_per_class: expected integer counts, got dtype {counts.dtype}")
        if counts.shape != (C,):
            raise ValueError(
                f"num_per_class: expected an int or shape ({C},), got {tuple(counts.shape)}"
            )
        counts = counts.to(torch.int64).cpu()
    if C and int(counts.min()) < 1:
        c = int((counts < 1).nonzero()[0, 0])
        raise ValueError(
            f"num_per_class: every class needs >= 1 sample; class {c} asks {int(counts[c])}"
        )
    if int(counts.sum()) > _MAX_ROWS:
        raise ValueError(f"num_per_class: {int(counts.sum())} samples in all; at most "
                         f"{_MAX_ROWS} per call (draw in chunks)")
    lab = torch.repeat_interleave(torch.arange(C), counts)
    if order == "round_robin":
        # rows ordered [class 0..C-1] x rounds, as the reference's `num` rounds of one sample
        # per class; with unequal counts a class drops out once its count is exhausted.
        start = torch.cumsum(counts, 0) - counts
        within = torch.arange(lab.numel()) - start[lab]
        lab = lab[torch.argsort(within * C + lab)]
    elif order != "class_major":
        raise ValueError(f"order: expected 'round_robin' or 'class_major', got {order!r}")
    return lab.to(device), counts


@torch.no_grad()
def select_trusted(
    x: torch.Tensor,
    y: torch.Tensor,
    teacher: Teacher | torch.Tensor | torch.nn.Linear,
    *,
    allow_empty_class: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, KeepStats]:
    """Keep the samples whose teacher argmax equals their label (DFZSL's trusted filter).

    Args:
        x: (N, d) features. y: (N,) int64 labels in [0, C_s).
        teacher: a `Teacher` (or weights / nn.Linear, see `as_teacher`).
        allow_empty_class: if False (default), a class with samples drawn but none kept is a
            ValueError naming the classes (the reference asserts the same).

    Returns:
        (x_kept, y_kept, stats): the kept rows in their original order, and `KeepStats`.
    """
    teacher = as_teacher(teacher)
    if not isinstance(y, torch.Tensor) or y.dtype != torch.int64 or y.dim() != 1:
        raise TypeError("y: expected an (N,) int64 tensor of labels")
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError("x: expected an (N, d) floating-point tensor")
    if x.dim() != 2 or x.shape[0] != y.shape[0]:
        raise ValueError(
            f"x and y: expected (N, d) and (N,), got {tuple(x.shape)} and {tuple(y.shape)}"
        )
    C = teacher.num_classes
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= C):
        raise ValueError(f"y: labels must lie in [0, {C}) (the teacher's classes)")
    keep = teacher.predict(x) == y
    drawn = torch.bincount(y, minlength=C).cpu()
    kept = torch.bincount(y[keep], minlength=C).cpu()
    lost = ((drawn > 0) & (kept == 0)).nonzero().flatten()
    if lost.numel() and not allow_empty_class:
        names = ", ".join(str(int(c)) for c in lost[:10]) + (" ..." if lost.numel() > 10 else "")
        raise ValueError(
            f"trusted-sample filter: the teacher rejects every sample of {lost.numel()} class(es) "
            f"({names}); fit the vMF means longer (more steps / higher lr), raise kappa, or check "
            "that the text features and the teacher use the same class order"
        )
    return x[keep], y[keep], KeepStats(drawn=drawn, kept=kept)


@torch.no_grad()
def virtual_features(
    mu: torch.Tensor,
    kappa: float | torch.Tensor | None,
    num_per_class: int | Sequence[int] | torch.Tensor,
    teacher: Teacher | torch.Tensor | torch.nn.Linear,
    seed: int | None = 0,
    order: str = "round_robin",
    *,
    text_features: torch.Tensor | None = None,
    wood_b: str = "exact",
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor, KeepStats]:
    """Draw vMF virtual features of the base classes and keep the teacher-trusted ones.

    Args:
        mu: (C_s, d) fitted mean directions (from `fit_vmf_means`).
        kappa: scalar or (C_s,); None: `default_kappa(text_features)` (so give `text_features`,
            the base-class text features the fit started from, as the reference does).
        num_per_class: an int (DFZSL's `vdm.num`: AWA2 600, CUB 100, SUN 50, ...) or (C_s,) counts.
        teacher: a `Teacher` (or weights / nn.Linear).
        seed: sampler seed (None: drawn from torch's default generator).
        order: "round_robin" (reference: rows [class 0..C-1] x rounds) or "class_major".
        text_features: only needed when kappa is None.
        wood_b: "exact" or "reference" (see `sample_vmf`).
        backend: sampler/cosine backend.

    Returns:
        (x, y, stats): (M, d) unit-norm kept features in mu's dtype, (M,) int64 labels (the
        sampling order restricted to kept rows), and `KeepStats` with per-class drawn/kept.

    Raises:
        ValueError: a class loses all its samples, shape/width mismatches, bad counts or order.

    Example:
        >>> x, y, stats = virtual_features(mu, None, 600, teacher, seed=0, text_features=text_base)
        >>> print(stats)
    """
    mu = _check_features(mu, "mu")
    C, d = mu.shape
    teacher = _teacher_for(teacher, C, d, "mu")
    if kappa is None:
        if text_features is None:
            raise ValueError(
                "kappa is None: give kappa, or text_features (the base-class text features) to "
                "compute DFZSL's default kappa from"
            )
        tf = _check_features(text_features, "text_features")
        if tf.shape != mu.shape:
            raise ValueError(
                f"text_features: expected shape {tuple(mu.shape)} like mu, got {tuple(tf.shape)}"
            )
        kappa = default_kappa(tf)
    k = _kappa_tensor(kappa, C, mu.device)
    labels, _ = _labels_for(num_per_class, C, order, mu.device)
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise TypeError(f"seed: expected an int or None, got {type(seed).__name__}")
    dtype = _compute_dtype(mu)
    x, y = sample_vmf(mu.to(dtype), k, labels=labels, seed=seed, wood_b=wood_b, backend=backend)
    return select_trusted(x, y, teacher)


@dataclass
class VirtualDomain:
    """Stage 1's output (`virtual_stage`).

    Attributes:
        mu: (C_s, d) fitted vMF mean directions; kappa: (C_s,) float64 concentrations.
        x: (M, d) kept virtual features; y: (M,) int64 labels in teacher-row indices.
        keep: per-class drawn/kept counts.
    """

    mu: torch.Tensor
    kappa: torch.Tensor
    x: torch.Tensor
    y: torch.Tensor
    keep: KeepStats


def virtual_stage(
    teacher: Teacher,
    text_features: torch.Tensor,
    config: SimulatorConfig,
    *,
    seed: int = 0,
    progress: bool = True,
    backend: str | None = None,
) -> VirtualDomain:
    """Stage 1 from its config: kappa, fitted vMF means, then the teacher-trusted draws.

    Args:
        teacher: the black-box base classifier (C_s classes).
        text_features: (C_s, d) the base classes' text features (the means start there).
        config: every field of the `SimulatorConfig` is used (``lr_gamma`` / ``lr_power`` of
            the schedule included); ``trusted_filter=False`` keeps every draw (ablation).
        seed: the fit uses ``seed``, the draws ``mix_seed(seed, 1)``.
    """
    if not isinstance(config, SimulatorConfig):
        raise TypeError(f"config: expected a SimulatorConfig, got {type(config).__name__}")
    device = teacher.weight.device
    kappa = default_kappa(text_features, shared=config.kappa_shared,
                          multiplier=config.kappa_multiplier).to(device)
    mu = fit_vmf_means(
        teacher, text_features, kappa, steps=config.epochs, lr=config.lr,
        nsample=config.nsample, weight_decay=config.weight_decay, lr_gamma=config.lr_gamma,
        lr_power=config.lr_power, seed=seed, wood_b=config.wood_b, progress=progress,
        backend=backend,
    )
    draw_seed = mix_seed(seed, 1)
    if config.trusted_filter:
        x, y, keep = virtual_features(mu, kappa, config.num, teacher, seed=draw_seed,
                                      wood_b=config.wood_b, backend=backend)
    else:  # keep everything that was drawn: the same draws, no filter
        labels, _ = _labels_for(config.num, mu.shape[0], "round_robin", device)
        x, y = sample_vmf(mu, kappa, labels=labels, seed=draw_seed, wood_b=config.wood_b,
                          backend=backend)
        drawn = torch.bincount(y.cpu(), minlength=mu.shape[0])
        keep = KeepStats(drawn, drawn.clone())
    return VirtualDomain(mu, kappa, x, y, keep)
