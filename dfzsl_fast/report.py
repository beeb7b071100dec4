"""Run-folder reports shared by `dfzsl-fast run` and the demo: per-class CSV and plot.

Example:
    >>> write_per_class(out, names, seen, unseen, {"dfzsl": s, "zero_shot": zs})
    >>> plot_per_class(out, names, seen, unseen, s, title="DFZSL per-class accuracy")
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

__all__ = ["write_per_class", "plot_per_class", "plot_features"]

log = logging.getLogger(__name__)


def write_per_class(
    out: Path,
    names: Sequence[str],
    seen: torch.Tensor,
    unseen: torch.Tensor,
    results: Mapping[str, Mapping[str, Any]],
) -> Path:
    """``out/per_class.csv``: one row per class (index, name, split) and one column per method.

    Args:
        names: all class names; seen, unseen: (C_s,), (C_u,) class indices.
        results: method label -> GZSL scores of `dfzsl_fast.pipeline.evaluate` (with
            ``per_class_seen`` / ``per_class_unseen`` in the order of seen / unseen).
    """
    from .io import save_csv

    rows = []
    groups = (("seen", seen, "per_class_seen"), ("unseen", unseen, "per_class_unseen"))
    for group, idx, key in groups:
        for i, c in enumerate(idx.tolist()):
            row = {"class": c, "name": names[c], "split": group}
            row.update({label: r[key][i] for label, r in results.items()})
            rows.append(row)
    return save_csv(Path(out) / "per_class.csv", rows, ["class", "name", "split", *results])


def plot_per_class(out: Path, names, seen, unseen, scores: Mapping[str, Any],
                   title: str | None = None) -> Path | None:
    """``out/plots/per_class_accuracy.png`` (None, with a warning, without matplotlib)."""
    try:
        from .plots import plot_per_class_accuracy
    except ImportError as exc:  # pragma: no cover - optional dependency
        log.warning("plots skipped: %s", exc)
        return None
    acc = torch.full((len(names),), float("nan"))
    acc[seen] = torch.tensor(scores["per_class_seen"], dtype=torch.float32)
    acc[unseen] = torch.tensor(scores["per_class_unseen"], dtype=torch.float32)
    mask = torch.zeros(len(names), dtype=torch.bool)
    mask[seen] = True
    try:
        path = Path(out) / "plots" / "per_class_accuracy.png"
        return plot_per_class_accuracy(acc, names, mask, path,
                                       scores={k: scores[k] for k in ("S", "U", "H")}, title=title)
    except ImportError as exc:
        log.warning("plots skipped: %s", exc)
        return None


def plot_features(out: Path, names, seen, unseen, features: Mapping[str, tuple], *,
                  per_group: int = 5) -> Path | None:
    """``out/plots/features_pca.png``: a joint PCA of the feature sets (e.g. virtual, synthesized,
    test), for the first `per_group` seen and unseen classes (None without matplotlib)."""
    try:
        from .plots import plot_feature_projection

        shown = torch.cat([torch.as_tensor(seen)[:per_group],
                           torch.as_tensor(unseen)[:per_group]]).tolist()
        return plot_feature_projection(
            {k: v[0] for k, v in features.items()}, {k: v[1] for k, v in features.items()},
            Path(out) / "plots" / "features_pca.png", class_names=list(names), classes=shown,
            max_per_class=60, title=", ".join(features) + " features (PCA)",
        )
    except ImportError as exc:
        log.warning("plots skipped: %s", exc)
        return None
