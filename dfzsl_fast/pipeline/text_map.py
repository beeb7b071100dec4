"""A linear map from class text features to the teacher's class directions (ours, issue 8).

CLIP's text and image towers are aligned, so a new class's text feature already points roughly
where its images are; what it lacks is the teacher's view of the class (which directions the
base classifier found discriminative, in the frame the virtual features live in). With C_s base
pairs (centred text t_c, target direction m_c: the fitted vMF mean or the teacher row) we learn

    A = argmin_A  sum_c ||t_c A - m_c||^2 + lam ||A - I||^2
      = (T^T T + lam I)^-1 (T^T M + lam I)                      (D x D, closed form)

a ridge regression shrunk towards the **identity** (not towards zero: with few base classes a
map shrunk to zero sends every new class to the same point, which is why ICIS's predicted rows
never win; measured in the README). A new class's direction is normalize(t_u A).

``lam`` is chosen on held-out base classes only: hold out 20 % of them (seeded), fit on the rest
for each candidate, keep the one whose predictions have the highest mean cosine to the held-out
targets, then refit on all base classes.

Example:
    >>> tm = fit_text_map(text_c[seen], mu)            # (C_s, D), (C_s, D)
    >>> new_dirs = tm.apply(text_c[unseen])            # (C_u, D) unit rows
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .._checks import check_matrix
from ..hashing import seeded_generator

__all__ = ["TextMap", "fit_text_map", "fit_semantic_map", "LAMBDAS"]

LAMBDAS = (0.1, 0.3, 1.0, 3.0, 10.0, 30.0)


@dataclass
class TextMap:
    """A fitted map. Attributes: A (D, D) float64; lam; val_cos per candidate lam."""

    A: torch.Tensor
    lam: float
    val_cos: dict[float, float]
    attribute_weight: float | None = None  # the combined map's (`fit_semantic_map`)

    def apply(self, text: torch.Tensor) -> torch.Tensor:
        """(N, D) text features -> (N, D) unit directions normalize(text A), text's dtype."""
        out = text.to(torch.float64) @ self.A.to(text.device)
        return F.normalize(out, dim=1).to(text.dtype)


def _solve(X: torch.Tensor, Y: torch.Tensor, lam: float,
           prior: torch.Tensor | None = None) -> torch.Tensor:
    eye = torch.eye(X.shape[1], dtype=torch.float64, device=X.device)
    return torch.linalg.solve(X.T @ X + lam * eye, X.T @ Y + lam * (eye if prior is None
                                                                    else prior))


def fit_text_map(
    text: torch.Tensor,
    targets: torch.Tensor,
    *,
    lambdas: Sequence[float] = LAMBDAS,
    holdout_fraction: float = 0.2,
    seed: int = 0,
    prior: torch.Tensor | None = None,
) -> TextMap:
    """Fit A on base pairs, lam chosen on held-out base classes (see the module docstring).

    Args:
        text: (C_s, D) base-class text features (rows normalised inside).
        targets: (C_s, D) target directions, same row order (normalised inside).
        lambdas: candidate ridge strengths (> 0).
        holdout_fraction: share of base classes held out to choose lam (>= 1 class; with a
            single base class the largest lam is used).
        seed: seeds the held-out split.
        prior: (S, D) the map to shrink towards (None: the identity, text (C_s, D)); with a
            prior, text may be (C_s, S) of another width S (issue 12: combined semantics
            shrink towards [I; 0], attributes alone towards 0).

    Returns:
        A :class:`TextMap`.

    Raises:
        ValueError: shapes differ, non-finite values, no candidate lam.
    """
    text = check_matrix(text, "text", "(C_s, D)")
    targets = check_matrix(targets, "targets", "(C_s, D)")
    if prior is not None:
        if (not isinstance(prior, torch.Tensor) or prior.dim() != 2
                or tuple(prior.shape) != (text.shape[1], targets.shape[1])
                or text.shape[0] != targets.shape[0]):
            raise ValueError(f"prior: expected ({text.shape[1]}, {targets.shape[1]}) for text "
                             f"{tuple(text.shape)} and targets {tuple(targets.shape)}")
        prior = prior.detach().to(device=text.device, dtype=torch.float64)
    elif text.shape != targets.shape:
        raise ValueError(f"text and targets: expected two (C_s, D) tensors of one shape, got "
                         f"{tuple(text.shape)} and {tuple(targets.shape)}")
    try:
        lams = [float(v) for v in lambdas]
    except (TypeError, ValueError):
        raise TypeError(f"lambdas: expected a sequence of numbers, got {lambdas!r}") from None
    if not lams or any(not (0 < v < math.inf) for v in lams):
        raise ValueError(f"lambdas: expected positive values, got {list(lambdas)}")
    X = F.normalize(text.detach().to(torch.float64), dim=1)
    Y = F.normalize(targets.detach().to(torch.float64), dim=1)
    if not (bool(torch.isfinite(X).all()) and bool(torch.isfinite(Y).all())):
        raise ValueError("text and targets: must be finite")
    C = X.shape[0]
    val: dict[float, float] = {}
    if C >= 2:
        g = seeded_generator(seed, 7103)
        perm = torch.randperm(C, generator=g).to(X.device)
        n_h = min(max(1, round(holdout_fraction * C)), C - 1)
        hold, keep = perm[:n_h], perm[n_h:]
        for lam in lams:
            pred = X[hold] @ _solve(X[keep], Y[keep], lam, prior)
            val[lam] = float(F.cosine_similarity(pred, Y[hold], dim=1).mean())
        best = max(lams, key=lambda v: (val[v], v))
    else:
        best = max(lams)
    return TextMap(A=_solve(X, Y, best, prior), lam=best, val_cos=val)


def fit_semantic_map(
    text: torch.Tensor,
    attributes: torch.Tensor,
    seen: torch.Tensor,
    targets: torch.Tensor,
    *,
    weight: float | None = None,
    seed: int = 0,
) -> tuple[TextMap, torch.Tensor]:
    """The text map on the combined semantic space (issue 12; `semantics.class_semantics`).

    S = class_semantics(text, attributes, "combined", weight=w) over all C classes, and a map
    S[seen] -> targets shrunk towards [sqrt(1 + w^2) I; 0]: the text block back to unit text
    (the identity prior of `fit_text_map`), the attribute block towards zero (attributes have
    no identity to start from). With ``weight=None``, w is the candidate of
    `semantics.ATTRIBUTE_WEIGHTS` whose map has the best held-out cosine on base classes (the
    map's own lam selection), ties to the first.

    Args:
        text: (C, D) class text features of all classes (centred frame: already projected).
        attributes: (C, K) their attributes. seen: (C_s,) base class indices.
        targets: (C_s, D) target directions of the base classes, in ``seen`` order.
        weight: the attribute weight, or None (chosen as above). seed: the held-out split.

    Returns:
        (the map with ``attribute_weight`` set, S (C, D + K) to apply it to).
    """
    from ..semantics import ATTRIBUTE_WEIGHTS, class_semantics

    D, K = text.shape[1], attributes.shape[1]

    def fused(w: float) -> tuple[torch.Tensor, torch.Tensor]:
        S = class_semantics(text, attributes.to(text.device, text.dtype), "combined", weight=w)
        # at w = inf there is no text block (all zero), so nothing to map back
        back = math.sqrt(1.0 + w * w) if math.isfinite(w) else 0.0
        prior = torch.cat([back * torch.eye(D, dtype=torch.float64),
                           torch.zeros(K, D, dtype=torch.float64)])
        return S, prior

    best = None
    for w in (ATTRIBUTE_WEIGHTS if weight is None else (weight,)):
        S, prior = fused(float(w))
        tm = fit_text_map(S[seen], targets, seed=seed, prior=prior)
        score = max(tm.val_cos.values(), default=0.0)
        if best is None or score > best[0]:
            best = (score, S, tm, float(w))
    _, S, tm, w = best
    tm.attribute_weight = w
    return tm, S
