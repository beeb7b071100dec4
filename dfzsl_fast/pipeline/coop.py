"""CoOp, and CoOp + SHIP (method.md 4.3), data-free: prompt tuning of the class prompts on base
features plus synthetic new-class features, reported in GZSL and base-to-new.

`train_coop(features, labels, class_names, tower, template, seen, unseen, config, generator=...)`
learns the shared context ctx of the prompts "[ctx] {classname}, ..." so that
100 cos(x, normalize(tower(ctx, class))) classifies the training rows over all base + new
classes (cross-entropy), by SGD with cosine annealing. The base rows are DFZSL's virtual base
features (data-free) or a user's real base features; with a `FeatureGenerator` (SHIP's: it
synthesizes through the same tower), each step adds a batch of synthetic new-class rows with
labels uniform over the new classes (SHIP's recipe; drawn from a pool made once, see
`CoOpConfig.synthetic_pool`). Without one it is plain CoOp on base classes, the baseline SHIP
improves on. The result is a `CosineClassifier` over all classes whose rows are the tuned
prompts' features.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .._checks import check_class_indices, check_matrix
from ..config import CoOpConfig
from ..hashing import seeded_generator
from ..nn import CosineClassifier, ExtendedClassifier, project_out
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
        `CosineClassifier` (C rows: normalize(tower(ctx, class)), scale ``config.scale``), or
        with ``center`` an `ExtendedClassifier` that centres its inputs the same way.
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
    if cfg.class_specific:  # CoOp's class-specific context (CSC): one context per class
        init = init.unsqueeze(0).repeat(C, 1, 1)
    ctx = torch.nn.Parameter(init.to(device).clone())
    every = torch.arange(C, device=device) if cfg.class_specific else None
    if center is not None:
        center = F.normalize(center.detach().float().to(device), dim=0)
    x_all, y_all = project_out(x_all.to(device), center), labels.to(device)

    pool_x = pool_y = None
    if generator is not None:
        n_new = cfg.synthetic_pool or 1
        from ..synthesis import generate_all

        pool_x, pool_y = generate_all(generator, class_embeddings, unseen, n_new,
                                      seed=synth_seed)
        pool_x = project_out(F.normalize(pool_x.float(), dim=1).to(device), center)
        pool_y = pool_y.to(device)

    N = x_all.shape[0]
    steps_per_epoch = math.ceil(N / cfg.batch_size)
    total = cfg.epochs * steps_per_epoch
    opt = torch.optim.SGD([ctx], lr=cfg.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
    gen = seeded_generator(cfg.seed, 4)
    fresh = 0  # row counter of SHIP's fresh synthetic rows (synthetic_pool=None)
    with Progress(cfg.epochs, "coop" + (" + synthetic" if generator else ""),
                  enabled=progress) as bar:
        for _ in range(cfg.epochs):
            perm = torch.randperm(N, generator=gen).to(device)
            run = 0.0
            for s in range(0, N, cfg.batch_size):
                idx = perm[s : s + cfg.batch_size]
                xb, yb = x_all[idx], y_all[idx]
                if generator is not None:
                    b = idx.numel()
                    if cfg.synthetic_pool is None:  # SHIP: fresh rows, labels uniform
                        k = torch.randint(0, unseen.numel(), (b,), generator=gen)
                        cls = unseen[k]
                        rows = torch.arange(fresh, fresh + b) // unseen.numel()
                        fresh += b
                        xs = generator.generate(class_embeddings, cls, rows, seed=synth_seed)
                        xs = project_out(F.normalize(xs.float(), dim=1).to(device), center)
                        ys = cls.to(device)
                    else:
                        j = torch.randint(0, pool_x.shape[0], (b,), generator=gen).to(device)
                        xs, ys = pool_x[j], pool_y[j]
                    xb, yb = torch.cat([xb, xs]), torch.cat([yb, ys])
                w = project_out(prompts(ctx, every), center)  # (C, D) all prompts, graph to ctx
                loss = cosine_cross_entropy(xb, w, yb, cfg.scale)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                run += float(loss.detach())
            bar.update(loss=run / steps_per_epoch)
    with torch.no_grad():
        w = F.normalize(project_out(prompts(ctx.detach(), every), center), dim=1)
    if center is None:
        head = CosineClassifier(w, cfg.scale)
    else:
        head = ExtendedClassifier(w, list(class_names), seen, scale=cfg.scale, center=center,
                                  metadata={"method": "CoOp (centred frame)"})
    head.ctx = ctx.detach()
    return head
