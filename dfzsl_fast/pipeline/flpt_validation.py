"""How long to tune prompts, chosen on virtual data only (ours; not in the published method).

Prompt tuning fits a context shared by all classes, but its loss sees only the base classes. If
the tuned context stops generalising, the new classes' text features fall behind the base
classes' and new-class accuracy drops. The published code picks its epoch by the best H on the
*test* set; we do not look at test data. Instead:

1. hold out a fraction of the **base** classes (pseudo-new classes, drawn with the seed);
2. tune prompts on the virtual features of the other base classes only;
3. every few steps (and at step 0, the untuned prompts), classify the virtual features of
   **all** base classes among all base classes, with the current text features and residual:
   per-class accuracy on the fitted classes (A_fit) and on the held-out ones (A_held), and
   their harmonic mean H_val, the GZSL criterion on a class-disjoint split;
4. the number of steps with the best H_val (the earliest on ties) is the budget for the real
   run on all base classes; 0 means prompt tuning is skipped, and that is reported.

The held-out classes' virtual features stand in for images of new classes: they come from the
teacher, never from test images. Cost: one extra, shorter prompt-tuning run.

Example:
    >>> v = select_flpt_steps(tower, names, cfg.template, x_virtual, y_global, seen, cfg.flpt)
    >>> v.steps, v.curve[:3]          # chosen budget; [(step, A_fit, A_held, H_val), ...]
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..config import FLPTConfig
from ..hashing import seeded_generator
from ..metrics import harmonic_mean, per_class_accuracy
from ._progress import Progress
from .flpt import PromptLearner, train_flpt

__all__ = ["FLPTValidation", "select_flpt_steps"]

log = logging.getLogger(__name__)


@dataclass
class FLPTValidation:
    """Outcome of `select_flpt_steps`.

    Attributes:
        steps: chosen number of prompt-tuning steps on the full base set (0: do not tune).
        fraction: steps / the configured number of steps.
        curve: [(step, A_fit, A_held, H_val)] measured during the validation run.
        held_out: (K,) int64 global indices of the pseudo-new classes.
    """

    steps: int
    fraction: float
    curve: list[tuple[int, float, float, float]] = field(default_factory=list)
    held_out: torch.Tensor | None = None


def _per_class_mean(pred: torch.Tensor, target: torch.Tensor, classes: torch.Tensor) -> float:
    """Mean over `classes` present in `target` of their top-1 accuracy (0 when none is)."""
    acc, cnt = per_class_accuracy(pred, target, classes)
    acc = acc[cnt > 0]
    return float(acc.mean()) if acc.numel() else 0.0


def select_flpt_steps(
    tower,
    class_names: Sequence[str],
    template: str,
    features: torch.Tensor,
    labels: torch.Tensor,
    seen_classes: torch.Tensor,
    config: FLPTConfig,
    *,
    seed: int = 0,
    holdout_fraction: float = 0.2,
    num_evals: int = 2,
    max_eval_rows: int = 4000,
    downstream: dict | None = None,
    progress: bool = False,
) -> FLPTValidation:
    """Choose the prompt-tuning budget on a class-disjoint split of the virtual base features.

    Args:
        tower, class_names, template, config: as for `train_flpt`.
        features: (N, D) virtual base features (stage-1 order); labels: (N,) global indices.
        seen_classes: (C_s,) global indices of the base classes.
        seed: seeds the split and the validation run.
        holdout_fraction: share of base classes held out (at least 1, at most C_s - 2).
        num_evals: evaluation points along the validation run (plus step 0).
        max_eval_rows: virtual rows used per evaluation (a fixed, class-balanced subset).
        downstream: when given, {"kappa": float, "syn_num": int, "classifier": ClassifierConfig}:
            each evaluation trains the final classifier as the pipeline would (fitted classes'
            virtual features + vMF features drawn around the held-out classes' current text
            features) and scores it on held-out data (GZSL H over fitted vs held-out classes),
            so the criterion sees the effect of the tuned text on the whole downstream. Without
            it, the current text features classify directly.
        progress: show the validation run's progress (a bar on a terminal, else plain lines).

    Returns:
        `FLPTValidation`.
    """
    seen = torch.as_tensor(seen_classes, dtype=torch.int64).cpu()
    Cs = seen.numel()
    if Cs < 3:
        return FLPTValidation(steps=-1, fraction=1.0)  # too few classes to hold any out
    k = min(max(1, round(holdout_fraction * Cs)), Cs - 2)
    g = seeded_generator(seed, 7)
    held = seen[torch.randperm(Cs, generator=g)[:k]].sort().values
    y_cpu = labels.cpu()
    is_held = torch.isin(y_cpu, held)
    fit_classes = seen[~torch.isin(seen, held)]
    x_fit, y_fit = features[~is_held.to(features.device)], labels[~is_held.to(labels.device)]
    y_fit_cpu = y_cpu[~is_held]

    # a fixed evaluation subset (every row when small)
    n = features.shape[0]
    ev = torch.randperm(n, generator=g)[: min(n, max_eval_rows)].sort().values
    x_ev = features[ev.to(features.device)].float()
    y_ev = y_cpu[ev]
    # map global labels of base classes to positions in `seen` (argmax is over base classes)
    pos = torch.full((len(class_names),), -1, dtype=torch.int64)
    pos[seen] = torch.arange(Cs)
    prepared = tower.prepare(template, list(class_names), config.n_ctx, config.ctx_init)
    seen_dev = seen.to(tower.device)

    curve: list[tuple[int, float, float, float]] = []
    held_pos, fit_pos = pos[held], pos[fit_classes]
    y_fit_pos = pos[y_fit_cpu]

    def _downstream_predict(text, learner, x, held_pos, fit_pos):
        """Train stage 4 on fitted virtual + vMF around held-out text; predict x (base space)."""
        from .. import sample_vmf
        from .classifier import train_final_classifier

        ccfg = downstream["classifier"]
        k = torch.full((held_pos.numel(),), float(downstream["kappa"]), dtype=torch.float64)
        xs, ys = sample_vmf(text[held_pos].cpu(), k, n_per_class=int(downstream["syn_num"]),
                            seed=int(seed) + 11)
        xf = F.normalize(learner.shift(x_fit.float().to(text.device)), dim=1).cpu()
        x_tr = torch.cat([xf, xs.to(xf.dtype)])
        y_tr = torch.cat([y_fit_pos, held_pos[ys]])
        with torch.enable_grad():  # measure() runs under no_grad
            head = train_final_classifier(
                x_tr, y_tr, text.cpu(), fit_pos, held_pos, ccfg,
                batch_size=ccfg.batch_size or int(downstream["syn_num"]), seed=int(seed),
                progress=False,
            )
        return head.predict(x.cpu()).cpu()

    def measure(step: int, learner: PromptLearner) -> None:
        with torch.no_grad():
            text = F.normalize(learner.text_features(prepared, seen_dev), dim=1)
            x = F.normalize(learner.shift(x_ev.to(text.device)), dim=1)
            if downstream is None:
                pred = (x @ text.T).argmax(1).cpu()
            else:
                pred = _downstream_predict(text, learner, x, held_pos, fit_pos)
        target = pos[y_ev]  # positions among the base classes, like pred
        a_fit = _per_class_mean(pred, target, fit_pos)
        a_held = _per_class_mean(pred, target, held_pos)
        curve.append((step, a_fit, a_held, harmonic_mean(a_fit, a_held)))

    total = math.ceil(x_fit.shape[0] / config.batch_size) * config.epochs
    every = max(1, total // max(1, num_evals))
    learner0 = PromptLearner.from_config(tower, config, seed=seed)
    measure(0, learner0)

    with Progress(total, "dfzsl stage 2: prompt validation", enabled=progress) as bar:

        def callback(step: int, learner: PromptLearner, loss: float) -> None:
            if step % every == 0 or step == total:
                measure(step, learner)
            bar.update(loss=loss)

        train_flpt(tower, list(class_names), template, x_fit, y_fit, fit_classes, config,
                   seed=seed, progress=False, callback=callback)
    best = max(curve, key=lambda r: (r[3], -r[0]))
    frac = best[0] / total if total else 0.0
    full_total = math.ceil(features.shape[0] / config.batch_size) * config.epochs
    steps = int(round(frac * full_total))
    log.info("FLPT validation (held-out base classes %s): H_val by step %s -> %d of %d steps",
             held.tolist(), [(s, round(h, 3)) for s, _, _, h in curve], steps, full_total)
    return FLPTValidation(steps=steps, fraction=frac, curve=curve, held_out=held)
