"""Saved classification heads: ``*.safetensors`` with class names, split and provenance.

Layout (see ``shared/docs/ecosystem.md`` section 4):

- tensors ``weight`` (C, D) and, for an ``nn.Linear`` with bias, ``bias`` (C,), in the head's
  dtype; for an :class:`~dfzsl_fast.nn.ExtendedClassifier` also ``input_shift`` (D,) and/or
  ``input_center`` (D,);
- safetensors metadata ``format = "dfzsl_fast.classifier/v1"`` and one key ``dfzsl_fast``
  holding a JSON object: ``kind`` ("cosine" or "linear"), ``num_classes``, ``in_features``,
  ``scale`` / ``eps`` / ``learnable`` (cosine), ``seen_offset`` (an ExtendedClassifier's
  calibrated stacking, when non-zero), ``has_bias`` (linear), ``class_names``,
  ``seen_classes``, ``unseen_classes``, ``n_base`` (when the seen classes are rows
  ``0 .. n_base-1``) and ``provenance`` (dfzsl_fast, torch and Python versions, UTC creation
  time, plus whatever the caller passed: config, CLIP model, weights sha256, ...).

Loading never runs code (safetensors holds tensors and a JSON header only).

Example:
    >>> save_classifier("head.safetensors", head, class_names=names, n_base=50,
    ...                 metadata={"clip_model": "ViT-B-16"})
    >>> head, meta = load_classifier("head.safetensors")
    >>> meta["seen_classes"][:3], meta["provenance"]["clip_model"]
    ([0, 1, 2], 'ViT-B-16')
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._checks import check_class_indices
from ..data.classnames import check_classnames
from ..nn import CosineClassifier, ExtendedClassifier
from ._checks import META_KEY, check_finite, check_names, read_safetensors
from .atomic import PathLike, atomic_path, to_jsonable
from .provenance import provenance

__all__ = ["CLASSIFIER_FORMAT", "save_classifier", "load_classifier", "load_extended"]

#: safetensors metadata ``format`` of a saved classifier.
CLASSIFIER_FORMAT = "dfzsl_fast.classifier/v1"

Head = CosineClassifier | ExtendedClassifier | nn.Linear


def _class_ids(v: Any, what: str, C: int) -> list[int]:
    """Sorted distinct class indices in [0, C): `check_class_indices`, every failure a ValueError
    (a stored value of the wrong type is a bad file, not a caller's TypeError)."""
    if isinstance(v, (list, tuple)) and any(isinstance(i, bool) for i in v):
        raise ValueError(f"`{what}`: expected a 1-D sequence of integer class indices")
    try:
        return sorted(check_class_indices(v, f"`{what}`", C).tolist())
    except (TypeError, ValueError) as exc:
        raise ValueError(str(exc)) from None


def _meta_number(meta: dict, key: str, default: float, p: Path, positive: bool = False) -> float:
    v = meta.get(key, default)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or (
        positive and v <= 0
    ):
        what = "a finite positive number" if positive else "a finite number"
        raise ValueError(f"{p}: metadata `{key}` must be {what}, got {v!r}")
    return float(v)


def _meta_bool(meta: dict, key: str, default: bool, p: Path) -> bool:
    v = meta.get(key, default)
    if not isinstance(v, bool):
        raise ValueError(f"{p}: metadata `{key}` must be true or false, got {v!r}")
    return v


def save_classifier(
    path: PathLike,
    head: Head,
    *,
    class_names: Sequence[str] | None = None,
    seen_classes: Sequence[int] | torch.Tensor | None = None,
    n_base: int | None = None,
    metadata: Mapping[str, Any] | None = None,
    input_shift: torch.Tensor | None = None,
    input_center: torch.Tensor | None = None,
) -> Path:
    """Save a classification head as ``*.safetensors`` with its class names and seen/unseen split.

    Args:
        path: output file (written atomically; parent folders are created).
        head: a :class:`~dfzsl_fast.nn.CosineClassifier` (weight (C, D), scale), an
            :class:`~dfzsl_fast.nn.ExtendedClassifier` (its class names, split, input shift,
            centre and metadata are saved with it: give none of those arguments) or an
            ``nn.Linear`` (weight (C, D), optional bias (C,)). Saved in its dtype, on CPU.
        class_names: C names, one per row of ``head.weight`` (required except for an
            ExtendedClassifier).
        seen_classes: indices of the seen (base) classes; every other class is unseen.
        n_base: shorthand for ``seen_classes = range(n_base)`` (the base-to-new layout). Give at
            most one of the two (or both, consistent); with neither, every class is seen (a
            base head, e.g. before ICIS injection).
        metadata: caller's provenance, any JSON-able dict (tensors and Paths are converted):
            config, CLIP model name, weights sha256, QuickGELU, text tower, feature
            normalisation... stored under ``provenance`` beside the automatic versions and
            creation time (the caller's keys win on a clash).
        input_shift: optional (D,) shift added to the unit-normalised input before a cosine
            head (DFZSL's prompt-tuning residual; see `ExtendedClassifier`). Stored as the
            tensor ``input_shift``; `load_classifier` then returns an `ExtendedClassifier`.
        input_center: optional (D,) unit direction projected out of the unit-normalised input
            (the centred frame of `ExtendedClassifier`); stored as ``input_center``.

    Returns:
        ``path`` as a ``Path``.

    Raises:
        TypeError: ``head`` is neither a CosineClassifier nor an nn.Linear; names not strings;
            metadata not JSON-able.
        ValueError: ``len(class_names)`` differs from the number of rows; NaN/Inf weights or
            bias; seen indices out of range or duplicated; ``n_base`` inconsistent.
    """
    from safetensors.torch import save_file

    if isinstance(head, ExtendedClassifier):
        given = [k for k, v in (("class_names", class_names), ("seen_classes", seen_classes),
                                ("n_base", n_base), ("input_shift", input_shift),
                                ("input_center", input_center)) if v is not None]
        if given:
            raise ValueError(
                f"`{given[0]}`: an ExtendedClassifier carries its own {given[0]}; do not pass it"
            )
        metadata = {**head.metadata, **dict(metadata or {})}
        class_names, seen_classes = head.class_names, head.seen_classes
        input_shift, input_center = head.shift, head.center
        seen_offset = head.seen_offset
        head = head.as_cosine()
    else:
        seen_offset = 0.0
    if class_names is None:
        raise TypeError("`class_names`: required (one name per row of head.weight)")
    if isinstance(head, CosineClassifier):
        kind = "cosine"
    elif isinstance(head, nn.Linear):
        kind = "linear"
    else:
        raise TypeError(
            f"`head`: expected a CosineClassifier or an nn.Linear, got {type(head).__name__}"
        )
    weight = head.weight.detach().cpu().contiguous()
    if weight.dim() != 2 or not weight.is_floating_point():
        raise ValueError(
            f"`head.weight`: expected a (C, D) float tensor, got {tuple(weight.shape)}"
        )
    C, D = weight.shape
    names = check_classnames(check_names(class_names, "class_names"), "class_names")
    if len(names) != C:
        raise ValueError(
            f"`class_names` has {len(names)} names but the head has {C} classes (rows of weight)"
        )
    check_finite(weight, "`head.weight`")
    tensors = {"weight": weight}
    for name, value, what in (("input_shift", input_shift, "an input shift"),
                              ("input_center", input_center, "an input centre")):
        if value is None:
            continue
        if kind != "cosine":
            raise ValueError(f"`{name}`: only a cosine head takes {what}")
        v = torch.as_tensor(value).detach().cpu().contiguous()
        if tuple(v.shape) != (D,) or not v.is_floating_point():
            raise ValueError(f"`{name}`: expected a ({D},) float tensor")
        check_finite(v, f"`{name}`")
        tensors[name] = v.to(weight.dtype)
    bias = getattr(head, "bias", None) if kind == "linear" else None
    if bias is not None:
        bias = bias.detach().cpu().contiguous()
        check_finite(bias, "`head.bias`")
        tensors["bias"] = bias

    if n_base is not None:
        if isinstance(n_base, bool) or not isinstance(n_base, int) or not 0 <= n_base <= C:
            raise ValueError(f"`n_base`: expected an int in [0, {C}], got {n_base!r}")
        base_ids = list(range(n_base))
        if seen_classes is not None and _class_ids(seen_classes, "seen_classes", C) != base_ids:
            raise ValueError("`seen_classes` and `n_base` disagree; give one of them")
        seen = base_ids
    elif seen_classes is not None:
        seen = _class_ids(seen_classes, "seen_classes", C)
    else:
        seen = list(range(C))
    seen_set = set(seen)
    unseen = [c for c in range(C) if c not in seen_set]
    nb = len(seen) if seen == list(range(len(seen))) else None

    meta: dict[str, Any] = {
        "format": CLASSIFIER_FORMAT,
        "kind": kind,
        "num_classes": C,
        "in_features": D,
        "dtype": str(weight.dtype).replace("torch.", ""),
        "class_names": names,
        "seen_classes": seen,
        "unseen_classes": unseen,
        "n_base": nb,
    }
    if kind == "cosine":
        if not math.isfinite(float(head.scale)) or not math.isfinite(float(head.eps)):
            raise ValueError(f"`head.scale`: expected a finite scale, got {float(head.scale)}")
        meta.update(scale=float(head.scale), eps=float(head.eps), learnable=bool(head.learnable))
        if seen_offset:  # an ExtendedClassifier's calibrated stacking
            meta["seen_offset"] = seen_offset
    else:
        meta.update(has_bias=bias is not None)
    meta["provenance"] = to_jsonable(provenance(**dict(metadata or {})), "metadata")
    header = {"format": CLASSIFIER_FORMAT, META_KEY: json.dumps(meta, allow_nan=False)}
    final = Path(path).expanduser()
    with atomic_path(final) as tmp:
        save_file(tensors, str(tmp), metadata=header)
    return final



def load_classifier(
    path: PathLike, *, device: str | torch.device | None = None
) -> tuple[Head, dict[str, Any]]:
    """Load a head saved by :func:`save_classifier`.

    Args:
        path: the ``.safetensors`` file.
        device: move the head there (default: CPU).

    Returns:
        ``(head, metadata)``: a :class:`~dfzsl_fast.nn.CosineClassifier` (same scale, eps,
        learnability) or an ``nn.Linear`` with the saved weight (and bias), and the parsed JSON
        metadata dict (``class_names``, ``seen_classes``, ``unseen_classes``, ``kind``,
        ``provenance``, ...; see the module docstring).

    Raises:
        FileNotFoundError: no file at ``path`` (the message names it).
        ValueError: not a safetensors file; another ``format``; missing ``weight``; class-name
            count differing from the rows; NaN/Inf weights; bad seen/unseen indices.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"`path`: no classifier file at {p}")
    tensors, meta = read_safetensors(p, CLASSIFIER_FORMAT, "classifier")
    if "weight" not in tensors:
        raise ValueError(f"{p}: no `weight` tensor (found {sorted(tensors)})")
    w = tensors["weight"]
    if w.dim() != 2 or not w.is_floating_point():
        raise ValueError(f"{p}: `weight` must be a (C, D) float tensor, got {tuple(w.shape)}")
    C, D = w.shape
    names = meta.get("class_names")
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ValueError(f"{p}: metadata `class_names` must be a list of strings")
    if len(names) != C:
        raise ValueError(f"{p}: {len(names)} class names but `weight` has {C} rows")
    try:
        check_classnames(names, "class_names")
    except ValueError as exc:
        raise ValueError(f"{p}: metadata {exc}") from None
    for key, size in (("num_classes", C), ("in_features", D)):
        if key in meta and (isinstance(meta[key], bool) or meta[key] != size):
            raise ValueError(f"{p}: metadata `{key}` is {meta[key]!r} but `weight` is {C}x{D}")
    check_finite(w, f"{p}: `weight`")
    seen = _class_ids(meta.get("seen_classes", list(range(C))), f"{p}: seen_classes", C)
    unseen = _class_ids(meta.get("unseen_classes", []), f"{p}: unseen_classes", C)
    if set(seen) & set(unseen):
        raise ValueError(f"{p}: seen_classes and unseen_classes overlap")
    if len(seen) + len(unseen) != C:
        raise ValueError(f"{p}: seen_classes and unseen_classes must cover all {C} classes")
    meta["seen_classes"], meta["unseen_classes"] = seen, unseen
    prov = meta.get("provenance", {})
    if not isinstance(prov, dict):
        raise ValueError(f"{p}: metadata `provenance` must be a JSON object, got {prov!r}")
    kind = meta.get("kind")
    if kind == "cosine":
        scale = _meta_number(meta, "scale", math.nan, p)
        if not bool(torch.isfinite(torch.tensor(scale, dtype=w.dtype))):
            raise ValueError(f"{p}: metadata `scale` {scale!r} overflows the weight's {w.dtype}")
        shift = tensors.get("input_shift")
        center = tensors.get("input_center")
        offset = _meta_number(meta, "seen_offset", 0.0, p)
        try:
            if shift is not None or center is not None or offset:
                # a pipeline product: cosine head on the centred normalize(x) + shift
                for name, v in (("input_shift", shift), ("input_center", center)):
                    if v is None:
                        continue
                    if tuple(v.shape) != (D,) or not v.is_floating_point():
                        raise ValueError(f"`{name}` must be a ({D},) float tensor, got "
                                         f"{tuple(v.shape)} {v.dtype}")
                    check_finite(v, f"`{name}`")
                head = ExtendedClassifier(w, names, seen, scale=scale, shift=shift,
                                          center=center, metadata=prov, seen_offset=offset)
            else:
                head = CosineClassifier(
                    w, scale, learnable=_meta_bool(meta, "learnable", True, p),
                    eps=_meta_number(meta, "eps", 1e-12, p, positive=True),
                )
        except (TypeError, ValueError) as exc:
            msg = str(exc)
            raise ValueError(msg if str(p) in msg else f"{p}: {msg}") from None
    elif kind == "linear":
        b = tensors.get("bias")
        if _meta_bool(meta, "has_bias", b is not None, p) and b is None:
            raise ValueError(f"{p}: metadata says has_bias but there is no `bias` tensor")
        head = nn.Linear(D, C, bias=b is not None, dtype=w.dtype)
        with torch.no_grad():
            head.weight.copy_(w)
            if b is not None:
                if tuple(b.shape) != (C,) or not b.is_floating_point():
                    raise ValueError(f"{p}: `bias` must be a ({C},) float tensor, got "
                                     f"{tuple(b.shape)} {b.dtype}")
                check_finite(b, f"{p}: `bias`")
                head.bias.copy_(b)
    else:
        raise ValueError(f"{p}: unknown head kind {kind!r} (expected 'cosine' or 'linear')")
    if device is not None:
        head = head.to(device)
    return head, meta



def load_extended(
    path: PathLike, *, device: str | torch.device | None = None
) -> ExtendedClassifier:
    """Load a saved cosine head as an :class:`~dfzsl_fast.nn.ExtendedClassifier`.

    A plain cosine head (no input shift or centre) loads with neither, keeping its split.

    Raises:
        ValueError: as :func:`load_classifier`, or the file holds a linear head.
    """
    head, meta = load_classifier(path, device=device)
    if isinstance(head, ExtendedClassifier):
        return head
    if not isinstance(head, CosineClassifier):
        raise ValueError(f"{path}: holds a {meta.get('kind')} head, not a cosine classifier")
    return ExtendedClassifier(head.weight.detach(), meta["class_names"], meta["seen_classes"],
                              scale=head.scale, metadata=meta.get("provenance", {}))
