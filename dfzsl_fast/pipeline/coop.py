"""CoOp, and CoOp + SHIP (method.md 4.3), data-free: prompt tuning of the class prompts on base
features plus synthetic new-class features, reported in GZSL and base-to-new.

`train_coop(features, labels, class_names, tower, template, seen, unseen, config, generator=...)`
learns the context ctx of the prompts "[ctx] {classname}, ..." so that
100 cos(x, normalize(tower(ctx, class))) classifies the training rows over all base + new
classes (cross-entropy), by SGD with cosine annealing. The base rows are DFZSL's virtual base
features (data-free) or a user's real base features; with a `FeatureGenerator` (SHIP's: it
synthesizes through the same tower), each step adds a batch of synthetic new-class rows with
labels uniform over the new classes (SHIP's recipe; drawn from a pool made once, see
`CoOpConfig.synthetic_pool`). Without one it is plain CoOp on base classes, the baseline SHIP
improves on.

Ours (`CoOpConfig`): the context is class-specific by default (CoOp's CSC; a shared context of
4 vectors cannot move the prompts of 40 classes apart, measured: base accuracy stays near
zero-shot's), and two numbers are chosen on a pseudo task of held-out base classes, never on
the new classes: the learning rate (the published 2e-3 was set for CLIP's token embeddings) and
a calibrated-stacking offset subtracted from the base-class logits. Why the offset: the new
classes' prompts are fitted to synthetic rows, which sit closer to them than real new-class
images will, so an uncalibrated head sends new-class images to base classes (measured on the
AWA2 demo world: new-only accuracy 74 %, GZSL U 39 %). The result is an `ExtendedClassifier`
over all classes whose rows are the tuned prompts' features.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .._checks import check_class_indices, check_matrix
from ..config import CoOpConfig
from ..hashing import seeded_generator
from ..metrics import gzsl_scores
from ..nn import ExtendedClassifier, project_out
from ..ops.cosine import cosine_cross_entropy
from ._progress import Progress

__all__ = ["train_coop"]


def train_coop(
    features: torch.Tensor,
    labels: torch.Tensor,
    class_names: Sequence[str],
    tower,
    template: str,
    seen_classes,
    unseen_classes,
    config: CoOpConfig | None = None,
    *,
    generator=None,
    class_embeddings: torch.Tensor | None = None,
    synth_seed: int = 0,
    center: torch.Tensor | None = None,
    progress: bool = True,
):
    """Tune the class prompts' context on base (+ synthetic new-class) features.

    Args:
        features: (N, D) base features. labels: (N,) int64 class indices (base classes).
        class_names: all C names (base and new), in class order.
        tower: a tunable `TextTower` with output_dim D.
        template: the prompt template (one ``{}``).
        seen_classes, unseen_classes: disjoint class indices covering [0, C).
        config: `CoOpConfig` (None: defaults).
        generator: a `synthesis.FeatureGenerator` of new-class features (SHIP's), or None
            (plain CoOp).
        class_embeddings: (C, A) what `generator` is conditioned on (SHIP: the text features).
        synth_seed: the synthetic rows' seed.
        center: (D,) unit direction projected out of features and prompt features alike (the
            pipeline's centred frame, `nn.text_center` of the class text features), or None
            (SHIP's raw frame). Why: virtual base features come from a teacher that is blind
            to what all classes share, so they carry none of the large component every CLIP
            text feature shares; in the raw frame the context must first learn to remove it.
        progress: progress bar over epochs.

    Returns:
        `ExtendedClassifier` (C rows: normalize(tower(ctx_c, class c)), scale ``config.scale``,
        the chosen ``seen_offset``, the centre when given; the choices in its metadata) with
        ``.ctx`` the tuned context ((n_ctx, width), or (C, n_ctx, width) class-specific).
    """
    cfg = CoOpConfig() if config is None else config
    x_all = F.normalize(check_matrix(features, "features", "(N, D)").float(), dim=1)
    C = len(class_names)
    seen = check_class_indices(seen_classes, "seen_classes", C)
    unseen = check_class_indices(unseen_classes, "unseen_classes", C)
    if not isinstance(labels, torch.Tensor) or labels.dtype != torch.int64 or \
            labels.shape != (x_all.shape[0],):
        raise TypeError(f"labels: expected an ({x_all.shape[0]},) int64 tensor")
    if bool(torch.isin(seen, unseen).any()):
        raise ValueError("seen_classes, unseen_classes: must be disjoint")
    if not bool(torch.isin(labels.cpu(), seen).all()):
        raise ValueError("labels: the base features must carry base-class (seen) labels")
    if not getattr(tower, "tunable", False):
        raise TypeError("tower: CoOp tunes prompts of a text encoder; precomputed text features "
                        "have none")
    if x_all.shape[1] != tower.output_dim:
        raise ValueError(f"features: width {x_all.shape[1]} does not match the tower's "
                         f"output_dim {tower.output_dim}")
    if generator is not None and (class_embeddings is None or unseen.numel() == 0):
        raise ValueError("generator: needs class_embeddings and at least one new class")
    device = tower.device
    prompts = tower.prepare(template, list(class_names), cfg.n_ctx, cfg.ctx_init)
    if cfg.ctx_init:
        init = tower.token_embeddings(cfg.ctx_init).float()
        if init.shape[0] != cfg.n_ctx:
            raise ValueError(f"n_ctx is {cfg.n_ctx} but ctx_init {cfg.ctx_init!r} is "
                             f"{init.shape[0]} tokens for {tower.name}")
    else:
        init = torch.empty(cfg.n_ctx, tower.width).normal_(
            0, 0.02, generator=seeded_generator(cfg.seed, 3))
    init = init.to(device)
    if center is not None:
        center = F.normalize(center.detach().float().to(device), dim=0)
    x_all, y_all = project_out(x_all.to(device), center), labels.to(device)
    task = _Task(prompts, init, center, generator, class_embeddings, synth_seed, cfg, progress)

    # the learning rate and the calibrated-stacking offset, on held-out base classes only
    lrs = cfg.lr_candidates or (cfg.lr,)
    lr, offset, chosen = lrs[0], 0.0, None
    if cfg.select and seen.numel() >= 2:
        lr, offset, chosen = _select(task, x_all, y_all, seen, lrs)
    every = torch.arange(C)
    ctx = task.fit(x_all, y_all, every, unseen, lr)
    w = task.head_rows(ctx, every)
    meta = {"method": "CoOp" + (" + SHIP" if generator is not None else "")
            + (" (centred frame)" if center is not None else ""),
            "class_specific": cfg.class_specific, "lr": lr, "seen_offset": offset,
            "selection": chosen or "none (config.select is off or fewer than 2 base classes)"}
    head = ExtendedClassifier(w, list(class_names), seen, scale=cfg.scale, center=center,
                              metadata=meta, seen_offset=offset)
    head.ctx = ctx.detach()
    return head


#: Calibrated-stacking offsets tried on the pseudo task, in logit units (scale 100 cosines).
OFFSETS = tuple(0.5 * i for i in range(41))


class _Task:
    """What one CoOp fit needs besides its rows: the prompts, the context's start, the frame
    and the synthetic-row source."""

    def __init__(self, prompts, init, center, generator, class_embeddings, synth_seed, cfg,
                 progress):
        self.prompts, self.init, self.center, self.cfg = prompts, init, center, cfg
        self.generator, self.E, self.synth_seed = generator, class_embeddings, synth_seed
        self.progress = progress

    def fit(self, x: torch.Tensor, y: torch.Tensor, classes: torch.Tensor, new: torch.Tensor,
            lr: float) -> torch.Tensor:
        """Tune the context on rows (x, y) (y in `classes`, global ids) plus synthetic rows of
        the `new` classes (global ids, a subset of `classes`); logits over `classes` only.
        Returns the context: (n_ctx, width), or (C, n_ctx, width) class-specific (rows in
        global class order; only those of `classes` move)."""
        cfg, device = self.cfg, self.init.device
        C_all = len(self.prompts)
        if cfg.class_specific:
            ctx = torch.nn.Parameter(self.init.unsqueeze(0).repeat(C_all, 1, 1).clone())
        else:
            ctx = torch.nn.Parameter(self.init.clone())
        local = torch.full((C_all,), -1, dtype=torch.int64)  # global class id -> logit column
        local[classes] = torch.arange(classes.numel())
        local = local.to(device)
        rows = classes.to(device)
        yl = local[y]
        pool_x = pool_y = None
        if self.generator is not None and new.numel():
            from ..synthesis import generate_all

            pool_x, pool_y = generate_all(self.generator, self.E, new, cfg.synthetic_pool or 1,
                                          seed=self.synth_seed)
            pool_x = project_out(F.normalize(pool_x.float(), dim=1).to(device), self.center)
            pool_y = local[pool_y.to(device)]
        N = x.shape[0]
        total = cfg.epochs * math.ceil(N / cfg.batch_size)
        opt = torch.optim.SGD([ctx], lr=lr)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
        gen = seeded_generator(cfg.seed, 4)
        fresh = 0  # row counter of SHIP's fresh synthetic rows (synthetic_pool=None)
        label = "coop" + (" + synthetic" if pool_x is not None else "")
        with Progress(cfg.epochs, label, enabled=self.progress) as bar:
            for _ in range(cfg.epochs):
                perm = torch.randperm(N, generator=gen).to(device)
                run = 0.0
                for s in range(0, N, cfg.batch_size):
                    idx = perm[s : s + cfg.batch_size]
                    xb, yb = x[idx], yl[idx]
                    if pool_x is not None:
                        b = idx.numel()
                        if cfg.synthetic_pool is None:  # SHIP: fresh rows, labels uniform
                            k = torch.randint(0, new.numel(), (b,), generator=gen)
                            cls = new[k]
                            r = torch.arange(fresh, fresh + b) // new.numel()
                            fresh += b
                            xs = self.generator.generate(self.E, cls, r, seed=self.synth_seed)
                            xs = project_out(F.normalize(xs.float(), dim=1).to(device),
                                             self.center)
                            ys = local[cls.to(device)]
                        else:
                            j = torch.randint(0, pool_x.shape[0], (b,), generator=gen)
                            xs, ys = pool_x[j.to(device)], pool_y[j.to(device)]
                        xb, yb = torch.cat([xb, xs]), torch.cat([yb, ys])
                    c = ctx[rows] if cfg.class_specific else ctx
                    # (n_cls, D) the prompts of `classes`, a graph to ctx
                    w = project_out(self.prompts(c, rows), self.center)
                    loss = cosine_cross_entropy(xb, w, yb, cfg.scale)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    sched.step()
                    run += float(loss.detach())
                bar.update(loss=run / max(1, math.ceil(N / cfg.batch_size)))
        return ctx.detach()

    def head_rows(self, ctx: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """(len(classes), D) unit prompt features of `classes` for a fitted context."""
        rows = classes.to(self.init.device)
        c = ctx[rows] if self.cfg.class_specific else ctx
        with torch.no_grad():
            return F.normalize(project_out(self.prompts(c, rows), self.center), dim=1)


def _select(task: _Task, x: torch.Tensor, y: torch.Tensor, seen: torch.Tensor,
            lrs: Sequence[float]) -> tuple[float, float, str]:
    """Choose (lr, seen_offset) on a pseudo task of held-out base classes.

    A seeded ``cfg.holdout`` share of the base classes play the new ones (their rows are not
    trained on; with a generator they get its synthetic rows, as the real new classes will),
    and the same share of each remaining base class's rows is held out. For each learning rate
    the context is tuned on the rest, then every offset of `OFFSETS` is scored by GZSL H
    (per-class mean accuracies) on the held-out rows of both groups; the best (lr, offset)
    wins, ties to the smaller. Real new classes and test data are never seen. (SHIP was
    trained on every base class, the pseudo-new ones included, so their synthetic rows are
    closer to them than the real new classes' will be: the offset chosen errs small.)
    """
    cfg = task.cfg
    g = seeded_generator(cfg.seed, 5)
    perm = seen[torch.randperm(seen.numel(), generator=g)]
    k = min(seen.numel() - 1, max(1, round(cfg.holdout * seen.numel())))
    p_new, p_seen = perm[:k].sort().values, perm[k:].sort().values
    yc = y.cpu()
    val = torch.isin(yc, p_new)  # every row of a pseudo-new class is validation
    for c in p_seen.tolist():  # and a share of each pseudo-seen class's rows
        ids = (yc == c).nonzero().flatten()
        ids = ids[torch.randperm(ids.numel(), generator=g)]
        val[ids[: max(int(cfg.holdout * ids.numel()), int(ids.numel() >= 2))]] = True
    tr = (~val).nonzero().flatten().to(y.device)
    va = val.nonzero().flatten().to(y.device)
    classes = torch.cat([p_seen, p_new]).sort().values
    pos = torch.full((int(classes.max()) + 1,), -1, dtype=torch.int64)
    pos[classes] = torch.arange(classes.numel())
    is_seen = torch.isin(classes, p_seen).to(x.device)
    yv = pos.to(y.device)[y[va]]
    best = None
    for lr in lrs:
        ctx = task.fit(x[tr], y[tr], classes, p_new, float(lr))
        w = task.head_rows(ctx, classes)
        logits = cfg.scale * F.normalize(x[va], dim=1) @ w.T  # x is already in the frame
        for off in OFFSETS:
            H = gzsl_scores((logits - off * is_seen).argmax(1), yv, pos[p_seen],
                            pos[p_new])["H"]
            if best is None or H > best[0] + 1e-12:  # ties: the smaller lr and offset
                best = (H, float(lr), off)
    H, lr, off = best
    note = (f"lr {lr:g} and seen_offset {off:g} chosen on a pseudo task of {k} held-out base "
            f"classes (validation H {100 * H:.1f})")
    return lr, off, note
