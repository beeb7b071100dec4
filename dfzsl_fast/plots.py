"""Diagnostic plots: per-class accuracy bars and 2-D projections of feature sets.

matplotlib is an optional dependency (``pip install matplotlib``), imported only when a plot is
drawn. Figures are built as ``matplotlib.figure.Figure`` objects and rendered by the Agg
(PNG) canvas without importing ``pyplot``: no display is needed, nothing global is switched
(a notebook's backend stays as it was), and it is safe in worker threads. PNGs are written
atomically (:func:`dfzsl_fast.io.atomic_path`).

Example:
    >>> plot_per_class_accuracy(acc, names, seen_mask, "plots/per_class.png",
    ...                         scores={"S": 0.71, "U": 0.60, "H": 0.65})
    >>> plot_feature_projection({"virtual": v, "synthesized": s, "test": x},
    ...                         {"virtual": yv, "synthesized": ys, "test": yx}, "plots/pca.png")
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .io import atomic_path

__all__ = ["plot_per_class_accuracy", "plot_feature_projection", "project_2d", "subsample"]

SEEN_COLOR = "#1f77b4"
UNSEEN_COLOR = "#ff7f0e"
_MARKERS = ("o", "^", "s", "x", "D", "v", "P", "*")


def _figure(figsize: tuple[float, float]):
    """A pyplot-free Figure with an Agg canvas (raises a helpful ImportError without matplotlib)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "dfzsl_fast.plots needs matplotlib, which is not installed: "
            "`pip install matplotlib` (or skip the plots)"
        ) from exc
    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: str | Path, dpi: int) -> Path:
    final = Path(path).expanduser()
    with atomic_path(final) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")
    return final


def _array(x: Any, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        if x.device.type == "meta":
            raise ValueError(f"`{name}`: a meta tensor holds no values")
        if x.is_complex():
            raise TypeError(f"`{name}`: expected real values, got {x.dtype}")
        x = x.detach().cpu()
        if x.dtype in (torch.bfloat16, torch.float16):
            x = x.float()
        return x.numpy()
    try:
        a = np.asarray(x)
    except Exception as exc:
        raise TypeError(f"`{name}`: expected a tensor or array, got {type(x).__name__}") from exc
    if a.dtype.kind == "c":
        raise TypeError(f"`{name}`: expected real values, got {a.dtype}")
    return a


def plot_per_class_accuracy(
    per_class_acc: Any,
    class_names: Sequence[str],
    seen_mask: Any,
    path: str | Path,
    *,
    scores: Mapping[str, float] | None = None,
    title: str | None = None,
    sort: bool = True,
    dpi: int = 120,
) -> Path:
    """Bar chart of per-class accuracies, seen classes in blue and unseen in orange.

    Args:
        per_class_acc: (C,) accuracies in [0, 1] (tensor or array); NaN marks a class without
            test samples, which is left out.
        class_names: C names (shown under the bars when C <= 60).
        seen_mask: (C,) bool, True for a seen (base) class.
        path: PNG file to write (atomically; folders are created).
        scores: optional headline numbers in [0, 1], e.g. ``{"S": .71, "U": .60, "H": .65}``
            (or B/N/HM), shown in the title as percentages; S/U (or B/N) also as dashed lines.
        title: text before the scores.
        sort: sort the bars by accuracy, best first (default); else class-index order.
        dpi: resolution.

    Returns:
        ``path`` as a ``Path``.

    Raises:
        ValueError: lengths differ, or no class has an accuracy.
        ImportError: matplotlib is not installed.
    """
    acc = _array(per_class_acc, "per_class_acc").astype(np.float64).reshape(-1)
    seen = _array(seen_mask, "seen_mask").astype(bool).reshape(-1)
    names = list(class_names)
    if not (len(acc) == len(seen) == len(names)):
        raise ValueError(
            f"`per_class_acc` ({len(acc)}), `seen_mask` ({len(seen)}) and `class_names` "
            f"({len(names)}) must have the same length C"
        )
    keep = np.flatnonzero(~np.isnan(acc))
    if keep.size == 0:
        raise ValueError("`per_class_acc`: every class is NaN (no test samples); nothing to plot")
    if sort:
        keep = keep[np.argsort(-acc[keep], kind="stable")]
    n = keep.size
    fig = _figure((min(max(6.0, 0.18 * n + 2.0), 30.0), 4.5))
    ax = fig.add_subplot(1, 1, 1)
    colors = [SEEN_COLOR if seen[i] else UNSEEN_COLOR for i in keep]
    ax.bar(np.arange(n), 100.0 * acc[keep], color=colors, width=0.85)
    ax.set_xlim(-0.6, n - 0.4)
    ax.set_ylim(0, 100)
    ax.set_ylabel("accuracy (%)")
    if n <= 60:
        ax.set_xticks(np.arange(n))
        ax.set_xticklabels([names[i] for i in keep], rotation=90, fontsize=7)
    else:
        ax.set_xticks([])
        ax.set_xlabel(f"{n} classes" + (", sorted by accuracy" if sort else ""))
    from matplotlib.patches import Patch

    handles = [
        Patch(color=SEEN_COLOR, label=f"seen ({int(seen[keep].sum())})"),
        Patch(color=UNSEEN_COLOR, label=f"unseen ({int((~seen[keep]).sum())})"),
    ]
    head = [title] if title else []
    if scores:
        head.append(
            "  ".join(f"{k} = {100 * float(v):.2f}" for k, v in scores.items() if v is not None)
        )
        for key, color in (("S", SEEN_COLOR), ("B", SEEN_COLOR), ("U", UNSEEN_COLOR),
                           ("N", UNSEEN_COLOR)):
            v = scores.get(key)
            if v is not None and math.isfinite(float(v)):
                ax.axhline(100 * float(v), color=color, linestyle="--", linewidth=1)
    ax.legend(handles=handles, loc="upper right", fontsize=8)
    if head:
        ax.set_title("\n".join(head), fontsize=10)
    return _save(fig, path, dpi)


def subsample(
    labels: Mapping[str, Any],
    *,
    max_per_class: int = 100,
    max_classes: int = 20,
    classes: Sequence[int] | None = None,
    seed: int = 0,
) -> tuple[list[int], dict[str, np.ndarray]]:
    """Choose classes and rows for a projection plot.

    Args:
        labels: set name -> (N_k,) integer labels.
        max_per_class: at most this many rows per class and set.
        max_classes: at most this many classes (drawn at random from the union of the labels
            unless ``classes`` is given).
        classes: the classes to show (overrides the random choice).
        seed: seeds the choices (numpy ``default_rng``).

    Returns:
        ``(classes, rows)``: the sorted chosen classes and, per set, the sorted row indices.
    """
    if max_per_class < 1 or max_classes < 1:
        raise ValueError("`max_per_class` and `max_classes` must be >= 1")
    rng = np.random.default_rng(seed)
    labs = {k: _array(v, f"labels[{k!r}]").astype(np.int64).reshape(-1) for k, v in labels.items()}
    if classes is None:
        union = np.unique(np.concatenate([v for v in labs.values()])) if labs else np.array([])
        if union.size > max_classes:
            union = np.sort(rng.choice(union, size=max_classes, replace=False))
        chosen = [int(c) for c in union]
    else:
        chosen = sorted(int(c) for c in classes)
    rows: dict[str, np.ndarray] = {}
    for k, y in labs.items():
        picked = []
        for c in chosen:
            idx = np.flatnonzero(y == c)
            if idx.size > max_per_class:
                idx = rng.choice(idx, size=max_per_class, replace=False)
            picked.append(idx)
        rows[k] = np.sort(np.concatenate(picked)) if picked else np.zeros(0, dtype=np.int64)
    return chosen, rows


def project_2d(x: np.ndarray, method: str = "pca", seed: int = 0) -> np.ndarray:
    """(n, D) -> (n, 2) coordinates by PCA (SVD of the centred rows) or t-SNE.

    t-SNE (scikit-learn) first reduces to 50 PCA dimensions, uses ``init="pca"`` and a fixed
    ``random_state``; it takes tens of seconds for a few thousand rows on a CPU.
    """
    if method not in ("pca", "tsne"):
        raise ValueError(f"`method`: expected 'pca' or 'tsne', got {method!r}")
    x = _array(x, "x")
    if x.dtype.kind not in "biuf":
        raise TypeError(f"`x`: expected real features, got dtype {x.dtype}")
    x = x.astype(np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"`x`: need at least 2 rows of (n, D) features, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("`x`: contains NaN or Inf")
    xc = x - x.mean(axis=0, keepdims=True)
    _, _, vt = np.linalg.svd(xc, full_matrices=False)
    if method == "pca":
        out = xc @ vt[:2].T
        if out.shape[1] < 2:  # D == 1
            out = np.concatenate([out, np.zeros_like(out)], axis=1)
        return out
    try:
        from sklearn.manifold import TSNE
    except ImportError as exc:  # pragma: no cover
        raise ImportError("method='tsne' needs scikit-learn: `pip install scikit-learn`") from exc
    k = min(50, vt.shape[0])
    z = xc @ vt[:k].T
    perplexity = float(min(30.0, max(1.0, (x.shape[0] - 1) / 3.0)))
    return TSNE(2, init="pca", random_state=seed, perplexity=perplexity).fit_transform(z)


def plot_feature_projection(
    features: Mapping[str, Any],
    labels: Mapping[str, Any],
    path: str | Path,
    *,
    class_names: Sequence[str] | None = None,
    max_per_class: int = 100,
    max_classes: int = 20,
    classes: Sequence[int] | None = None,
    seed: int = 0,
    method: str = "pca",
    normalize: bool = True,
    title: str | None = None,
    dpi: int = 120,
    seen_classes: Sequence[int] | None = None,
    caption: str | None = None,
) -> Path:
    """Scatter several feature sets in one 2-D projection: colour = class, marker = set.

    With ``seen_classes`` the colour family says which classes are seen (blues and greens) and
    which are new (reds and yellows), the class legend marks them ``[seen]`` / ``[new]``, and a
    caption under the plot says what a healthy picture looks like.

    Typical sets: ``{"virtual": vMF features, "synthesized": generator output, "test": real
    CLIP image features}``. All sets are projected together, so their relative positions are
    comparable.

    Args:
        features: set name -> (N_k, D) float features (tensor or array), same D for all sets.
        labels: set name -> (N_k,) integer class labels (same keys as ``features``).
        path: PNG file to write (atomically).
        class_names: optional names for the legend (indexed by label).
        max_per_class: rows drawn per class and set (default 100).
        max_classes: classes drawn (default 20, chosen at random with ``seed``).
        classes: show exactly these classes instead.
        seed: seeds the subsampling (and t-SNE).
        method: "pca" (default, fast: one SVD) or "tsne" (scikit-learn; slow, off by default).
        normalize: L2-normalise rows first (default True: the classifiers compare directions).
        title: figure title (default names the method and the classes shown).
        dpi: resolution.
        seen_classes: labels of the seen (base) classes; the others are new. None: one
            colour cycle for all classes and no seen/new marking.
        caption: text under the plot; None: a default saying what a healthy picture looks like
            (when ``seen_classes`` is given), "": none.

    Returns:
        ``path`` as a ``Path``.

    Raises:
        ValueError: keys differ, shapes or dimensions disagree, or nothing to draw.
        ImportError: matplotlib (or scikit-learn for t-SNE) is not installed.
    """
    if set(features) != set(labels):
        raise ValueError(
            f"`features` and `labels` must have the same keys, got {sorted(features)} and "
            f"{sorted(labels)}"
        )
    if not features:
        raise ValueError("`features`: give at least one set")
    feats: dict[str, np.ndarray] = {}
    dim = None
    for k, v in features.items():
        a = _array(v, f"features[{k!r}]").astype(np.float64)
        y = _array(labels[k], f"labels[{k!r}]").reshape(-1)
        if a.ndim != 2 or a.shape[0] != y.shape[0]:
            raise ValueError(
                f"`features[{k!r}]` must be (N, D) with N = len(labels[{k!r}]) = {y.shape[0]}, "
                f"got {a.shape}"
            )
        if dim is not None and a.shape[1] != dim:
            raise ValueError(f"`features[{k!r}]` has D = {a.shape[1]}, other sets have {dim}")
        dim = a.shape[1]
        feats[k] = a
    chosen, rows = subsample(
        labels, max_per_class=max_per_class, max_classes=max_classes, classes=classes, seed=seed
    )
    keys = list(features)
    parts = [feats[k][rows[k]] for k in keys]
    x = np.concatenate(parts) if parts else np.zeros((0, dim or 0))
    if x.shape[0] < 2:
        raise ValueError("fewer than 2 points to project (check `labels` and `classes`)")
    if normalize:
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    xy = project_2d(x, method=method, seed=seed)

    fig = _figure((7.5, 6.0))
    ax = fig.add_subplot(1, 1, 1)
    from matplotlib import colormaps

    seen_set = None if seen_classes is None else {int(c) for c in seen_classes}
    if seen_set is None:
        cmap = colormaps["tab20"]
        color_of = {c: cmap(i % 20) for i, c in enumerate(chosen)}
    else:
        color_of = {}
        for fam, group in (("winter", [c for c in chosen if c in seen_set]),
                           ("autumn", [c for c in chosen if c not in seen_set])):
            cm = colormaps[fam]
            for i, c in enumerate(group):
                color_of[c] = cm(0.1 + 0.8 * i / max(1, len(group) - 1))
    start = 0
    for j, k in enumerate(keys):
        n = rows[k].size
        if n:
            y = _array(labels[k], "labels").reshape(-1)[rows[k]]
            ax.scatter(
                xy[start : start + n, 0], xy[start : start + n, 1],
                c=[color_of[int(c)] for c in y], marker=_MARKERS[j % len(_MARKERS)], s=10,
                alpha=0.6, linewidths=0.5 if _MARKERS[j % len(_MARKERS)] == "x" else 0,
            )
        start += n
    from matplotlib.lines import Line2D

    set_handles = [
        Line2D([], [], color="gray", marker=_MARKERS[j % len(_MARKERS)], linestyle="",
               label=f"{k} ({rows[k].size})")
        for j, k in enumerate(keys)
    ]
    leg = ax.legend(handles=set_handles, loc="upper left", fontsize=8, title="set")

    def _name(c: int) -> str:
        name = class_names[c] if class_names is not None and c < len(class_names) else str(c)
        if seen_set is None:
            return name
        return f"[{'seen' if c in seen_set else 'new'}] {name}"

    if len(chosen) <= 40:
        ax.add_artist(leg)
        order = chosen if seen_set is None else sorted(chosen, key=lambda c: c not in seen_set)
        cls_handles = [Line2D([], [], color=color_of[c], marker="o", linestyle="",
                              label=_name(c)) for c in order]
        ax.legend(handles=cls_handles, loc="center left", bbox_to_anchor=(1.01, 0.5),
                  fontsize=7 if len(chosen) <= 20 else 5, title="class",
                  ncol=1 if len(chosen) <= 20 else 2)
    ax.set_xticks([])
    ax.set_yticks([])
    if seen_set is None:
        what = f"{len(chosen)} classes"
    else:
        n_seen = sum(c in seen_set for c in chosen)
        what = f"{n_seen} seen, {len(chosen) - n_seen} new classes"
    ax.set_title(title or f"{method.upper()} of {', '.join(keys)} features ({what})", fontsize=10)
    if caption is None and seen_set is not None:
        caption = ("Healthy: each new class's synthesized features lie near that class's test "
                   "features, and seen classes form separate clusters.\nColour: seen classes "
                   "blue-green, new classes red-yellow; marker: feature set.")
    if caption:
        fig.text(0.01, 0.01, caption, fontsize=7, ha="left", va="bottom", wrap=True)
        fig.subplots_adjust(bottom=0.14)
    return _save(fig, path, dpi)
