"""Reference (pure PyTorch) cosine-classifier math: the float64 oracle of the tests.

These functions materialise the (N, C) logits and rely on torch's autograd; they are written for
clarity, not speed. The fast default kernels (chunked, never holding (N, C) logits) live in
`dfzsl_fast/ops/cosine.py` and are tested against these.

Zero-norm policy (the same as `torch.nn.functional.normalize`): a row r is normalised as
r / max(|r|, eps). A row with |r| < eps is therefore scaled by 1/eps (a zero row stays zero and
gives logits 0); the gradient on that branch is (1/eps) * identity.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "normalize_rows",
    "cosine_logits",
    "cosine_cross_entropy",
    "cosine_topk",
    "cosine_logit_mse",
]


def normalize_rows(x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """(R, d) -> (R, d): x / max(|x|, eps) row-wise, exactly `F.normalize(x, dim=1, eps=eps)`."""
    return F.normalize(x, p=2.0, dim=1, eps=eps)


def cosine_logits(
    x: torch.Tensor, w: torch.Tensor, scale: float = 1.0, eps: float = 1e-12
) -> torch.Tensor:
    """scale * normalize(x) @ normalize(w).T.

    Args:
        x: (N, d) float features. w: (C, d) float class weights (same dtype).
        scale: the logit scale s. eps: the normalisation floor (see the module docstring).

    Returns:
        (N, C) logits in x's dtype. Differentiable in x and w (torch autograd).
    """
    return scale * (normalize_rows(x, eps) @ normalize_rows(w, eps).T)


def cosine_cross_entropy(
    x: torch.Tensor,
    w: torch.Tensor,
    target: torch.Tensor,
    scale: float,
    logit_adjustment: torch.Tensor | None = None,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    eps: float = 1e-12,
) -> torch.Tensor:
    """Cross-entropy of the cosine logits, with an optional additive (C,) logit adjustment.

    z = cosine_logits(x, w, scale, eps) + logit_adjustment (the adjustment enters the loss
    only); loss_i = (1 - ls) * (lse(z_i) - z_i[t_i]) + ls * mean_c (lse(z_i) - z_ic), exactly
    `F.cross_entropy(z, target, reduction=..., label_smoothing=ls)`.

    Returns:
        () for reduction "mean"/"sum" ("mean" of N = 0 rows is NaN, as in torch), (N,) for "none".
    """
    z = cosine_logits(x, w, scale, eps)
    if logit_adjustment is not None:
        z = z + logit_adjustment.to(z.dtype)
    logp = torch.log_softmax(z, dim=1)
    nll = -logp.gather(1, target.view(-1, 1)).squeeze(1)
    loss = nll
    if label_smoothing:
        smooth = -logp.mean(dim=1)
        loss = (1.0 - label_smoothing) * nll + label_smoothing * smooth
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    if reduction == "none":
        return loss
    raise ValueError(f"reduction: expected 'mean', 'sum' or 'none', got {reduction!r}")


def cosine_topk(
    x: torch.Tensor, w: torch.Tensor, k: int = 1, scale: float = 1.0, eps: float = 1e-12
) -> tuple[torch.Tensor, torch.Tensor]:
    """(scores (N, k), indices (N, k) int64): the k largest cosine logits of each row,
    descending."""
    return torch.topk(cosine_logits(x, w, scale, eps), k, dim=1, largest=True, sorted=True)


def cosine_logit_mse(
    x: torch.Tensor,
    w_student: torch.Tensor,
    w_teacher: torch.Tensor,
    scale_s: float,
    scale_t: float,
    eps: float = 1e-12,
) -> torch.Tensor:
    """mean over the N*C entries of (student - teacher)^2, the teacher logits detached.

    student = cosine_logits(x, w_student, scale_s), teacher = cosine_logits(x, w_teacher,
    scale_t); x's gradient flows through the student logits only. Returns a () tensor (NaN when
    N*C = 0, as torch's mean of an empty tensor).
    """
    student = cosine_logits(x, w_student, scale_s, eps)
    teacher = cosine_logits(x, w_teacher, scale_t, eps).detach()
    return ((student - teacher) ** 2).mean()
