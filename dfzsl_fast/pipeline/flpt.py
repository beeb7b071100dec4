"""Stage 2 of DFZSL: feature-language prompt tuning, FLPT (method.md 2.4).

What is learned (the text tower stays frozen):

1. ctx (n_ctx, width): context vectors shared by all classes (unified CoOp), initialised from
   the token embeddings of ``ctx_init`` ("a photo of a", so n_ctx = 4) and spliced into every
   class prompt in place of those words (`dfzsl_fast.text.towers.ctx_suffix_template`).
2. t2i: Linear(width -> hidden) -> QuickGELU -> Linear(hidden -> D), first layer N(0, 0.02)
   with zero bias, second layer (weight and bias) zero. image_residual = mean_k t2i(ctx_k) is
   ONE D-dim vector; every image feature becomes x' = x + residual_weight * image_residual, a
   global shift shared by all images (so x' == x before the first update).

Loss: cross-entropy of logit_scale * cos(x', t_c) over the **seen** classes. AdamW (lr 3e-3,
weight decay 0.01) on ctx and t2i only; ``epochs`` passes over the virtual features in
consecutive batches of ``batch_size`` rows (their round-robin order, no shuffling unless
``config.shuffle``).

Differences from the reference code (same result, less work): the prompts are tokenised once,
and each step encodes only the seen-class prompts, once per step. The reference encodes all
classes every step, but unseen-class features never enter the loss, so their values and
gradients are unused. The tuned features of all classes are computed once, at the end.
fp32 throughout (the reference uses fp16 autocast on GPU).

Cost: each step is one forward + backward of the text tower over C_s prompts, nearly
independent of the batch size, so the number of steps (N / batch_size * epochs) sets the time;
the published batch of 4 is the slow setting. ``max_classes_per_step`` (ours, off by default)
samples the batch's classes plus random negatives for very large label sets.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..config import FLPTConfig
from ..hashing import seeded_generator
from ..text.towers import PreparedPrompts, TextTower
from ._progress import Progress

__all__ = ["QuickGELU", "PromptLearner", "FLPTResult", "apply_residual", "train_flpt"]

logger = logging.getLogger(__name__)


class QuickGELU(nn.Module):
    """x * sigmoid(1.702 x), CLIP's activation (the reference's t2i uses it)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


def apply_residual(x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """Shift image features by FLPT's shared residual: x' = x + residual.

    Args:
        x: (..., D) float features (virtual train or real test: the reference shifts both).
        residual: (D,) float, `FLPTResult.residual` (already scaled by residual_weight).

    Returns:
        Tensor like x (x's dtype and device). Differentiable: yes.

    Example:
        >>> x_test_shifted = apply_residual(x_test, result.residual)
    """
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() < 1:
        raise TypeError("`x` must be a floating-point tensor of shape (..., D)")
    if not isinstance(residual, torch.Tensor) or residual.dim() != 1:
        raise TypeError("`residual` must be a (D,) tensor")
    if residual.shape[0] != x.shape[-1]:
        raise ValueError(f"`residual` has {residual.shape[0]} dims but `x` has width {x.shape[-1]}")
    return x + residual.to(device=x.device, dtype=x.dtype)


class PromptLearner(nn.Module):
    """FLPT's learnable part: shared context vectors and the text-to-image residual MLP.

    Args:
        tower: the frozen `TextTower` (read for width, output_dim and the ctx_init embeddings;
            not stored, so ``learner.parameters()`` is exactly ctx and t2i).
        n_ctx: number of context vectors.
        ctx_init: words to initialise ctx from (their token count must equal n_ctx), or None
            for N(0, 0.02) random init.
        hidden: hidden width of t2i (2048 in the reference).
        residual_weight: r in x' = x + r * image_residual (0.005 in the reference).
        seed: seeds the random inits (t2i's first layer; ctx when ctx_init is None) with a
            private generator; the global RNG is untouched.

    Attributes:
        ctx: (n_ctx, width) float32 Parameter on the tower's device.
        t2i: Sequential(Linear(width, hidden), QuickGELU, Linear(hidden, output_dim)).

    Raises:
        ValueError: n_ctx differs from the number of ctx_init tokens; bad sizes.
        TypeError: the tower is not tunable (`FixedTextFeatures`).
    """

    def __init__(
        self,
        tower: TextTower,
        n_ctx: int = 4,
        ctx_init: str | None = "a photo of a",
        *,
        hidden: int = 2048,
        residual_weight: float = 0.005,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if not isinstance(tower, TextTower):
            raise TypeError(f"`tower` must be a TextTower, got {type(tower).__name__}")
        if not tower.tunable:
            raise TypeError(f"`tower` ({tower.name}) is not tunable: it has no text encoder")
        for name, v in (("n_ctx", n_ctx), ("hidden", hidden)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"`{name}` must be an int >= 1, got {v!r}")
        if not (isinstance(residual_weight, (int, float)) and math.isfinite(residual_weight)):
            raise ValueError(f"`residual_weight` must be a finite number, got {residual_weight!r}")
        width, out, device = int(tower.width), tower.output_dim, tower.device
        gen = seeded_generator(seed)
        if ctx_init is not None and ctx_init.strip():
            init = tower.token_embeddings(ctx_init).detach().float()
            if init.shape[0] != n_ctx:
                raise ValueError(
                    f"`n_ctx` is {n_ctx} but `ctx_init` {ctx_init!r} is {init.shape[0]} tokens "
                    f"for {tower.name}; set n_ctx = {init.shape[0]} or change ctx_init"
                )
            ctx = init.cpu().clone()
            self.ctx_init: str | None = " ".join(ctx_init.split())
        else:
            ctx = torch.empty(n_ctx, width)
            nn.init.normal_(ctx, std=0.02, generator=gen)
            self.ctx_init = None
        self.n_ctx = n_ctx
        self.residual_weight = float(residual_weight)
        self.ctx = nn.Parameter(ctx)
        self.t2i = nn.Sequential(nn.Linear(width, hidden), QuickGELU(), nn.Linear(hidden, out))
        with torch.no_grad():
            nn.init.normal_(self.t2i[0].weight, std=0.02, generator=gen)
            nn.init.zeros_(self.t2i[0].bias)
            # zero second layer: the residual starts at 0, so x' == x at step 0
            nn.init.zeros_(self.t2i[2].weight)
            nn.init.zeros_(self.t2i[2].bias)
        self.to(device)

    @classmethod
    def from_config(cls, tower: TextTower, config: FLPTConfig, seed: int = 0) -> PromptLearner:
        """A learner with ``config``'s n_ctx, ctx_init, residual_hidden and residual_weight."""
        return cls(
            tower,
            config.n_ctx,
            config.ctx_init,
            hidden=config.residual_hidden,
            residual_weight=config.residual_weight,
            seed=seed,
        )

    def image_residual(self) -> torch.Tensor:
        """(D,) mean over the context tokens of t2i(ctx_k). Differentiable w.r.t. ctx and t2i."""
        return self.t2i(self.ctx).mean(dim=0)

    def residual(self) -> torch.Tensor:
        """(D,) residual_weight * image_residual: the shift added to every image feature."""
        return self.residual_weight * self.image_residual()

    def shift(self, x: torch.Tensor) -> torch.Tensor:
        """(N, D) -> (N, D): x' = x + residual (one vector shared by all rows)."""
        return x + self.residual().to(x.dtype)

    def text_features(
        self, prepared: PreparedPrompts, index: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(C or B, D) float32 features of the prepared prompts with this learner's ctx."""
        return prepared(self.ctx, index)


@dataclass
class FLPTResult:
    """What `train_flpt` returns (tensors detached, on the CPU).

    Attributes:
        text_features: (C_all, D) float32 tuned text features of ALL classes (seen and
            unseen), in class_names order, computed once after training; the fixed features
            unchanged when ``skipped``. As the tower returns them (open_clip: unnormalised;
            projected MiniLM: unit rows).
        residual: (D,) float32 residual_weight * image_residual; add it to every image
            feature with `apply_residual` (zeros when skipped).
        ctx: (n_ctx, width) float32 learned context, or None when skipped.
        t2i_state: state dict of the t2i MLP, or None when skipped.
        skipped: True when the tower was not tunable (no prompt tuning happened).
        skip_reason: why it was skipped, else None.
        losses: cross-entropy of each step, before that step's update.
        steps: optimiser steps taken.
        seconds: wall time of the training loop (0 when skipped).
        tower_name: the tower's provenance string.
        prompts: the prompt texts, with placeholder words for the context slots.
    """

    text_features: torch.Tensor
    residual: torch.Tensor
    ctx: torch.Tensor | None
    t2i_state: dict[str, torch.Tensor] | None
    skipped: bool
    skip_reason: str | None = None
    losses: list[float] = field(default_factory=list)
    steps: int = 0
    seconds: float = 0.0
    tower_name: str = ""
    prompts: list[str] = field(default_factory=list)

    def shift(self, x: torch.Tensor) -> torch.Tensor:
        """`apply_residual(x, self.residual)`."""
        return apply_residual(x, self.residual)


# ------------------------------------------------------------------------------------------
# input checks
# ------------------------------------------------------------------------------------------


def _check_inputs(
    tower: TextTower,
    class_names: Sequence[str],
    template: str,
    features: torch.Tensor,
    labels: torch.Tensor,
    seen_classes: Sequence[int] | torch.Tensor,
    config: FLPTConfig,
) -> tuple[list[str], torch.Tensor, torch.Tensor, torch.Tensor]:
    if not isinstance(tower, TextTower):
        raise TypeError(f"`tower` must be a TextTower, got {type(tower).__name__}")
    if not isinstance(config, FLPTConfig):
        raise TypeError(f"`config` must be an FLPTConfig, got {type(config).__name__}")
    if isinstance(class_names, str):
        raise TypeError("`class_names` must be a sequence of names, not a single string")
    names = list(class_names)
    if not names:
        raise ValueError("`class_names` is empty")
    for i, n in enumerate(names):
        if not isinstance(n, str) or not n.strip():
            raise ValueError(f"`class_names`[{i}] must be a non-empty string, got {n!r}")
    if not isinstance(template, str) or template.count("{}") != 1:
        raise ValueError(f"`template` must be a string with exactly one '{{}}', got {template!r}")
    C = len(names)
    if not isinstance(features, torch.Tensor) or not features.is_floating_point():
        raise TypeError("`features` must be an (N, D) floating-point tensor")
    if features.dim() != 2:
        raise ValueError(f"`features` must be (N, D), got shape {tuple(features.shape)}")
    N, D = features.shape
    if N == 0:
        raise ValueError("`features` is empty (no virtual features to tune on)")
    if D != tower.output_dim:
        raise ValueError(
            f"`features` width {D} does not match the tower's output_dim {tower.output_dim} "
            f"({tower.name}); the image features and text features must share one space"
        )
    if not bool(torch.isfinite(features).all()):
        raise ValueError("`features` contains NaN or Inf")
    if not isinstance(labels, torch.Tensor) or labels.dtype != torch.int64 or labels.dim() != 1:
        raise TypeError("`labels` must be an (N,) int64 tensor of global class indices")
    if labels.shape[0] != N:
        raise ValueError(f"`labels` has {labels.shape[0]} entries for {N} feature rows")
    seen = torch.as_tensor(seen_classes)
    if seen.dtype.is_floating_point or seen.dtype == torch.bool or seen.dim() != 1:
        raise TypeError("`seen_classes` must be a 1-D sequence of integer class indices")
    seen = seen.to(torch.int64).cpu()
    if seen.numel() == 0:
        raise ValueError("`seen_classes` is empty")
    if int(seen.min()) < 0 or int(seen.max()) >= C:
        raise ValueError(f"`seen_classes` must lie in [0, {C}) (indices into class_names)")
    if seen.unique().numel() != seen.numel():
        raise ValueError("`seen_classes` has duplicate class indices")
    pos = torch.full((C,), -1, dtype=torch.int64)
    pos[seen] = torch.arange(seen.numel())
    y = labels.detach().cpu()
    if int(y.min()) < 0 or int(y.max()) >= C:
        raise ValueError(f"`labels` must be global class indices in [0, {C})")
    targets = pos[y]
    if bool((targets < 0).any()):
        bad = sorted(set(y[targets < 0].tolist()))[:5]
        raise ValueError(
            f"`labels` contains classes that are not in `seen_classes` (e.g. {bad}); labels "
            "are global class indices (for virtual_features' seen-local labels pass "
            "seen_classes[y])"
        )
    return names, seen, targets, pos


# ------------------------------------------------------------------------------------------
# training
# ------------------------------------------------------------------------------------------


@torch.no_grad()
def _all_features(learner: PromptLearner, prepared: PreparedPrompts, chunk: int) -> torch.Tensor:
    outs = [
        learner.text_features(prepared, torch.arange(s, min(s + chunk, len(prepared))))
        for s in range(0, len(prepared), chunk)
    ]
    return torch.cat(outs).float().cpu()


def _step_classes(
    yb: torch.Tensor, n_seen: int, cap: int | None, gen: torch.Generator
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """Seen positions to encode this step (None: all) and the targets remapped to them."""
    if cap is None or cap >= n_seen:
        return None, yb
    present = torch.unique(yb)
    chosen = present
    if present.numel() < cap:
        others = torch.ones(n_seen, dtype=torch.bool)
        others[present] = False
        pool = others.nonzero().flatten()
        extra = pool[torch.randperm(pool.numel(), generator=gen)[: cap - present.numel()]]
        chosen = torch.sort(torch.cat([present, extra])).values
    remap = torch.full((n_seen,), -1, dtype=torch.int64)
    remap[chosen] = torch.arange(chosen.numel())
    return chosen, remap[yb]


def train_flpt(
    tower: TextTower,
    class_names: Sequence[str],
    template: str,
    features: torch.Tensor,
    labels: torch.Tensor,
    seen_classes: Sequence[int] | torch.Tensor,
    config: FLPTConfig | None = None,
    *,
    seed: int = 0,
    progress: bool = True,
    max_classes_per_step: int | None = None,
    callback: Callable[[int, PromptLearner, float], None] | None = None,
) -> FLPTResult:
    """Run FLPT: tune the shared context and the residual MLP on (virtual) seen features.

    Args:
        tower: a `TextTower` (open_clip, MiniLM, projected MiniLM). A `FixedTextFeatures`
            tower is not tunable: its features are returned unchanged, ``skipped=True``, and a
            warning is logged.
        class_names: C_all class names (seen and unseen), in global class order.
        template: the dataset's prompt template with one ``{}`` (e.g. "a photo of a {}, a
            type of animal."); its leading ctx_init words are replaced by the context.
        features: (N, D) float virtual features of the seen classes, D = tower.output_dim, in
            the order to train on (stage 1's round-robin order); cast to float32.
        labels: (N,) int64 **global** class indices (each in seen_classes).
        seen_classes: (C_s,) int indices into class_names; the loss is over these classes.
        config: `FLPTConfig` (default: the published AWA2 settings).
        seed: seeds the t2i init, a random ctx init, shuffling and negative sampling (private
            generators; the global RNG is untouched). Same seed, same inputs: same result.
        progress: show a progress bar over the steps.
        max_classes_per_step: encode only the batch's classes plus random negatives, at most
            this many seen classes per step (ours; None = all seen classes, as published).
        callback: called as callback(step, learner, loss) after each step.

    Returns:
        `FLPTResult` (tuned text features of all classes, the residual, ctx, t2i state, losses).

    Raises:
        ValueError: features width != tower.output_dim, empty or non-finite features, labels
            outside seen_classes, bad indices, n_ctx != number of ctx_init tokens.
        TypeError: wrong argument types.

    Differentiable: no (training loop). The tower's parameters are never updated; their
    ``requires_grad`` flags are restored on return.

    Example:
        >>> res = train_flpt(tower, names, cfg.template, x_virtual, seen[y_virtual], seen,
        ...                  cfg.flpt, seed=0)
        >>> x_test = res.shift(x_test); text_all = res.text_features
    """
    config = FLPTConfig() if config is None else config
    names, seen, targets, _ = _check_inputs(
        tower, class_names, template, features, labels, seen_classes, config
    )
    if max_classes_per_step is not None and (
        isinstance(max_classes_per_step, bool)
        or not isinstance(max_classes_per_step, int)
        or max_classes_per_step < 1
    ):
        raise ValueError(f"`max_classes_per_step` must be an int >= 1, got {max_classes_per_step}")
    D = features.shape[1]

    if not tower.tunable:
        reason = (
            f"the text tower {tower.name!r} has no text encoder (precomputed features), so "
            "there is no context to tune"
        )
        logger.warning("FLPT skipped: %s; text features returned unchanged, residual 0", reason)
        text = tower.class_features(names, template).float().cpu()
        return FLPTResult(
            text_features=text,
            residual=torch.zeros(D),
            ctx=None,
            t2i_state=None,
            skipped=True,
            skip_reason=reason,
            tower_name=tower.name,
        )

    device = tower.device
    x_all = features.detach().to(device=device, dtype=torch.float32)
    y_all = targets.to(device)
    seen_dev = seen.to(device)
    N, Cs = x_all.shape[0], seen.numel()
    bs, epochs = int(config.batch_size), int(config.epochs)
    steps_per_epoch = math.ceil(N / bs)
    total = steps_per_epoch * epochs

    # freeze the tower for the duration (ctx still gets gradients *through* it)
    flags = [(p, p.requires_grad) for p in tower.parameters()]
    tower.requires_grad_(False)
    tower.eval()
    try:
        learner = PromptLearner.from_config(tower, config, seed=seed)
        prepared = tower.prepare(template, names, learner.n_ctx, config.ctx_init)
        opt = torch.optim.AdamW(
            learner.parameters(), lr=float(config.lr), weight_decay=float(config.weight_decay)
        )
        gen = seeded_generator(seed, 1)  # not the init's stream
        logger.info(
            "FLPT: %d features, %d seen / %d classes, %d steps (batch %d, %d epochs), tower %s",
            N, Cs, len(names), total, bs, epochs, tower.name,
        )  # fmt: skip
        losses: list[torch.Tensor] = []
        step = 0
        t0 = time.perf_counter()
        with Progress(total, "dfzsl stage 2: FLPT", enabled=progress) as bar:
            for _ in range(epochs):
                if config.shuffle:
                    order = torch.randperm(N, generator=gen).to(device)
                else:
                    order = torch.arange(N, device=device)
                for s in range(0, N, bs):
                    idx = order[s : s + bs]
                    yb, cls = y_all[idx], seen_dev
                    if max_classes_per_step is not None:  # (host round trip only when capped)
                        chosen, yb = _step_classes(yb.cpu(), Cs, max_classes_per_step, gen)
                        if chosen is not None:
                            cls = seen_dev[chosen.to(device)]
                    text = learner.text_features(prepared, cls)  # one encode per step
                    xb = learner.shift(x_all[idx])
                    logits = config.logit_scale * (
                        F.normalize(xb, dim=1) @ F.normalize(text, dim=1).T
                    )
                    loss = F.cross_entropy(logits, yb.to(device))
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    lv = loss.detach()
                    losses.append(lv)
                    step += 1
                    if callback is not None:
                        callback(step, learner, float(lv))
                    # reading the loss syncs a GPU: only now and then
                    if step % 25 == 0 or step == total:
                        bar.update(step - bar.n, loss=float(lv))
        seconds = time.perf_counter() - t0
        text_all = _all_features(learner, prepared, 256)
        with torch.no_grad():
            residual = learner.residual().float().cpu()
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
    return FLPTResult(
        text_features=text_all,
        residual=residual,
        ctx=learner.ctx.detach().float().cpu().clone(),
        t2i_state={k: v.detach().cpu().clone() for k, v in learner.t2i.state_dict().items()},
        skipped=False,
        losses=torch.stack(losses).double().cpu().tolist() if losses else [],
        steps=step,
        seconds=seconds,
        tower_name=tower.name,
        prompts=list(prepared.texts),
    )
