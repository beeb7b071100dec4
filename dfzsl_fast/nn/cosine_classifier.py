"""`CosineClassifier`: a cosine-similarity classification head over the fused cosine ops."""

from __future__ import annotations

import math

import torch
from torch import nn

from .. import _backend
from ..ops import _checks
from ..ops import cosine as _ops

__all__ = ["CosineClassifier"]


def _check_finite(t: torch.Tensor, name: str) -> None:
    """NaN/Inf in weights is an error (one read; these are one-off calls, not the hot path)."""
    if t.device.type == "meta" or _checks.is_tracing(t) or t.numel() == 0:
        return
    if not t.is_floating_point():
        return
    if not bool(torch.isfinite(t.detach()).all()):
        raise ValueError(f"{name}: contains NaN or Inf")


class CosineClassifier(nn.Module):
    """logits = scale * normalize(x) @ normalize(weight).T, a drop-in classification head.

    Args:
        weights: (C, d) float tensor of class directions (copied; need not be unit norm).
        scale: finite logit scale (a float, not learned).
        learnable: whether `weight` is a trainable nn.Parameter (requires_grad); kept by `extend`.
        eps: normalisation floor, as in `torch.nn.functional.normalize`.
        backend: backend passed to every op (None: the usual routing).
        check_inputs: passed to every op: NaN/Inf checks of the inputs (see `cosine_logits`).

    Raises:
        TypeError / ValueError naming the argument for non-float, non-2-D, empty, NaN/Inf
        weights, a non-finite or overflowing scale, a bad eps or backend name.

    Differentiable: forward and loss in the input and (if learnable) the weights.

    Example:
        >>> head = CosineClassifier(torch.randn(200, 512), scale=16.0)
        >>> loss = head.loss(torch.randn(32, 512), torch.randint(0, 200, (32,)))
        >>> head.predict(torch.randn(4, 512)).shape
        torch.Size([4])
    """

    def __init__(
        self,
        weights: torch.Tensor,
        scale: float,
        learnable: bool = True,
        eps: float = 1e-12,
        backend: str | None = None,
        *,
        check_inputs: bool = True,
    ) -> None:
        super().__init__()
        _checks.check_matrix(weights, "weights", "C")
        if weights.shape[0] < 1:
            raise ValueError(f"weights: expected at least one class, got {tuple(weights.shape)}")
        _check_finite(weights, "weights")
        self.scale = _checks.check_scale(
            scale, "scale", float(torch.finfo(weights.dtype).max) / 2, weights.dtype, "logits"
        )
        self.eps = _checks.check_eps(eps, weights.dtype, weights.shape[1])
        if not isinstance(learnable, bool):
            raise TypeError(f"learnable: expected True or False, got {type(learnable).__name__}")
        if backend is not None:
            _backend.requested(backend)  # a bad name fails here, not at the first forward
        if not isinstance(check_inputs, bool):
            raise TypeError(
                f"check_inputs: expected True or False, got {type(check_inputs).__name__}"
            )
        self.learnable = learnable
        self.backend = backend
        self.check_inputs = check_inputs
        self.weight = nn.Parameter(weights.detach().clone(), requires_grad=self.learnable)

    @property
    def num_classes(self) -> int:
        return self.weight.shape[0]

    @property
    def in_features(self) -> int:
        return self.weight.shape[1]

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, num_classes={self.num_classes}, "
            f"scale={self.scale}, learnable={self.learnable}"
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, d) -> (N, C) cosine logits."""
        return _ops.cosine_logits(
            x, self.weight, self.scale, self.eps, backend=self.backend,
            check_inputs=self.check_inputs,
        )

    def loss(
        self,
        x: torch.Tensor,
        target: torch.Tensor,
        logit_adjustment: torch.Tensor | None = None,
        reduction: str = "mean",
        label_smoothing: float = 0.0,
    ) -> torch.Tensor:
        """Fused cross-entropy of the logits (never materialised); see `cosine_cross_entropy`."""
        return _ops.cosine_cross_entropy(
            x, self.weight, target, self.scale, logit_adjustment, reduction, label_smoothing,
            self.eps, backend=self.backend, check_inputs=self.check_inputs,
        )

    @torch.no_grad()
    def predict(self, x: torch.Tensor, k: int = 1) -> torch.Tensor:
        """Predicted classes: (N,) int64 for k = 1, else (N, k) best first."""
        _, idx = _ops.cosine_topk(
            x, self.weight, k, self.scale, self.eps, backend=self.backend,
            check_inputs=self.check_inputs,
        )
        return idx[:, 0] if k == 1 else idx

    @torch.no_grad()
    def extend(self, new_weights: torch.Tensor) -> CosineClassifier:
        """Append classes (rows) in place; returns self.

        The `weight` Parameter is replaced by a new one (same learnability): re-create the
        optimizer, or add the new parameter to it, afterwards.
        """
        _checks.check_matrix(new_weights, "new_weights", "C_new")
        if new_weights.shape[1] != self.in_features:
            raise ValueError(
                f"new_weights: expected d = {self.in_features}, "
                f"got shape {tuple(new_weights.shape)}"
            )
        if new_weights.device.type == "meta" and self.weight.device.type != "meta":
            raise ValueError("new_weights: a meta tensor has no values")
        new = new_weights.detach().to(device=self.weight.device, dtype=self.weight.dtype)
        _check_finite(new, "new_weights")  # after the cast: a float64 1e300 is inf in float32
        self.weight = nn.Parameter(
            torch.cat([self.weight.detach(), new], 0), requires_grad=self.learnable
        )
        return self

    @classmethod
    def from_linear(
        cls,
        linear: nn.Linear,
        scale: float | None = None,
        learnable: bool = True,
        eps: float = 1e-12,
    ) -> CosineClassifier:
        """A cosine head with the rows of `linear.weight` as class directions.

        A cosine head has no bias: `linear.bias` must be None or all zero. `scale` defaults to
        the mean row norm of `linear.weight` (exact inverse of `to_linear` when the rows have
        equal norms).
        """
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear: expected an nn.Linear, got {type(linear).__name__}")
        _check_finite(linear.weight, "linear.weight")
        if linear.bias is not None:
            _check_finite(linear.bias, "linear.bias")
        if linear.bias is not None and bool((linear.bias != 0).any()):
            raise ValueError(
                "linear: has a nonzero bias; a cosine classifier has no bias "
                "(fold it elsewhere or construct the head from the weights)"
            )
        w = linear.weight.detach()
        if not w.is_floating_point():
            raise TypeError(f"linear.weight: expected a floating-point tensor, got {w.dtype}")
        if scale is None:
            scale = float(w.double().norm(dim=1).mean()) if w.shape[0] else 1.0
            if not math.isfinite(scale) or scale == 0.0:
                scale = 1.0
        return cls(w, scale, learnable=learnable, eps=eps)

    @torch.no_grad()
    def to_linear(self) -> nn.Linear:
        """nn.Linear(d, C, bias=False) with weight = scale * normalize(weight).

        On unit-norm inputs it reproduces this head's logits.
        """
        lin = nn.Linear(
            self.in_features, self.num_classes, bias=False,
            device=self.weight.device, dtype=self.weight.dtype,
        )
        w = torch.nn.functional.normalize(self.weight.detach(), dim=1, eps=self.eps)
        lin.weight.copy_(self.scale * w)
        return lin
