"""Class semantics: CLIP text features, human attributes, or both (issue 12 part 3, CFZSL).

CFZSL (Multimedia Systems 2024) conditions on a *combined* semantic space: the xlsa17 human
attributes of a class beside its CLIP text feature. `class_semantics` is the one place where the
two are fused; ICIS (`ICISConfig.semantics`) and the DFZSL generator
(`GeneratorConfig.semantics`) both call it.

Modes (C classes, text (C, D), attributes (C, K)):

- ``"text"``: normalize(text) per class: exactly what the pipeline used before (bit for bit).
- ``"attributes"``: normalize(attributes) per class (xlsa17 ships them L2-normalised already).
- ``"combined"``:

      t_c = normalize(text_c - mean_k text_k)           (C, D)
      a_c = normalize(attr_c - mean_k attr_k)           (C, K)
      s_c = [t_c, w a_c] / sqrt(1 + w^2)                (C, D + K), unit rows

  Why this form:

  * **per-class L2 normalisation of each part** puts both on one scale whatever their widths
    (D = 512 text dimensions against K = 85 attributes would otherwise weigh by width and raw
    norm, and raw xlsa17 attribute norms differ between datasets);
  * **centring** (over the C classes given, before normalising): CLIP text features of one
    dataset share a large common direction (class-to-class cosines of 0.7-0.9), xlsa17
    attributes a smaller one (they are non-negative). Uncentred, a part's "energy" would be
    mostly that shared component, which says nothing about which class is which; centred, each
    unit part carries only class differences, so the weight below compares like with like;
  * **weight w on the attribute part, then renormalised**: the cosine of two classes in the
    combined space is ``(cos_t + w^2 cos_a) / (1 + w^2)``, a weighted mean of the two
    similarity structures; w = 1 gives both parts equal energy. Consumers that normalise their
    conditions (the TF-VAEGAN, ICIS) see unit rows either way.

  The weight is a hyper-parameter; it must never be chosen on test (new) classes. It is
  chosen among `ATTRIBUTE_WEIGHTS` on **held-out base classes only**: by the map that reads the
  semantics (`pipeline.text_map.fit_semantic_map`: ICIS's `icis_linear`, DFZSL's starting
  prototypes and, through them, its TF-VAEGAN), or, where no such map exists (the published
  ICIS autoencoders, DFZSL's published frame), by `select_attribute_weight`: for each
  candidate, a kernel ridge regression from the combined semantics to a per-class target
  direction (the teacher's rows, or the fitted vMF means) is fitted on part of the base
  classes and scored by the mean cosine on the held-out rest (k folds).

Centring depends on the set of classes given: fuse all classes (base and new) in one call, then
index; `class_semantics` on base rows alone and on new rows alone would centre each set on its
own mean.

Example:
    >>> s = class_semantics(text, att, "combined", weight=1.0)       # (C, D + K) unit rows
    >>> w = select_attribute_weight(text[seen], att[seen], teacher_rows)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from .hashing import seeded_generator

__all__ = [
    "SEMANTICS",
    "ATTRIBUTE_WEIGHTS",
    "class_semantics",
    "check_semantics_inputs",
    "select_attribute_weight",
    "weight_for_json",
]

#: The modes of `class_semantics`.
SEMANTICS = ("text", "attributes", "combined")

#: Candidate attribute weights w of the "combined" mode (energy ratio w^2 from 1/16 to 16),
#: and its two ends: 0 (the centred text alone) and inf (the centred attributes alone), so the
#: held-out selection can also decide that one part adds nothing.
ATTRIBUTE_WEIGHTS = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0, math.inf)


def _check_mode(mode: Any) -> str:
    if mode not in SEMANTICS:
        raise ValueError(f"semantics: expected one of {SEMANTICS}, got {mode!r}")
    return mode


def _check_part(t: Any, name: str) -> torch.Tensor:
    if not isinstance(t, torch.Tensor) or not t.is_floating_point() or t.dim() != 2:
        got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
        raise TypeError(f"{name}: expected a (C, width) floating-point tensor, got {got}")
    if t.shape[0] < 1 or t.shape[1] < 1:
        raise ValueError(f"{name}: expected at least one row and one column, got {tuple(t.shape)}")
    if t.device.type == "meta":
        raise ValueError(f"{name}: a meta tensor holds no values")
    bad = ~torch.isfinite(t).all(dim=1)
    if bool(bad.any()):
        raise ValueError(f"{name}: row {int(bad.nonzero()[0, 0])} contains NaN or Inf")
    return t


def _unit_rows(t: torch.Tensor, name: str, scale: torch.Tensor | None = None) -> torch.Tensor:
    """normalize(t) per row; a zero row (or, with `scale`, one below 1e-6 x scale: rounding
    left over by centring identical rows) is an error."""
    n = t.norm(dim=1)
    zero = n == 0 if scale is None else n <= 1e-6 * scale
    if bool(zero.any()):
        raise ValueError(f"{name}: row {int(zero.nonzero()[0, 0])} is all zero")
    return F.normalize(t, dim=1)


def check_semantics_inputs(
    mode: str, text: torch.Tensor | None, attributes: torch.Tensor | None, *, where: str = ""
) -> str:
    """Raise a clear error when `mode` lacks the inputs it needs (before any work).

    Args:
        mode: one of `SEMANTICS`. text / attributes: what the caller has (None: absent).
        where: prefix of the message (e.g. "ICISConfig.semantics").

    Returns:
        The mode. Only presence, shape, and matching row counts are checked here; values are
        checked by `class_semantics`.
    """
    _check_mode(mode)
    pre = f"{where}: " if where else ""
    if mode in ("text", "combined") and text is None:
        raise ValueError(f"{pre}semantics={mode!r} needs the class text features")
    if mode in ("attributes", "combined") and attributes is None:
        raise ValueError(f"{pre}semantics={mode!r} needs class attributes (C, K), e.g. the "
                         "xlsa17 `att` of the dataset (dfzsl_fast.data.load_att_splits)")
    if mode == "combined":
        for t, name in ((text, "text"), (attributes, "attributes")):
            if not isinstance(t, torch.Tensor) or t.dim() != 2:
                raise TypeError(f"{pre}{name}: expected a (C, width) tensor")
        if text.shape[0] != attributes.shape[0]:
            raise ValueError(f"{pre}text has {text.shape[0]} rows but attributes has "
                             f"{attributes.shape[0]}: one row per class, same class order")
    return mode


def class_semantics(
    text: torch.Tensor | None,
    attributes: torch.Tensor | None,
    mode: str = "text",
    *,
    weight: float = 1.0,
    center: bool = True,
) -> torch.Tensor:
    """The class conditions of one semantic space (see the module docstring for the fusion).

    Args:
        text: (C, D) float class text features (any norm), or None when `mode` does not use it.
        attributes: (C, K) float class attributes (any norm), or None when not used.
        mode: "text" | "attributes" | "combined".
        weight: w >= 0, the attribute part's weight in "combined" (1: equal energy; 0: the
            centred text alone; inf: the centred attributes alone); ignored by the other modes.
        center: centre each part over the C classes before normalising ("combined" only; the
            single modes return the normalised input unchanged, as the pipeline always did).

    Returns:
        (C, S) unit rows in the dtype and device of the input used (S = D, K or D + K); in
        "combined" the attributes are cast to the text's dtype and device.

    Raises:
        ValueError: unknown mode, a missing input the mode needs, different row counts, NaN or
            Inf, an all-zero row (after centring: two identical classes in a part), a weight
            that is negative or NaN.
        TypeError: an input that is not a 2-D float tensor.

    Differentiable: yes (plain torch ops).

    Example:
        >>> class_semantics(T, None, "text")                 # == F.normalize(T, dim=1)
        >>> class_semantics(T, att, "combined", weight=0.5)  # (C, D + K)
    """
    check_semantics_inputs(mode, text, attributes)
    if mode == "text":
        return _unit_rows(_check_part(text, "text"), "text")
    if mode == "attributes":
        return _unit_rows(_check_part(attributes, "attributes"), "attributes")
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not (
            weight >= 0):  # NaN fails this too
        raise ValueError(f"weight: expected a number >= 0 (inf: the attributes alone), got "
                         f"{weight!r}")
    t = _check_part(text, "text")
    a = _check_part(attributes, "attributes").to(device=t.device, dtype=t.dtype)
    t_scale, a_scale = t.norm(dim=1).max(), a.norm(dim=1).max()
    if center:
        if t.shape[0] < 2:
            raise ValueError("semantics='combined' with center=True needs at least 2 classes")
        t = t - t.mean(dim=0, keepdim=True)
        a = a - a.mean(dim=0, keepdim=True)
    t = _unit_rows(t, "text (centred)" if center else "text", t_scale)
    a = _unit_rows(a, "attributes (centred)" if center else "attributes", a_scale)
    if math.isinf(weight):  # the limit of the weighted mean: the attribute part alone
        return torch.cat([torch.zeros_like(t), a], dim=1)
    return torch.cat([t, float(weight) * a], dim=1) / math.sqrt(1.0 + float(weight) ** 2)


def weight_for_json(weight: float | None) -> float | str | None:
    """An attribute weight as JSON can hold it: inf (the attributes alone) as "inf"."""
    return "inf" if weight is not None and math.isinf(weight) else weight


def _ridge_cv_cos(S: torch.Tensor, Y: torch.Tensor, folds: list[torch.Tensor], lam: float) -> float:
    """Mean held-out cosine of a kernel ridge regression S -> Y over class folds."""
    cos = []
    for hold in folds:
        keep = torch.ones(S.shape[0], dtype=torch.bool)
        keep[hold] = False
        Sk, Yk = S[keep], Y[keep]
        K = Sk @ Sk.T
        alpha = torch.linalg.solve(K + lam * torch.eye(K.shape[0], dtype=K.dtype), Yk)
        pred = S[hold] @ Sk.T @ alpha
        cos.append(F.cosine_similarity(pred, Y[hold], dim=1))
    return float(torch.cat(cos).mean())


def select_attribute_weight(
    text: torch.Tensor,
    attributes: torch.Tensor,
    targets: torch.Tensor,
    *,
    weights: Sequence[float] = ATTRIBUTE_WEIGHTS,
    folds: int = 5,
    lam: float = 0.1,
    seed: int = 0,
    return_scores: bool = False,
) -> float | tuple[float, dict[float, float]]:
    """Choose the "combined" attribute weight on held-out **base** classes (never new ones).

    For each candidate w, the combined semantics of the base classes (centred over them) are
    regressed (kernel ridge, `lam`) onto the base classes' target directions on k - 1 folds of
    classes and scored by the mean cosine on the held-out fold; the best mean wins (ties: the
    smaller weight).

    Args:
        text: (C_s, D) base-class text features. attributes: (C_s, K) their attributes.
        targets: (C_s, T) per-class target directions in the image space: the teacher's rows
            (ICIS) or the fitted vMF means (DFZSL); normalised here.
        weights: candidates (>= 0). folds: k (clamped to C_s; needs C_s >= 3).
        lam: ridge strength. seed: seeds the fold split.
        return_scores: also return {weight: held-out mean cosine}.

    Returns:
        The chosen weight (with `return_scores`, (weight, scores)).
    """
    S_all = {}
    for w in weights:
        S_all[float(w)] = class_semantics(text, attributes, "combined", weight=float(w))
    Y = _unit_rows(_check_part(targets, "targets"), "targets").detach().double().cpu()
    C = Y.shape[0]
    if C != text.shape[0]:
        raise ValueError(f"targets: {C} rows for {text.shape[0]} base classes")
    if C < 3:
        raise ValueError("select_attribute_weight: needs at least 3 base classes")
    k = max(2, min(int(folds), C))
    perm = torch.randperm(C, generator=seeded_generator(seed, 12_3))
    split = [perm[i::k] for i in range(k)]
    scores = {w: _ridge_cv_cos(S.detach().double().cpu(), Y, split, lam)
              for w, S in S_all.items()}
    best = max(scores, key=lambda w: (scores[w], -w))
    return (best, scores) if return_scores else best
