"""The pipeline's product: a cosine classifier over base + new classes.

`ExtendedClassifier` is what `DFZSL.fit` returns and what `dfzsl-fast run` saves: learnable
prototypes P (C_all, D), a logit scale (100), an optional input shift s (D,) learned by FLPT
(the text-to-image residual) and an optional centre direction c (D,):
logits = scale * cos(Pi_c (normalize(x) + s), P), Pi_c = I - c c^T.

The centre (ours, issue 8) is the direction of the mean class text feature. A softmax teacher
without bias is blind to whatever all classes share, so the base prototypes it teaches carry no
shared component, while prototypes built from text carry CLIP's large one (mean pairwise cosine
0.61 on the real ImageNet head); every CLIP image also has a positive component along it. Unless
it is projected out, that component alone decides between base and new prototypes. With c
projected out of inputs and prototypes, the decision uses only the class-specific parts.

The shift is applied to the L2-normalised feature (ours). The reference adds it to the raw
test feature (norm about 10) but to the unit-norm virtual features during training, so the
same shift is ten times weaker at test time there; on unit features it acts the same in
training and at test time.

Example:
    >>> clf = result.classifier                      # from DFZSL(cfg).fit(...)
    >>> pred = clf.predict(x_test)                   # (N,) indices into clf.class_names
    >>> scores = evaluate(clf, x_test, y_test)       # dfzsl_fast.evaluation.evaluate
    >>> save_classifier("runs/awa2/classifier.safetensors", clf)   # dfzsl_fast.io
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .._checks import check_class_indices, check_matrix
from ..ops import cosine as _ops
from .cosine_classifier import CosineClassifier

__all__ = ["ExtendedClassifier", "project_out", "text_center"]


def text_center(text_features: torch.Tensor) -> torch.Tensor:
    """(D,) unit direction of the mean of the unit-normalised class text features (C, D).

    Raises:
        TypeError / ValueError: not a non-empty (C, D) float tensor with finite, non-zero rows,
            or rows whose directions cancel (no mean direction).
    """
    t = check_matrix(text_features, "text_features", "(C, D)")
    m = F.normalize(t.float(), dim=1).mean(0)
    if float(m.norm()) < 1e-6:
        raise ValueError("text_features: the row directions cancel; there is no mean direction")
    return m / m.norm()


def project_out(x: torch.Tensor, center: torch.Tensor | None) -> torch.Tensor:
    """(N, D) rows minus their component along the unit (D,) ``center``: x - (x c) c^T.

    ``center=None`` (the published, uncentred frame) returns ``x`` unchanged."""
    if center is None:
        return x
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() != 2:
        raise TypeError("x: expected an (N, D) floating-point tensor")
    if not isinstance(center, torch.Tensor) or center.shape != (x.shape[1],):
        raise ValueError(f"center: expected a ({x.shape[1]},) tensor matching x's width")
    c = center.to(dtype=x.dtype, device=x.device)
    # an elementwise product and a row sum, not a BLAS matrix-vector product: BLAS results can
    # depend on the buffers' alignment, and a cached stage must reproduce a fresh one bitwise
    return x - (x * c).sum(-1, keepdim=True) * c


class ExtendedClassifier(nn.Module):
    """logits = scale * cos(normalize(x) + shift, weight) - seen_offset * [c is a base class]
    over C_all = C_s + C_u classes.

    Args:
        weight: (C_all, D) float prototypes (any row norm).
        class_names: C_all distinct names; row c is ``class_names[c]``.
        seen_classes: indices of the base (seen) classes; the others are new (unseen).
        scale: logit scale (100 in DFZSL).
        shift: optional (D,) input shift added to the unit-norm feature (FLPT residual).
        center: optional (D,) direction projected out of the unit-norm feature (normalised
            here; the rows of ``weight`` should already be orthogonal to it).
        metadata: JSON-compatible provenance (config, text tower, timings, ...).
        backend: backend of the fused cosine ops.
        seen_offset: a finite number subtracted from every base-class logit (calibrated
            stacking, Chao et al. 2016: a head whose new-class prototypes were fitted to
            synthetic features under-scores real new-class images; 0: none). Whoever sets it
            must choose it without test data (CoOp + SHIP: on held-out base classes).
    """

    def __init__(
        self,
        weight: torch.Tensor,
        class_names: Sequence[str],
        seen_classes: Sequence[int] | torch.Tensor,
        *,
        scale: float = 100.0,
        shift: torch.Tensor | None = None,
        center: torch.Tensor | None = None,
        metadata: dict[str, Any] | None = None,
        backend: str | None = None,
        seen_offset: float = 0.0,
    ) -> None:
        super().__init__()
        if (not isinstance(weight, torch.Tensor) or weight.dim() != 2
                or not weight.is_floating_point()):
            raise TypeError("weight: expected a (C_all, D) floating-point tensor")
        C, D = weight.shape
        names = list(class_names)
        if len(names) != C:
            raise ValueError(f"class_names: {len(names)} names for {C} weight rows")
        if not bool(torch.isfinite(weight).all()):
            raise ValueError("weight: contains NaN or Inf")
        seen = check_class_indices(seen_classes, "seen_classes", C)
        mask = torch.zeros(C, dtype=torch.bool)
        mask[seen] = True
        self.weight = nn.Parameter(weight.detach().clone(), requires_grad=False)
        if shift is not None:
            if not isinstance(shift, torch.Tensor) or shift.shape != (D,):
                raise ValueError(f"shift: expected a ({D},) tensor")
            shift = shift.detach().to(weight.dtype).clone()
        self.register_buffer("shift", shift)
        if center is not None:
            if not isinstance(center, torch.Tensor) or center.shape != (D,):
                raise ValueError(f"center: expected a ({D},) tensor")
            center = center.detach().to(weight.dtype).clone()
            if not bool(torch.isfinite(center).all()) or float(center.norm()) == 0.0:
                raise ValueError("center: expected a finite, non-zero vector")
            center = center / center.norm()
        self.register_buffer("center", center)
        if isinstance(seen_offset, bool) or not isinstance(seen_offset, (int, float)) or \
                not math.isfinite(seen_offset):
            raise ValueError(f"seen_offset: expected a finite number, got {seen_offset!r}")
        self.seen_offset = float(seen_offset)
        self.scale = float(scale)
        self.class_names = names
        self.seen_classes = torch.sort(seen).values
        self.unseen_classes = (~mask).nonzero().flatten()
        self.metadata = dict(metadata or {})
        self.backend = backend

    @property
    def num_classes(self) -> int:
        return self.weight.shape[0]

    @property
    def in_features(self) -> int:
        return self.weight.shape[1]

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, num_classes={self.num_classes} "
            f"({self.seen_classes.numel()} base + {self.unseen_classes.numel()} new), "
            f"scale={self.scale}, shift={'yes' if self.shift is not None else 'no'}, "
            f"centred={'yes' if self.center is not None else 'no'}"
            + (f", seen_offset={self.seen_offset:g}" if self.seen_offset else "")
        )

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """(N, D) features -> Pi_c (normalize(x) + shift), in the weight's dtype and device."""
        if not isinstance(x, torch.Tensor) or x.dim() != 2 or x.shape[1] != self.in_features:
            raise ValueError(f"x: expected an (N, {self.in_features}) tensor")
        x = F.normalize(x.to(device=self.weight.device, dtype=self.weight.dtype), dim=1)
        if self.shift is not None:
            x = x + self.shift
        return x if self.center is None else project_out(x, self.center)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, D) raw features -> (N, C_all) logits."""
        logits = _ops.cosine_logits(self.prepare(x), self.weight, self.scale,
                                    backend=self.backend)
        if self.seen_offset:
            logits = logits.index_add(
                1, self.seen_classes.to(logits.device),
                logits.new_full((logits.shape[0], self.seen_classes.numel()), -self.seen_offset))
        return logits

    @torch.no_grad()
    def predict(self, x: torch.Tensor, chunk: int = 65536) -> torch.Tensor:
        """(N,) int64 argmax class indices of the logits (with ``seen_offset`` when set)."""
        out = [self(x[s : s + chunk]).argmax(1) for s in range(0, x.shape[0], chunk)]
        return torch.cat(out) if out else torch.empty(0, dtype=torch.int64)

    def as_cosine(self) -> CosineClassifier:
        """The prototypes as a plain `CosineClassifier` (drops the input shift, centre and
        seen_offset)."""
        return CosineClassifier(self.weight.detach(), self.scale, backend=self.backend)
