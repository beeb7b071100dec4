"""Evaluation of a classification head and the one results schema of ``dfzsl-fast``.

``dfzsl-fast evaluate``, ``dfzsl-fast run`` and ``dfzsl-fast demo`` all score a classifier with
:func:`evaluate_head` and write their results folder with :func:`write_evaluation`, so that
``metrics.json`` and ``per_class.csv`` have one layout whoever wrote them, checked by
:func:`validate_metrics` / :func:`validate_per_class` (:func:`validate_results` for a folder).

``metrics.json`` (schema ``"dfzsl_fast.metrics/v1"``; fractions in [0, 1], null when undefined):

- ``schema``: ``"dfzsl_fast.metrics/v1"``; ``command``: "evaluate", "run" or "demo".
- ``protocol``: "gzsl" or "base2new".
- ``n_test``: test samples; ``n_classes``, ``n_seen_classes``, ``n_unseen_classes``.
- ``accuracy``: sample-level top-1 accuracy, argmax over all classes.
- ``gzsl``: ``S``, ``U``, ``H`` (per-class mean accuracies, argmax over all classes; S or U
  null when that group has no test sample, H then null), ``n_seen``, ``n_unseen`` (test
  samples), ``absent_seen``, ``absent_unseen`` (listed classes without test samples). Null for
  a closed-set head (no unseen class).
- ``base2new``: ``B``, ``N``, ``HM`` (sample-level, argmax within the base / the new block),
  ``n_base``, ``n_new``; null unless ``protocol`` is "base2new".
- ``closed_set``: ``accuracy``, ``mean_per_class``; null unless the head has no unseen class.
- ``baselines`` (optional): name -> a block with the same four score keys (``accuracy``,
  ``gzsl``, ``base2new``, ``closed_set``) for other classifiers on the same test set
  (``run``: ``zero_shot``; ``demo``: ``zero_shot``, ``icis``, ``icis_published``).
- ``estimate`` (optional): the pipeline's held-out-base estimate (``pipeline/estimate.py``).
- ``selection``, ``paper_protocol_max_over_epochs`` (optional): how the classifier's epoch was
  chosen; the published "best epoch on the test set" scores, labelled, for comparison only.
- ``details`` (optional): command-specific facts (run: prompt tuning, timings, cached stages;
  demo: the world, new-class prototype quality, timings).
- ``inputs`` (optional): the input files and options; ``provenance``: versions and time of
  the evaluation, plus the classifier's own provenance under ``classifier``.

``per_class.csv``: one row per class of the head, in class-index order, columns
``class_index, class_name, group, n_test, accuracy``, then ``accuracy_within_block`` (base2new
only: argmax within the class's block), then ``<baseline>_accuracy`` per baseline. ``group`` is
"seen" or "unseen"; accuracies are over all classes (GZSL), empty for a class without test
samples.

Example:
    >>> scores, per_class = evaluate_head(head, x, y, seen, unseen)
    >>> metrics = build_metrics("evaluate", scores)
    >>> write_evaluation("eval/", metrics, per_class, names, seen)
    >>> validate_results("eval/")
"""

from __future__ import annotations

import csv
import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "SCHEMA",
    "evaluate",
    "evaluate_head",
    "labels_in_class_space",
    "build_metrics",
    "per_class_rows",
    "write_evaluation",
    "plot_feature_projection",
    "validate_metrics",
    "validate_per_class",
    "validate_results",
]

log = logging.getLogger(__name__)

#: The ``schema`` value of every ``metrics.json`` written by this module.
SCHEMA = "dfzsl_fast.metrics/v1"

_SCORE_KEYS = ("accuracy", "gzsl", "base2new", "closed_set")
_GZSL_KEYS = ("S", "U", "H", "n_seen", "n_unseen", "absent_seen", "absent_unseen")
_B2N_KEYS = ("B", "N", "HM", "n_base", "n_new")
_CSV_BASE = ["class_index", "class_name", "group", "n_test", "accuracy"]


# ------------------------------------------------------------------------------------------
# scoring
# ------------------------------------------------------------------------------------------


def evaluate_head(
    head: Any,
    features: Any,
    labels: Any,
    seen_classes: Sequence[int] | Any,
    unseen_classes: Sequence[int] | Any,
    *,
    protocol: str = "gzsl",
    batch_size: int = 8192,
    normalize_features: bool = False,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Scores of a classification head on labelled features.

    Args:
        head: a ``CosineClassifier``, an ``nn.Linear`` or an ``ExtendedClassifier`` over C
            classes (any device; the features are moved to it); any other module with a (C, D)
            ``weight`` whose forward gives (N, C) logits works too (its ``predict`` is used when
            it has one).
        features: (N, D) float test features. labels: (N,) int64 in [0, C).
        seen_classes, unseen_classes: class indices (disjoint). With no unseen class the head
            is a closed-set classifier and only accuracies are reported.
        protocol: "gzsl" (S/U/H, predictions over all classes) or "base2new" (also B/N/HM:
            argmax within the base or new block, sample-level).
        batch_size: rows per forward pass.
        normalize_features: L2-normalise the rows first (matters for a linear head only).

    Returns:
        ``(scores, per_class)``. ``scores``: ``protocol``, ``n_test``, ``n_classes``,
        ``n_seen_classes``, ``n_unseen_classes`` and the score block of the module docstring
        (``accuracy``, ``gzsl``, ``base2new``, ``closed_set``). ``per_class``: ``"accuracy"``
        (C,) float64 CPU tensor (NaN for a class without test samples), ``"count"`` (C,)
        int64, and for base2new ``"accuracy_within_block"`` (C,).

    Raises:
        ValueError: bad protocol, no test sample, width mismatch, labels out of range or in
            neither group, no base or new test sample for base2new.
    """
    import torch
    import torch.nn.functional as F

    from . import metrics as M
    from ._checks import check_class_indices, numeric_tensor
    from .nn import CosineClassifier

    if protocol not in ("gzsl", "base2new"):
        raise ValueError(f"`protocol`: expected 'gzsl' or 'base2new', got {protocol!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"`batch_size`: expected an int >= 1, got {batch_size!r}")
    w = getattr(head, "weight", None)
    if not isinstance(w, torch.Tensor) or w.dim() != 2 or not w.is_floating_point():
        raise TypeError(f"head: expected a classifier with a (C, D) float weight, got "
                        f"{type(head).__name__}")
    C, D = w.shape
    dev = w.device
    x = numeric_tensor(features, "features", "evaluate_head")
    y = numeric_tensor(labels, "labels", "evaluate_head")
    if not x.is_floating_point():
        raise ValueError(f"features: expected a floating-point (N, {D}) tensor, got {x.dtype}")
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise ValueError(f"labels: expected integer class indices, got {y.dtype}")
    x, y = x.to(device=dev, dtype=w.dtype), y.long().to(dev)
    if x.dim() != 2 or x.shape[1] != D:
        raise ValueError(
            f"features have shape {tuple(x.shape)} but the classifier expects width D = {D}"
        )
    if y.dim() != 1 or y.numel() != x.shape[0]:
        raise ValueError(f"labels: expected ({x.shape[0]},), got {tuple(y.shape)}")
    if y.numel() == 0:
        raise ValueError("features: no test sample to evaluate")
    if int(y.min()) < 0 or int(y.max()) >= C:
        raise ValueError(
            f"labels range over [{int(y.min())}, {int(y.max())}] but the classifier has {C} "
            "classes"
        )
    bad = ~torch.isfinite(x).all(dim=1)
    if bool(bad.any()):
        raise ValueError(f"features: row {int(bad.nonzero()[0, 0])} has NaN or Inf")
    if normalize_features:
        x = F.normalize(x, dim=1)
    seen = check_class_indices(seen_classes, "seen_classes", C).to(dev)
    unseen = check_class_indices(unseen_classes, "unseen_classes", C).to(dev)
    if bool(torch.isin(seen, unseen).any()):
        raise ValueError("seen_classes and unseen_classes overlap")
    is_cos = isinstance(head, CosineClassifier)
    is_lin = isinstance(head, torch.nn.Linear)

    with torch.no_grad():
        if not is_lin and callable(getattr(head, "predict", None)):
            pred = head.predict(x).to(dev)
        else:
            pred = torch.cat(
                [head(x[s : s + batch_size]).argmax(1) for s in range(0, x.shape[0], batch_size)]
            )
        cache: dict[tuple, torch.Tensor] = {}

        def scorer(classes: torch.Tensor) -> torch.Tensor:
            key = tuple(classes.tolist())
            if key not in cache:
                cls = classes.to(dev)
                parts = []
                for s in range(0, x.shape[0], batch_size):
                    xb = x[s : s + batch_size]
                    if is_cos:
                        from .ops.cosine import cosine_logits

                        parts.append(cosine_logits(xb, w[cls], head.scale, head.eps))
                    elif is_lin:
                        b = None if head.bias is None else head.bias[cls]
                        parts.append(F.linear(xb, w[cls], b))
                    else:  # any module: full logits, then the block's columns
                        parts.append(head(xb)[:, cls])
                cache[key] = torch.cat(parts).float()
            return cache[key]

        acc, count = M.per_class_accuracy(pred, y, classes=torch.arange(C, device=dev),
                                          num_classes=C)
        out: dict[str, Any] = {
            "protocol": protocol,
            "n_test": int(y.numel()),
            "n_classes": int(C),
            "n_seen_classes": int(seen.numel()),
            "n_unseen_classes": int(unseen.numel()),
            "accuracy": float((pred == y).double().mean()),
            "gzsl": None,
            "base2new": None,
            "closed_set": None,
        }
        per_class: dict[str, Any] = {"accuracy": acc.double().cpu(), "count": count.cpu()}
        if unseen.numel() == 0:
            if protocol == "base2new":
                raise ValueError("base2new needs new (unseen) classes, but the classifier has none")
            present = count > 0
            out["closed_set"] = {"accuracy": out["accuracy"],
                                 "mean_per_class": float(acc[present].mean())}
            return out, per_class
        is_s, is_u = torch.isin(y, seen), torch.isin(y, unseen)
        stray = ~(is_s | is_u)
        if bool(stray.any()):
            raise ValueError(f"labels {torch.unique(y[stray]).tolist()[:10]} are in neither "
                             "the seen nor the unseen classes of the classifier")
        has_s, has_u = bool(is_s.any()), bool(is_u.any())
        if has_s and has_u:
            g = M.gzsl_scores(pred, y, seen, unseen)
            out["gzsl"] = {k: g[k] for k in _GZSL_KEYS}
        else:  # one group only: report it, S or U undefined
            grp = seen if has_s else unseen
            present = count[grp] > 0
            mean = float(acc[grp][present].mean())
            absent = grp[~present].tolist()
            out["gzsl"] = {
                "S": mean if has_s else None,
                "U": mean if has_u else None,
                "H": None,
                "n_seen": int(is_s.sum()),
                "n_unseen": int(is_u.sum()),
                "absent_seen": absent if has_s else seen.tolist(),
                "absent_unseen": absent if has_u else unseen.tolist(),
            }
            if protocol == "base2new":
                raise ValueError(
                    "base2new needs test samples of both base and new classes; the features "
                    f"hold only {'base' if has_s else 'new'} ones"
                )
        if protocol == "base2new":
            b = M.base_to_new_scores(scorer, y, seen, unseen)
            out["base2new"] = {k: b[k] for k in _B2N_KEYS}
            p_base = seen[scorer(seen).argmax(1)]
            p_new = unseen[scorer(unseen).argmax(1)]
            p_blk = torch.where(is_s, p_base, p_new)
            a_blk, _ = M.per_class_accuracy(p_blk, y, classes=torch.arange(C, device=dev),
                                            num_classes=C)
            per_class["accuracy_within_block"] = a_blk.double().cpu()
    return out, per_class


def evaluate(
    clf: Any,
    x: Any,
    y: Any,
    protocol: str = "gzsl",
    seen_classes: Sequence[int] | Any | None = None,
    unseen_classes: Sequence[int] | Any | None = None,
) -> dict[str, Any]:
    """The headline scores of a classifier: :func:`evaluate_head`, flattened.

    Args:
        clf: an ``ExtendedClassifier`` (its own split is used) or any head accepted by
            :func:`evaluate_head` (then give the split).
        x: (N, D) test features; y: (N,) int64 labels in the classifier's class indices.
        protocol: "gzsl" or "base2new".
        seen_classes, unseen_classes: default: the classifier's own split.

    Returns:
        ``{"protocol", "S", "U", "H"}`` (gzsl) or ``{"protocol", "B", "N", "HM"}`` (base2new),
        fractions in [0, 1] (None where undefined, e.g. H without unseen test samples).
    """
    seen = getattr(clf, "seen_classes", None) if seen_classes is None else seen_classes
    unseen = getattr(clf, "unseen_classes", None) if unseen_classes is None else unseen_classes
    if seen is None or unseen is None:
        raise ValueError("seen_classes/unseen_classes: required for a classifier without a split")
    scores, _ = evaluate_head(clf, x, y, seen, unseen, protocol=protocol)
    if protocol == "gzsl":
        block = scores["gzsl"] or {"S": None, "U": None, "H": None}
        return {"protocol": "gzsl", **{k: block[k] for k in ("S", "U", "H")}}
    return {"protocol": "base2new", **{k: scores["base2new"][k] for k in ("B", "N", "HM")}}


def labels_in_class_space(
    labels: Any, file_class_names: Sequence[str] | None, class_names: Sequence[str],
    *, what: str = "features",
) -> Any:
    """A feature file's labels as indices of a classifier's classes (matched by name).

    Args:
        labels: (N,) int64 labels of the file. file_class_names: the file's class names, or
            None (its labels are then taken to be classifier indices).
        class_names: the classifier's C class names.
        what: how the file is named in error messages (e.g. "--features").

    Raises:
        ValueError: a label out of range, classes of the file unknown to the classifier, or
            non-unique classifier names when matching by name is needed.
    """
    import torch

    names = list(class_names)
    C = len(names)
    labels = torch.as_tensor(labels).long()
    if file_class_names is None or list(file_class_names) == names:
        if labels.numel() and int(labels.max()) >= C:
            raise ValueError(
                f"{what}: label {int(labels.max())} but the classifier has {C} classes "
                "(labels must be indices of the classifier's classes)"
            )
        return labels
    if len(set(names)) != len(names):
        raise ValueError(
            f"{what}: its class_names differ from the classifier's, and the classifier's "
            "names are not unique, so labels cannot be matched by name"
        )
    index = {n: i for i, n in enumerate(names)}
    used = torch.unique(labels).tolist()
    missing = [file_class_names[u] for u in used if file_class_names[u] not in index]
    if missing:
        raise ValueError(
            f"{what}: {len(missing)} of its classes are not classes of the classifier, "
            f"e.g. {missing[:5]}"
        )
    lut = torch.tensor([index.get(n, -1) for n in file_class_names], dtype=torch.int64)
    log.info("%s lists its classes in another order; labels matched by name", what)
    return lut[labels]


# ------------------------------------------------------------------------------------------
# metrics.json and per_class.csv
# ------------------------------------------------------------------------------------------


def _score_block(scores: Mapping[str, Any]) -> dict[str, Any]:
    return {k: scores.get(k) for k in _SCORE_KEYS}


def build_metrics(
    command: str,
    scores: Mapping[str, Any],
    *,
    baselines: Mapping[str, Mapping[str, Any]] | None = None,
    classifier_provenance: Mapping[str, Any] | None = None,
    **sections: Any,
) -> dict[str, Any]:
    """The ``metrics.json`` object (module docstring) from :func:`evaluate_head` scores.

    Args:
        command: "evaluate", "run" or "demo".
        scores: the main classifier's scores (first element of :func:`evaluate_head`).
        baselines: name -> scores of other classifiers on the same test set.
        classifier_provenance: the evaluated classifier's own provenance metadata.
        **sections: optional top-level sections: ``estimate``, ``selection``,
            ``paper_protocol_max_over_epochs``, ``details``, ``inputs``.

    Raises:
        ValueError: an unknown section name.
    """
    from .io import provenance

    allowed = {"estimate", "selection", "paper_protocol_max_over_epochs", "details", "inputs"}
    unknown = sorted(set(sections) - allowed)
    if unknown:
        raise ValueError(f"build_metrics: unknown sections {unknown}; allowed {sorted(allowed)}")
    m: dict[str, Any] = {"schema": SCHEMA, "command": command}
    for k in ("protocol", "n_test", "n_classes", "n_seen_classes", "n_unseen_classes"):
        m[k] = scores[k]
    m.update(_score_block(scores))
    if baselines:
        m["baselines"] = {name: _score_block(s) for name, s in baselines.items()}
    m.update({k: v for k, v in sections.items() if v is not None})
    m["provenance"] = provenance(classifier=dict(classifier_provenance or {}))
    return m


def per_class_rows(
    per_class: Mapping[str, Any],
    class_names: Sequence[str],
    seen_classes: Sequence[int],
    *,
    baselines: Mapping[str, Mapping[str, Any]] | None = None,
) -> tuple[list[dict[str, Any]], list[str]]:
    """(rows, columns) of ``per_class.csv`` (module docstring)."""
    seen = {int(c) for c in seen_classes}
    acc = per_class["accuracy"].tolist()
    cnt = per_class["count"].tolist()
    blk = per_class.get("accuracy_within_block")
    blk = None if blk is None else blk.tolist()
    cols = list(_CSV_BASE)
    if blk is not None:
        cols.append("accuracy_within_block")
    base = {name: pc["accuracy"].tolist() for name, pc in (baselines or {}).items()}
    cols += [f"{name}_accuracy" for name in base]
    rows = []
    for c, name in enumerate(class_names):
        r = {"class_index": c, "class_name": name, "group": "seen" if c in seen else "unseen",
             "n_test": int(cnt[c]), "accuracy": acc[c]}
        if blk is not None:
            r["accuracy_within_block"] = blk[c]
        for b, a in base.items():
            r[f"{b}_accuracy"] = a[c]
        rows.append(r)
    return rows, cols


def write_evaluation(
    out_dir: str | os.PathLike,
    metrics: dict[str, Any],
    per_class: dict[str, Any],
    class_names: Sequence[str],
    seen_classes: Sequence[int],
    *,
    baselines_per_class: Mapping[str, Mapping[str, Any]] | None = None,
    plot: bool = True,
    plot_title: str = "per-class accuracy (GZSL: over all classes)",
) -> list[Path]:
    """Write ``metrics.json``, ``per_class.csv`` and ``plots/per_class_accuracy.png`` (atomic).

    Args:
        out_dir: folder (created if missing).
        metrics: from :func:`build_metrics` (validated before anything is written).
        per_class: the main classifier's (second element of :func:`evaluate_head`).
        class_names: C names. seen_classes: seen class indices.
        baselines_per_class: name -> per-class results of the baselines (extra CSV columns).
        plot: draw the bar chart (skipped with a warning when matplotlib is missing).

    Returns:
        The paths written.

    Raises:
        ValueError: ``metrics`` does not follow the schema.
    """
    from .io import save_csv, save_json

    validate_metrics(metrics)
    rows, cols = per_class_rows(per_class, class_names, seen_classes,
                                baselines=baselines_per_class)
    validate_per_class(rows, metrics, columns=cols)
    out = Path(out_dir).expanduser()
    written = [save_json(out / "metrics.json", metrics), save_csv(out / "per_class.csv", rows,
                                                                   cols)]
    if plot:
        png = _plot_per_class(out, per_class, class_names, seen_classes, metrics, plot_title)
        if png is not None:
            written.append(png)
    return written


def _plot_per_class(out: Path, per_class, class_names, seen_classes, metrics, title) -> Path | None:
    seen = {int(c) for c in seen_classes}
    scores = None
    if metrics.get("gzsl"):
        scores = {k: metrics["gzsl"][k] for k in ("S", "U", "H")}
    elif metrics.get("closed_set"):
        scores = {"acc": metrics["closed_set"]["accuracy"]}
    try:
        from .plots import plot_per_class_accuracy

        return plot_per_class_accuracy(
            per_class["accuracy"], list(class_names),
            [c in seen for c in range(len(class_names))],
            out / "plots" / "per_class_accuracy.png", scores=scores, title=title,
        )
    except ImportError as exc:
        log.warning("no plot (%s); `pip install matplotlib` for it", exc)
        return None


def plot_feature_projection(out: str | os.PathLike, class_names: Sequence[str], seen, unseen,
                            features: Mapping[str, tuple], *, per_group: int = 20) -> Path | None:
    """``out/plots/features_pca.png``: a joint PCA of feature sets (e.g. virtual, synthesized,
    test; name -> (x, y)), seen and new classes in two colour families, with a caption saying
    what a healthy picture looks like (None, with a warning, without matplotlib).

    Every class is shown when there are at most 2 * `per_group`; otherwise the first
    `per_group` seen and the first `per_group` new classes, and the title says so."""
    import torch

    try:
        from .plots import plot_feature_projection as _plot

        seen_l = torch.as_tensor(seen).reshape(-1).tolist()
        unseen_l = torch.as_tensor(unseen).reshape(-1).tolist()
        names = ", ".join(features)
        if len(seen_l) + len(unseen_l) <= 2 * per_group:
            shown = seen_l + unseen_l
            title = (f"PCA of {names} features: all {len(seen_l)} seen and {len(unseen_l)} "
                     "new classes")
        else:
            shown = seen_l[:per_group] + unseen_l[:per_group]
            title = (f"PCA of {names} features: the first {min(per_group, len(seen_l))} of "
                     f"{len(seen_l)} seen and {min(per_group, len(unseen_l))} of "
                     f"{len(unseen_l)} new classes (too many to tell apart)")
        return _plot(
            {k: v[0] for k, v in features.items()}, {k: v[1] for k, v in features.items()},
            Path(out) / "plots" / "features_pca.png", class_names=list(class_names),
            classes=shown, max_per_class=60, title=title, seen_classes=seen_l,
        )
    except ImportError as exc:
        log.warning("plots skipped: %s", exc)
        return None


# ------------------------------------------------------------------------------------------
# validation
# ------------------------------------------------------------------------------------------


def _frac(v: Any, where: str, *, nullable: bool = True) -> None:
    if v is None and nullable:
        return
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not (0.0 <= v <= 1.0):
        raise ValueError(f"metrics: {where} must be a fraction in [0, 1], got {v!r}")


def _count(v: Any, where: str) -> None:
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise ValueError(f"metrics: {where} must be an int >= 0, got {v!r}")


def _keys(d: Any, keys: Sequence[str], where: str) -> None:
    if not isinstance(d, Mapping):
        raise ValueError(f"metrics: {where} must be an object, got {type(d).__name__}")
    missing = [k for k in keys if k not in d]
    if missing:
        raise ValueError(f"metrics: {where} lacks {missing}")


def _validate_block(b: Any, where: str, protocol: str) -> None:
    _keys(b, _SCORE_KEYS, where)
    _frac(b["accuracy"], f"{where}.accuracy", nullable=False)
    g, bn, cs = b["gzsl"], b["base2new"], b["closed_set"]
    if (g is None) == (cs is None):
        raise ValueError(f"metrics: {where} needs exactly one of gzsl (open set) and closed_set")
    if g is not None:
        _keys(g, ("S", "U", "H"), f"{where}.gzsl")
        for k in ("S", "U", "H"):
            _frac(g[k], f"{where}.gzsl.{k}")
        if g["S"] is not None and g["U"] is not None and g["H"] is None:
            raise ValueError(f"metrics: {where}.gzsl.H is null although S and U are defined")
    if cs is not None:
        _keys(cs, ("accuracy", "mean_per_class"), f"{where}.closed_set")
        for k in ("accuracy", "mean_per_class"):
            _frac(cs[k], f"{where}.closed_set.{k}", nullable=False)
    if protocol == "base2new" and g is not None:
        _keys(bn, ("B", "N", "HM"), f"{where}.base2new")
        for k in ("B", "N", "HM"):
            _frac(bn[k], f"{where}.base2new.{k}", nullable=False)
    elif bn is not None:
        raise ValueError(f"metrics: {where}.base2new must be null for protocol {protocol!r}")


def validate_metrics(m: Any) -> None:
    """Check a ``metrics.json`` object against the schema (module docstring).

    Raises:
        ValueError: the first problem, named by its key path.
    """
    _keys(m, ("schema", "command", "protocol", "n_test", "n_classes", "n_seen_classes",
              "n_unseen_classes", *_SCORE_KEYS, "provenance"), "top level")
    if m["schema"] != SCHEMA:
        raise ValueError(f"metrics: schema is {m['schema']!r}, expected {SCHEMA!r}")
    if m["command"] not in ("evaluate", "run", "demo"):
        raise ValueError(f"metrics: unknown command {m['command']!r}")
    if m["protocol"] not in ("gzsl", "base2new"):
        raise ValueError(f"metrics: protocol must be 'gzsl' or 'base2new', got {m['protocol']!r}")
    for k in ("n_test", "n_classes", "n_seen_classes", "n_unseen_classes"):
        _count(m[k], k)
    if m["n_seen_classes"] + m["n_unseen_classes"] != m["n_classes"]:
        raise ValueError("metrics: n_seen_classes + n_unseen_classes != n_classes")
    _validate_block(m, "top level", m["protocol"])
    if (m["gzsl"] is None) != (m["n_unseen_classes"] == 0):
        raise ValueError("metrics: gzsl must be present exactly when there are unseen classes")
    if m["gzsl"] is not None:
        _keys(m["gzsl"], _GZSL_KEYS, "gzsl")
        _count(m["gzsl"]["n_seen"], "gzsl.n_seen")
        _count(m["gzsl"]["n_unseen"], "gzsl.n_unseen")
        if m["gzsl"]["n_seen"] + m["gzsl"]["n_unseen"] != m["n_test"]:
            raise ValueError("metrics: gzsl.n_seen + gzsl.n_unseen != n_test")
    for name, b in (m.get("baselines") or {}).items():
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(f"metrics: baseline name {name!r} must be an identifier")
        _validate_block(b, f"baselines.{name}", m["protocol"])
    if not isinstance(m["provenance"], Mapping):
        raise ValueError("metrics: provenance must be an object")


def validate_per_class(
    rows: Sequence[Mapping[str, Any]], metrics: Mapping[str, Any], *,
    columns: Sequence[str] | None = None,
) -> None:
    """Check ``per_class.csv`` rows (dicts; CSV strings accepted) against ``metrics``.

    Raises:
        ValueError: wrong columns, row count or order, a bad group, count or accuracy, or
            counts that do not add up to ``n_test``.
    """
    cols = list(columns if columns is not None else (rows[0].keys() if rows else _CSV_BASE))
    if cols[:5] != _CSV_BASE:
        raise ValueError(f"per_class: columns must start with {_CSV_BASE}, got {cols[:5]}")
    extra = cols[5:]
    b2n = metrics["protocol"] == "base2new" and metrics.get("base2new") is not None
    if b2n != ("accuracy_within_block" in extra):
        raise ValueError("per_class: accuracy_within_block must be there exactly for base2new")
    expected = [f"{b}_accuracy" for b in (metrics.get("baselines") or {})]
    if [c for c in extra if c != "accuracy_within_block"] != expected:
        raise ValueError(f"per_class: baseline columns {extra} differ from {expected}")
    if len(rows) != metrics["n_classes"]:
        raise ValueError(f"per_class: {len(rows)} rows for {metrics['n_classes']} classes")
    total, n_seen = 0, 0
    for i, r in enumerate(rows):
        if int(r["class_index"]) != i:
            raise ValueError(f"per_class: row {i} has class_index {r['class_index']!r}")
        if r["group"] not in ("seen", "unseen"):
            raise ValueError(f"per_class: row {i} group {r['group']!r}")
        n_seen += r["group"] == "seen"
        n = int(r["n_test"])
        if n < 0:
            raise ValueError(f"per_class: row {i} n_test {n}")
        total += n
        for c in ("accuracy", *extra):
            v = r.get(c)
            v = None if v in (None, "") else float(v)
            if v is not None and math.isnan(v):
                v = None
            if (v is None) != (n == 0) and c in ("accuracy", "accuracy_within_block"):
                raise ValueError(f"per_class: row {i} {c} {r.get(c)!r} with n_test {n}")
            if v is not None and not 0.0 <= v <= 1.0:
                raise ValueError(f"per_class: row {i} {c} {v!r} not in [0, 1]")
    if total != metrics["n_test"]:
        raise ValueError(f"per_class: n_test adds up to {total}, metrics say {metrics['n_test']}")
    if n_seen != metrics["n_seen_classes"]:
        raise ValueError(f"per_class: {n_seen} seen rows, metrics say {metrics['n_seen_classes']}")


def validate_results(folder: str | os.PathLike) -> dict[str, Any]:
    """Validate ``folder/metrics.json`` and ``folder/per_class.csv``; return the metrics."""
    import json

    folder = Path(folder)
    m = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
    validate_metrics(m)
    with open(folder / "per_class.csv", newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        rows = list(reader)
        validate_per_class(rows, m, columns=reader.fieldnames)
    return m
