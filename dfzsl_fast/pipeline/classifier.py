"""Stage 4 of DFZSL: the final cosine classifier over base + new classes (method.md 2.6).

Learnable cosine prototypes P (C_all, d), initialised from the normalised (tuned) text features
of all classes, logits = 100 * cos(x, P), trained on virtual seen + synthesised unseen features
with a logit-adjusted cross-entropy in training only:

    loss = CE(100 cos(x, P) + log p(y) + log p0(group(y)), y)

p(y) is a seen class's empirical frequency among the seen training samples, 1 / C_u for an
unseen class; p0(seen) = ratio / (1 + ratio), p0(unseen) = 1 - p0(seen) (ratio = 1: 0.5 / 0.5).
At test time: plain argmax (`CosineClassifier.predict`), no bias, no calibrated stacking.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from .._checks import check_class_indices, check_int
from ..config import ClassifierConfig, check_count
from ..distributed import all_reduce_sum, rank_world
from ..hashing import seeded_generator
from ..nn import CosineClassifier
from ..ops.cosine import cosine_cross_entropy_and_grad_w
from ..synthesis.rows import Rows
from ._progress import Progress

__all__ = ["logit_adjustment", "train_final_classifier"]

_MAX_CLASSES = 10**7  # far beyond any zero-shot benchmark; keeps every check O(C) and cheap


def _groups(seen_classes, unseen_classes, C: int) -> tuple[torch.Tensor, torch.Tensor]:
    seen = check_class_indices(seen_classes, "seen_classes", C)
    unseen = check_class_indices(unseen_classes, "unseen_classes", C)
    if seen.numel() == 0:
        raise ValueError("seen_classes: expected at least one seen class")
    both = torch.cat([seen, unseen])
    if both.unique().numel() != both.numel():
        raise ValueError("seen_classes and unseen_classes overlap")
    if both.numel() != C:
        left = torch.ones(C, dtype=torch.bool)
        left[both] = False
        missing = left.nonzero().flatten()[:10].tolist()
        raise ValueError(
            f"seen_classes and unseen_classes must cover all {C} classes (rows of "
            f"init_weights); missing e.g. {missing}"
        )
    return seen, unseen


def logit_adjustment(
    labels: torch.Tensor,
    seen_classes: Sequence[int] | torch.Tensor,
    unseen_classes: Sequence[int] | torch.Tensor,
    num_classes: int,
    ratio: float = 1.0,
) -> torch.Tensor:
    """DFZSL's training-time prior: log p(y) + log p0(group(y)) for every class.

    Args:
        labels: (N,) int64 training labels in [0, num_classes).
        seen_classes, unseen_classes: disjoint class indices covering [0, num_classes).
        num_classes: C_all.
        ratio: seen:unseen prior ratio; p0(seen) = ratio / (1 + ratio) = 1 / (1 + 1/ratio).

    Returns:
        (C_all,) float64 adjustment (CPU). p(y) for a seen class is its frequency among the
        seen training samples; for an unseen class 1 / C_u.

    Raises:
        ValueError: a seen class without training samples (log 0), bad indices or ratio.

    Example:
        >>> logit_adjustment(torch.tensor([0, 0, 1]), [0, 1], [2], 3)
        tensor([-1.0986, -1.7918, -0.6931], dtype=torch.float64)
    """
    C = check_int(num_classes, "num_classes", 1)
    if C > _MAX_CLASSES:
        raise ValueError(f"num_classes: expected at most {_MAX_CLASSES}, got {C}")
    seen, unseen = _groups(seen_classes, unseen_classes, C)
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)):
        raise TypeError(f"ratio: expected a number, got {type(ratio).__name__}")
    ratio = float(ratio)
    if not math.isfinite(ratio) or ratio <= 0:
        raise ValueError(f"ratio: expected a finite number > 0, got {ratio}")
    if not isinstance(labels, torch.Tensor) or labels.device.type == "meta":
        raise TypeError("labels: expected an (N,) int64 tensor with values (not meta)")
    y = labels.cpu()
    if y.dtype != torch.int64 or y.dim() != 1:
        raise TypeError("labels: expected an (N,) int64 tensor")
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= C):
        raise ValueError(f"labels: expected class indices in [0, {C}), got range "
                         f"[{int(y.min())}, {int(y.max())}]")
    return _adjustment(torch.bincount(y, minlength=C), seen, unseen, C, ratio)


def _adjustment(counts: torch.Tensor, seen: torch.Tensor, unseen: torch.Tensor, C: int,
                ratio: float) -> torch.Tensor:
    """`logit_adjustment` from the (C,) training rows per class (checked arguments)."""
    counts = counts.double()
    seen_counts = counts[seen]
    if bool((seen_counts == 0).any()):
        c = int(seen[(seen_counts == 0).nonzero()[0, 0]])
        raise ValueError(
            f"labels: seen class {c} has no training samples, so its prior log p(y) is -inf"
        )
    p = torch.zeros(C, dtype=torch.float64)
    p[seen] = seen_counts / seen_counts.sum()
    if unseen.numel():
        p[unseen] = 1.0 / unseen.numel()
    p0_seen = 1.0 / (1.0 + 1.0 / ratio)
    p0 = torch.full((C,), p0_seen, dtype=torch.float64)
    p0[unseen] = 1.0 - p0_seen
    return p.log() + p0.log()


def train_final_classifier(
    features: torch.Tensor | Rows,
    labels: torch.Tensor | None,
    init_weights: torch.Tensor,
    seen_classes: Sequence[int] | torch.Tensor,
    unseen_classes: Sequence[int] | torch.Tensor,
    config: ClassifierConfig | None = None,
    *,
    epochs: int | None = None,
    batch_size: int | None = None,
    seed: int = 0,
    progress: bool = True,
    callback: Callable[[int, CosineClassifier, float], None] | None = None,
    backend: str | None = None,
) -> CosineClassifier:
    """Train DFZSL's final cosine classifier (learnable prototypes, scale 100, adjusted CE).

    Args:
        features: (N, d) float training features (virtual seen + synthesised unseen), or a
            `synthesis.rows.Rows` source (feature shards on disk, rows regenerated on read, or
            a concatenation): each batch is then read by index, so nothing of size N is held;
            the same rows in the same order train the same classifier.
        labels: (N,) int64 labels in [0, C_all); None when `features` is a `Rows`.
        init_weights: (C_all, d) initial prototypes (the tuned text features of all classes);
            normalised before training, as the reference does.
        seen_classes, unseen_classes: disjoint index lists covering [0, C_all).
        config: the stage's `ClassifierConfig` (None: the defaults): ``scale`` (100 = 1 / 0.01
            in the reference), ``lr`` and ``beta1`` of Adam (reference: 5e-5, 0.5),
            ``logit_adjust`` and ``logit_adjust_ratio`` (the seen:unseen prior ratio of the
            train-time `logit_adjustment`), ``epochs`` and ``batch_size``.
        epochs: overrides ``config.epochs`` (the pipeline passes the count it selected).
        batch_size: overrides ``config.batch_size`` (one of the two must be set; the reference
            uses syn_num, 1800 on AWA2).
        seed: seeds the shuffling (a private generator; the global RNG is untouched).
        progress: progress bar over epochs.
        callback: called as callback(epoch, head, mean_epoch_loss) after each epoch, e.g. to
            evaluate on a held-out split (model selection stays the caller's choice; the
            returned head is the last epoch's).
        backend: backend of the fused cosine ops.

    Data parallel: when torch.distributed is initialised (e.g. launched by ``torchrun``), every
    rank draws the same permutation, computes the loss of its contiguous share of each batch
    (summed, over the global batch size) and the prototype gradient is all-reduced before
    every rank takes the same Adam step: DDP's algorithm for this one-parameter model, done by
    hand because the fused cross-entropy reads the weight directly (DDP's hooks need its own
    forward). The result equals one process's to float rounding of the gradient sum; with a
    `Rows` source each rank reads only its own rows. Progress shows on rank 0.

    Returns:
        A learnable `CosineClassifier` (C_all classes, the given scale) after the last epoch.
        Use `head.predict(x)` (plain argmax) at test time.

    Differentiable: the returned head is; training itself is not part of a graph.

    Example:
        >>> head = train_final_classifier(x, y, text_all, seen, unseen,
        ...                               ClassifierConfig(epochs=100, batch_size=1800))
        >>> pred = head.predict(x_test)
    """
    rows = features if isinstance(features, Rows) else None
    if rows is None and (
        not isinstance(features, torch.Tensor)
        or not features.is_floating_point()
        or features.dim() != 2
    ):
        raise TypeError("features: expected an (N, d) floating-point tensor or a Rows source")
    if rows is not None and labels is not None:
        raise TypeError("labels: must be None when features is a Rows source (it has labels)")
    if (
        not isinstance(init_weights, torch.Tensor)
        or not init_weights.is_floating_point()
        or init_weights.dim() != 2
    ):
        raise TypeError("init_weights: expected a (C_all, d) floating-point tensor")
    N, d = (rows.num_rows, rows.feature_dim) if rows is not None else features.shape
    C = init_weights.shape[0]
    if init_weights.shape[1] != d:
        raise ValueError(
            f"init_weights: width {init_weights.shape[1]} does not match the features' width {d}"
        )
    if N == 0:
        raise ValueError("features: no training samples")
    if rows is not None:
        counts = rows.class_counts(C + 1)  # one spare bin catches labels >= C
        if int(counts[C]) or int(counts.sum()) != N:
            raise ValueError(f"labels: expected class indices in [0, {C})")
        counts = counts[:C]
    elif (not isinstance(labels, torch.Tensor) or labels.dtype != torch.int64
          or labels.shape != (N,)):
        raise TypeError(f"labels: expected an ({N},) int64 tensor")
    elif int(labels.min()) < 0 or int(labels.max()) >= C:
        raise ValueError(f"labels: expected class indices in [0, {C})")
    if not bool(torch.isfinite(init_weights).all()):
        raise ValueError("init_weights: contains NaN or Inf")
    if bool((init_weights == 0).all(dim=1).any()):
        raise ValueError("init_weights: has an all-zero row")
    # one reduction first (a finite sum proves every entry finite); the elementwise pass only
    # when the sum is not finite (NaN/Inf present, or a float overflow of the sum)
    if rows is None and not bool(torch.isfinite(features.sum())) and \
            not bool(torch.isfinite(features).all()):
        raise ValueError("features: contains NaN or Inf")
    cfg = ClassifierConfig() if config is None else config
    if not isinstance(cfg, ClassifierConfig):
        raise TypeError(f"config: expected a ClassifierConfig, got {type(cfg).__name__}")
    epochs = cfg.epochs if epochs is None else epochs
    batch_size = cfg.batch_size if batch_size is None else batch_size
    epochs = check_count(epochs, "classifier.epochs", 0)
    batch_size = check_count(batch_size, "classifier.batch_size", 1)
    scale, lr, ratio = cfg.scale, cfg.lr, cfg.logit_adjust_ratio
    betas = (cfg.beta1, 0.999)
    adjust_logits = cfg.logit_adjust

    seen, unseen = _groups(seen_classes, unseen_classes, C)
    if rows is None:
        dtype = features.dtype if features.dtype in (torch.float32, torch.float64) \
            else torch.float32
        device = features.device
        x_all = features.detach().to(dtype)
        if device.type == "cpu":  # the native kernel reads its batches' rows in place
            x_all = x_all.contiguous()
        y_all = labels.detach().to(device)
        counts = torch.bincount(y_all.cpu(), minlength=C)
    else:
        dtype, device = init_weights.dtype, init_weights.device
        if dtype not in (torch.float32, torch.float64):
            dtype = torch.float32

    def batch(idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        # -> (x, labels, row index of the batch in x, or None when x is the batch)
        if rows is None and device.type == "cpu":
            # in memory: the native kernel reads the batch's rows of x in place (`rows=`)
            return x_all, y_all[idx], idx
        if rows is None:
            # elsewhere the kernels would gather anyway, and the index's range check would
            # cost a second host sync a step
            return x_all[idx], y_all[idx], None
        xb, yb = rows.read(idx)  # the rows are located once for features and labels
        return xb.to(device=device, dtype=dtype), yb.to(device), None

    def check_read(loss: torch.Tensor, xb: torch.Tensor) -> None:
        # Rows read from disk or a generator are checked per batch, through the loss: a NaN or
        # Inf anywhere in a row makes its normalised row, hence the loss, NaN, so one scalar
        # test replaces a pass over the batch; the batch is scanned only to name the cause.
        # Raised before the optimizer step: the prototypes never see the bad gradient.
        if not bool(torch.isfinite(loss.detach())):
            if not bool(torch.isfinite(xb).all()):
                raise ValueError("features: a batch read from the Rows source holds NaN or Inf")
            raise FloatingPointError(f"classifier: the loss of a batch is {float(loss)}")

    adj = None
    if adjust_logits:
        adj = _adjustment(counts, seen, unseen, C, ratio).to(device=device, dtype=dtype)

    head = CosineClassifier(
        F.normalize(init_weights.detach().to(device=device, dtype=dtype), dim=1),
        scale,
        learnable=True,
        backend=backend,
    )
    # the fused Adam kernel: the same update in one pass (stage 3 uses it too, generator.py)
    fused = {"fused": True} if device.type in ("cpu", "cuda") else {}
    opt = torch.optim.Adam(head.parameters(), lr=float(lr), betas=tuple(betas), **fused)
    gen = seeded_generator(seed)
    rank, world = rank_world()
    with Progress(epochs, "dfzsl stage 4: final classifier",
                  enabled=progress and rank == 0) as bar:
        for epoch in range(epochs):
            perm = torch.randperm(N, generator=gen)  # the same on every rank (same seed)
            perm = perm.to(device) if rows is None else perm
            total = torch.zeros((), dtype=torch.float64, device=device)
            nb = 0
            for s in range(0, N, batch_size):
                idx = perm[s : s + batch_size]
                n_b = idx.numel()
                if world > 1:  # this rank's contiguous share of the batch
                    idx = idx[n_b * rank // world : n_b * (rank + 1) // world]
                if idx.numel():
                    xb, yb, at = batch(idx)
                    # over ranks: sum / (global batch size), so that the ranks' losses and
                    # gradients add up to the batch mean of one process. The fused kernel
                    # returns the prototypes' gradient with the loss: no graph, no backward().
                    loss, grad = cosine_cross_entropy_and_grad_w(
                        xb,
                        head.weight.detach(),
                        yb,
                        head.scale,
                        logit_adjustment=adj,
                        reduction="sum" if world > 1 else "mean",
                        backend=backend,
                        # the features were checked once above and the prototypes are unit
                        # rows of this loop: no per-batch NaN scan (a host sync per step on a
                        # GPU); a diverged head is refused when the classifier is built from it
                        check_inputs=False,
                        rows=at,
                    )
                    if rows is not None:
                        check_read(loss, xb)
                    if world > 1:
                        loss, grad = loss / n_b, grad.div_(n_b)
                    head.weight.grad = grad
                    total += loss
                else:
                    head.weight.grad = torch.zeros_like(head.weight)
                if world > 1:
                    all_reduce_sum(head.weight.grad)
                opt.step()
                nb += 1
            if world > 1:
                all_reduce_sum(total)
            mean_loss = float(total) / nb
            bar.update(loss=mean_loss)
            if callback is not None:
                callback(epoch, head, mean_loss)
    return head
