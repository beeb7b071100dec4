"""Evaluation metrics for GZSL (per-class S, U, H) and base-to-new (sample-level B, N, HM).

All functions accept torch tensors or NumPy arrays, on any device, and return Python floats
(fractions in [0, 1], not percentages). Counting is vectorised with ``torch.bincount``.

Pitfalls handled here (see ``../shared/docs/ecosystem.md`` section 2.4):

- GZSL S and U are **per-class means** over the classes that actually occur in the test set.
  A class listed in ``seen_classes`` with no test sample is *excluded* from the mean (not counted
  as a 0-accuracy class, which is what ``torchmetrics.MulticlassAccuracy(average='macro')`` does)
  and is reported under ``"absent_seen"`` / ``"absent_unseen"``.
- Base-to-new B and N are **sample-level** top-1 accuracies with the argmax taken *inside* the
  base (resp. new) class block: a base test sample can never be predicted as a new class. This
  needs scores, not hard predictions, so :func:`base_to_new_scores` takes logits or a scorer.
- Empty inputs, labels outside ``seen ∪ unseen``, overlapping class sets and NaN logits are
  errors that name the argument.

Example:
    >>> pred = torch.tensor([0, 0, 3, 4, 1, 1, 2, 2, 2, 3])
    >>> y = torch.tensor([0, 0, 0, 0, 1, 1, 2, 2, 2, 2])
    >>> per_class_accuracy(pred, y, classes=[0, 1, 2])[0]
    tensor([0.5000, 1.0000, 0.7500], dtype=torch.float64)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

__all__ = [
    "per_class_accuracy",
    "harmonic_mean",
    "gzsl_scores",
    "base_to_new_scores",
]

ArrayLike = Any  # torch.Tensor | np.ndarray | Sequence[int]


# ------------------------------------------------------------------------------------------
# input checks
# ------------------------------------------------------------------------------------------


def _as_tensor(x: ArrayLike, name: str) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        if x.device.type == "meta":
            raise ValueError(f"`{name}` is a meta tensor (it holds no values)")
        return x.detach()
    try:
        return torch.as_tensor(np.asarray(x))
    except (TypeError, ValueError) as exc:
        raise TypeError(f"`{name}` must be a tensor or array, got {type(x).__name__}") from exc


def _as_labels(x: ArrayLike, name: str, device: torch.device | None = None) -> torch.Tensor:
    t = _as_tensor(x, name)
    if t.ndim != 1:
        raise ValueError(f"`{name}` must be 1-D (N,), got shape {tuple(t.shape)}")
    if t.numel() == 0:
        t = t.long()  # an empty list arrives as float64
    if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
        if (t.dtype.is_floating_point and bool((t == t.round()).all())
                and float(t.abs().max()) < 2**53):
            t = t.long()
        else:
            raise TypeError(f"`{name}` must hold integer class indices, got dtype {t.dtype}")
    t = t.long()
    if t.numel() and int(t.min()) < 0:
        raise ValueError(f"`{name}` holds a negative class index ({int(t.min())})")
    return t if device is None else t.to(device)


def _as_classes(x: ArrayLike, name: str, device: torch.device) -> torch.Tensor:
    t = _as_labels(x, name, device)
    if t.numel() == 0:
        raise ValueError(f"`{name}` is empty: give at least one class index")
    if torch.unique(t).numel() != t.numel():
        raise ValueError(f"`{name}` holds duplicate class indices")
    return t


def _predictions(pred: ArrayLike, name: str) -> torch.Tensor:
    """(N,) labels, or argmax of (N, C) scores."""
    t = _as_tensor(pred, name)
    if t.ndim == 2:
        if not (t.dtype.is_floating_point or t.dtype in (torch.int32, torch.int64)):
            raise TypeError(f"`{name}` (logits) must be real scores, got dtype {t.dtype}")
        if t.dtype.is_floating_point and bool(torch.isnan(t).any()):
            raise ValueError(f"`{name}` (logits) contains NaN")
        if t.shape[1] == 0:
            raise ValueError(f"`{name}` (logits) has zero columns")
        return t.argmax(dim=1)
    if t.ndim == 1:
        return _as_labels(t, name)
    raise ValueError(f"`{name}` must be (N,) predictions or (N, C) logits, got {tuple(t.shape)}")


# ------------------------------------------------------------------------------------------
# metrics
# ------------------------------------------------------------------------------------------


def per_class_accuracy(
    pred: ArrayLike,
    target: ArrayLike,
    classes: ArrayLike | None = None,
    num_classes: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-1 accuracy of each class, counted with ``torch.bincount``.

    Args:
        pred: (N,) integer predictions, or (N, C) float logits (argmax is taken).
        target: (N,) integer true labels, same device as ``pred``.
        classes: (K,) class indices to report, in this order. Default: ``0 .. num_classes-1``.
        num_classes: size of the label space; default ``max(pred, target, classes) + 1``.

    Returns:
        (accuracy, count): (K,) float64 accuracy per class (NaN for a class with no sample in
        ``target``) and (K,) int64 number of samples of each class.

    Raises:
        ValueError: mismatched or empty inputs, negative labels, bad shapes.
    """
    p = _predictions(pred, "pred")
    y = _as_labels(target, "target", p.device)
    if p.numel() != y.numel():
        raise ValueError(f"`pred` has {p.numel()} rows but `target` has {y.numel()}")
    if y.numel() == 0:
        raise ValueError("`target` is empty: nothing to evaluate")
    hi = max(int(p.max()), int(y.max())) + 1
    cls = None if classes is None else _as_classes(classes, "classes", p.device)
    if cls is not None:
        hi = max(hi, int(cls.max()) + 1)
    if num_classes is not None:
        if num_classes < hi:
            raise ValueError(f"`num_classes`={num_classes} but a label {hi - 1} occurs")
        hi = int(num_classes)
    total = torch.bincount(y, minlength=hi)
    correct = torch.bincount(y[p == y], minlength=hi)
    if cls is None:
        cls = torch.arange(hi, device=p.device)
    count = total[cls]
    acc = correct[cls].double() / count.double()  # 0/0 -> NaN for absent classes
    return acc, count


def harmonic_mean(a: float, b: float) -> float:
    """2ab / (a + b), and 0.0 when a + b == 0."""
    a, b = float(a), float(b)
    return 0.0 if a + b == 0 else 2.0 * a * b / (a + b)


def _mean_present(acc: torch.Tensor, count: torch.Tensor, cls: torch.Tensor) -> tuple[float, list]:
    present = count > 0
    absent = cls[~present].tolist()
    return float(acc[present].mean()), absent


def gzsl_scores(
    pred: ArrayLike,
    target: ArrayLike,
    seen_classes: ArrayLike,
    unseen_classes: ArrayLike,
) -> dict[str, Any]:
    """Generalized zero-shot scores S, U and H (per-class mean accuracies).

    Predictions are over **all** classes (seen ∪ unseen). A test sample is a "seen test sample"
    when its label is in ``seen_classes`` and an "unseen test sample" otherwise.
    S = mean over the seen classes present in ``target`` of their top-1 accuracy; U likewise
    over unseen classes; H = 2SU / (S + U), 0 when S = U = 0.

    Args:
        pred: (N,) integer predictions, or (N, C) logits over all classes (argmax taken).
        target: (N,) integer labels, each in ``seen_classes`` or ``unseen_classes``.
        seen_classes: (Cs,) indices of the seen (base) classes.
        unseen_classes: (Cu,) indices of the unseen (novel) classes, disjoint from the seen.

    Returns:
        dict with ``"S"``, ``"U"``, ``"H"`` (floats in [0, 1]); ``"per_class_seen"`` and
        ``"per_class_unseen"`` ((Cs,), (Cu,) float64 tensors, NaN for absent classes);
        ``"absent_seen"``, ``"absent_unseen"``: lists of listed classes with no test sample
        (excluded from the means); ``"n_seen"``, ``"n_unseen"``: numbers of test samples.

    Raises:
        ValueError: empty input; overlapping class sets; a label outside seen ∪ unseen; no
            test sample of the seen or of the unseen classes.

    Example:
        >>> gzsl_scores(logits, y, seen_classes=range(40), unseen_classes=range(40, 50))["H"]
    """
    p = _predictions(pred, "pred")
    dev = p.device
    y = _as_labels(target, "target", dev)
    if y.numel() == 0 or p.numel() == 0:
        raise ValueError("`target` is empty: nothing to evaluate")
    if p.numel() != y.numel():
        raise ValueError(f"`pred` has {p.numel()} rows but `target` has {y.numel()}")
    seen = _as_classes(seen_classes, "seen_classes", dev)
    unseen = _as_classes(unseen_classes, "unseen_classes", dev)
    if bool(torch.isin(seen, unseen).any()):
        both = seen[torch.isin(seen, unseen)].tolist()
        raise ValueError(f"`seen_classes` and `unseen_classes` overlap: {both[:10]}")
    is_seen = torch.isin(y, seen)
    is_unseen = torch.isin(y, unseen)
    stray = ~(is_seen | is_unseen)
    if bool(stray.any()):
        raise ValueError(
            f"`target` holds labels in neither seen_classes nor unseen_classes: "
            f"{torch.unique(y[stray]).tolist()[:10]}"
        )
    if not bool(is_seen.any()):
        raise ValueError("no test sample belongs to `seen_classes`: S is undefined")
    if not bool(is_unseen.any()):
        raise ValueError("no test sample belongs to `unseen_classes`: U is undefined")
    n = max(int(p.max()), int(y.max()), int(seen.max()), int(unseen.max())) + 1
    acc_s, cnt_s = per_class_accuracy(p[is_seen], y[is_seen], seen, num_classes=n)
    acc_u, cnt_u = per_class_accuracy(p[is_unseen], y[is_unseen], unseen, num_classes=n)
    s, absent_s = _mean_present(acc_s, cnt_s, seen)
    u, absent_u = _mean_present(acc_u, cnt_u, unseen)
    return {
        "S": s,
        "U": u,
        "H": harmonic_mean(s, u),
        "per_class_seen": acc_s,
        "per_class_unseen": acc_u,
        "absent_seen": absent_s,
        "absent_unseen": absent_u,
        "n_seen": int(is_seen.sum()),
        "n_unseen": int(is_unseen.sum()),
    }


Scorer = Callable[[torch.Tensor], torch.Tensor]


def _block_predictions(
    logits: torch.Tensor | Scorer | ArrayLike, classes: torch.Tensor, n_rows: int, name: str
) -> torch.Tensor:
    """Argmax restricted to ``classes``, mapped back to global class indices."""
    if callable(logits) and not isinstance(logits, (torch.Tensor, np.ndarray)):
        block = logits(classes)
        block = _as_tensor(block, f"{name}(classes)")
        if block.ndim != 2 or tuple(block.shape) != (n_rows, classes.numel()):
            raise ValueError(
                f"`{name}` scorer returned shape {tuple(block.shape)} for {classes.numel()} "
                f"classes; expected ({n_rows}, {classes.numel()})"
            )
    else:
        full = _as_tensor(logits, name)
        if full.ndim != 2:
            raise ValueError(f"`{name}` must be (N, C) logits or a scorer, got {tuple(full.shape)}")
        if full.shape[0] != n_rows:
            raise ValueError(f"`{name}` has {full.shape[0]} rows but `target` has {n_rows}")
        if int(classes.max()) >= full.shape[1]:
            raise ValueError(
                f"class index {int(classes.max())} is out of range for `{name}` with "
                f"{full.shape[1]} columns"
            )
        block = full[:, classes.to(full.device)]
    if block.dtype.is_floating_point and bool(torch.isnan(block).any()):
        raise ValueError(f"`{name}` contains NaN")
    return classes.to(block.device)[block.argmax(dim=1)]


def base_to_new_scores(
    logits: torch.Tensor | Scorer | ArrayLike,
    target: ArrayLike,
    base_classes: ArrayLike,
    new_classes: ArrayLike,
    *,
    per_class: bool = False,
) -> dict[str, Any]:
    """Base-to-new scores B, N and HM (CoCoOp protocol, sample-level by default).

    Test samples whose label is in ``base_classes`` are classified by argmax over the base
    classes only; samples of ``new_classes`` by argmax over the new classes only. B and N are
    sample-level top-1 accuracies (correct / total), HM = 2BN / (B + N).

    Args:
        logits: (N, C) scores of every test sample for every class (columns indexed by class
            index), or a scorer: a callable taking a (K,) int64 tensor of class indices and
            returning (N, K) scores of all N test samples for those classes (use it when scores
            for a class subset are computed separately, e.g. text features of the base names
            only). Hard predictions are not accepted: the restricted argmax needs scores.
        target: (N,) integer labels, each in ``base_classes`` or ``new_classes``.
        base_classes: (Cb,) base class indices.
        new_classes: (Cn,) new class indices, disjoint from the base.
        per_class: report per-class means (like GZSL's S/U) instead of sample-level accuracy;
            not the published protocol, reported under the same keys.

    Returns:
        dict with ``"B"``, ``"N"``, ``"HM"`` (floats in [0, 1]), ``"n_base"``, ``"n_new"``
        (test sample counts), ``"absent_base"``, ``"absent_new"`` (listed classes without a test
        sample) and ``"per_class"`` (the flag).

    Raises:
        ValueError: empty input, overlapping class sets, stray labels, no base or no new test
            sample, a (N,) prediction vector instead of scores, NaN scores.
    """
    if isinstance(logits, (torch.Tensor, np.ndarray)) and np.ndim(logits) == 1:
        raise ValueError(
            "`logits`: base-to-new needs (N, C) scores (the argmax is restricted to the base or "
            "new block); got (N,) predictions"
        )
    y = _as_labels(target, "target")
    if y.numel() == 0:
        raise ValueError("`target` is empty: nothing to evaluate")
    dev = y.device
    base = _as_classes(base_classes, "base_classes", dev)
    new = _as_classes(new_classes, "new_classes", dev)
    if bool(torch.isin(base, new).any()):
        raise ValueError(
            f"`base_classes` and `new_classes` overlap: {base[torch.isin(base, new)].tolist()[:10]}"
        )
    is_base = torch.isin(y, base)
    is_new = torch.isin(y, new)
    stray = ~(is_base | is_new)
    if bool(stray.any()):
        raise ValueError(
            f"`target` holds labels in neither base_classes nor new_classes: "
            f"{torch.unique(y[stray]).tolist()[:10]}"
        )
    if not bool(is_base.any()):
        raise ValueError("no test sample belongs to `base_classes`: B is undefined")
    if not bool(is_new.any()):
        raise ValueError("no test sample belongs to `new_classes`: N is undefined")

    p_base = _block_predictions(logits, base, y.numel(), "logits").to(dev)
    p_new = _block_predictions(logits, new, y.numel(), "logits").to(dev)
    out: dict[str, Any] = {"per_class": per_class}
    for key, cls, mask, pred in (("B", base, is_base, p_base), ("N", new, is_new, p_new)):
        yy, pp = y[mask], pred[mask]
        acc, cnt = per_class_accuracy(
            pp, yy, cls, num_classes=int(torch.max(cls.max(), yy.max())) + 1
        )
        absent = cls[cnt == 0].tolist()
        if per_class:
            out[key] = float(acc[cnt > 0].mean())
        else:
            out[key] = float((pp == yy).double().mean())
        out["absent_base" if key == "B" else "absent_new"] = absent
    out["HM"] = harmonic_mean(out["B"], out["N"])
    out["n_base"] = int(is_base.sum())
    out["n_new"] = int(is_new.sum())
    return out


def prototype_accuracy(
    prototypes: torch.Tensor, x: torch.Tensor, y: ArrayLike, classes: ArrayLike
) -> float:
    """Per-class mean top-1 of the cosine classifier ``prototypes`` among ``classes`` only.

    Used to measure new-class quality directly: the means of a generator's features for the
    new classes, or their text features, as prototypes on the new classes' test features.

    Args:
        prototypes: (K, D) one row per entry of ``classes``, in that order.
        x: (N, D) features whose labels ``y`` (N,) all lie in ``classes``.
        classes: (K,) class indices.

    Returns:
        Accuracy in [0, 1] (mean over the classes present in ``y``).
    """
    cls = _as_classes(classes, "classes", torch.device("cpu"))
    yy = _as_labels(y, "y")
    P = torch.as_tensor(prototypes).float().cpu()
    X = torch.as_tensor(x).float().cpu()
    if P.dim() != 2 or P.shape[0] != cls.numel():
        raise ValueError(f"`prototypes` must be ({cls.numel()}, D), got {tuple(P.shape)}")
    if X.dim() != 2 or X.shape[1] != P.shape[1] or X.shape[0] != yy.numel():
        raise ValueError("`x` must be (N, D) with the prototypes' D and one row per label")
    if not bool(torch.isin(yy, cls).all()):
        raise ValueError("`y` holds labels outside `classes`")
    P = P / P.norm(dim=1, keepdim=True).clamp_min(1e-12)
    X = X / X.norm(dim=1, keepdim=True).clamp_min(1e-12)
    pred = cls[(X @ P.T).argmax(1)]
    acc, cnt = per_class_accuracy(pred, yy, cls)
    return float(acc[cnt > 0].mean())


def new_class_quality(
    x_syn: torch.Tensor, y_syn: ArrayLike, text: torch.Tensor, x: torch.Tensor, y: ArrayLike,
    unseen_classes: ArrayLike,
) -> dict[str, float]:
    """New-class quality measured directly: a generator's new-class feature means, and the text
    features, as prototypes on the new classes' test features (new classes only).

    Args:
        x_syn, y_syn: (M, D) synthesized features and their (M,) labels (new classes).
        text: (C, D) class text features (all classes, rows in label order).
        x, y: (N, D) test features and (N,) labels (any classes; only new ones are used).
        unseen_classes: (C_u,) the new classes.

    Returns:
        {"synthesized_means": accuracy, "text_features": accuracy} (per-class means in [0, 1]).
    """
    cls = _as_classes(unseen_classes, "unseen_classes", torch.device("cpu"))
    ys, yy = _as_labels(y_syn, "y_syn"), _as_labels(y, "y")
    xs = torch.as_tensor(x_syn).float().cpu()
    xs = xs / xs.norm(dim=1, keepdim=True).clamp_min(1e-12)
    T = torch.as_tensor(text).float().cpu()
    means = torch.zeros(T.shape[0], T.shape[1]).index_add_(0, ys, xs)[cls]
    m = torch.isin(yy, cls)
    xu = torch.as_tensor(x).cpu()[m]
    return {"synthesized_means": prototype_accuracy(means, xu, yy[m], cls),
            "text_features": prototype_accuracy(T[cls], xu, yy[m], cls)}
