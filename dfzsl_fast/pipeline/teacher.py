"""`Teacher`: the black-box base classifier of DFZSL, used as a cosine classifier.

DFZSL (method.md 2.3) only ever queries the base-class classifier through its cosine logits
cos(x, W_c) / T with T = 1: the rows of the weight matrix are class directions, their norms and
any bias are ignored. This wrapper holds such a matrix, checks it once, and answers `logits` and
`predict`. Its outputs are detached: the teacher is a black box that gives no gradients.
"""

from __future__ import annotations

import math
import warnings

import torch
from torch import nn

from ..nn import CosineClassifier
from ..ops.cosine import cosine_logits, cosine_topk

__all__ = ["Teacher", "as_teacher"]


class Teacher:
    """A frozen cosine classifier: logits = cos(x, W) / temperature.

    Args:
        weight: (C_s, d) float tensor of class directions (copied and detached; any row norm,
            CPU or CUDA). NaN/Inf entries and all-zero rows are errors.
        temperature: finite T > 0; DFZSL publishes T = 1.

    Differentiable: no. `logits` and `predict` run under `torch.no_grad()`.

    Backends: the fused cosine ops (`dfzsl_fast.cosine_logits`, `cosine_topk`) pick native C++
    on CPU, CUDA/Triton on GPU, or the PyTorch reference (`backend` argument).

    Example:
        >>> teacher = Teacher(torch.randn(40, 512))
        >>> teacher.logits(torch.randn(8, 512)).shape
        torch.Size([8, 40])
    """

    def __init__(
        self, weight: torch.Tensor, temperature: float = 1.0, backend: str | None = None
    ) -> None:
        if isinstance(weight, nn.Module):
            raise TypeError(
                "weight: expected a (C_s, d) tensor; use Teacher.from_linear for an nn.Linear "
                "or as_teacher for any supported classifier"
            )
        if not isinstance(weight, torch.Tensor):
            raise TypeError(f"weight: expected a (C_s, d) tensor, got {type(weight).__name__}")
        if not weight.is_floating_point():
            raise TypeError(f"weight: expected a floating-point tensor, got dtype {weight.dtype}")
        if weight.dim() != 2 or weight.shape[0] < 1 or weight.shape[1] < 1:
            raise ValueError(
                f"weight: expected shape (C_s, d) with C_s, d >= 1, got {tuple(weight.shape)}"
            )
        if weight.device.type == "meta":
            raise ValueError("weight: a meta tensor holds no values")
        w = weight.detach().clone()
        finite = torch.isfinite(w).all(dim=1)
        if not bool(finite.all()):
            i = int((~finite).nonzero()[0, 0])
            raise ValueError(f"weight: row {i} contains NaN or Inf (a corrupted classifier?)")
        zero = (w == 0).all(dim=1)
        if bool(zero.any()):
            i = int(zero.nonzero()[0, 0])
            raise ValueError(f"weight: row {i} is all zero; its cosine logit is undefined")
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
            raise TypeError(f"temperature: expected a float, got {type(temperature).__name__}")
        t = float(temperature)
        if not math.isfinite(t) or t <= 0:
            raise ValueError(f"temperature: expected a finite number > 0, got {temperature!r}")
        self.weight = w
        self.temperature = t
        self.backend = backend
        self._cache: dict = {}

    # ----------------------------------------------------------------- constructors
    @classmethod
    def from_linear(
        cls,
        linear: nn.Linear,
        temperature: float = 1.0,
        ignore_bias: bool = False,
        backend: str | None = None,
    ) -> Teacher:
        """The rows of `linear.weight` as a cosine teacher.

        A cosine classifier has no bias. A bias that is None or all zero is fine; a nonzero bias
        is an error (ValueError) unless `ignore_bias=True`, in which case it is dropped with a
        `UserWarning`: the teacher's argmax, and hence the trusted-sample filter, may then differ
        from the Linear layer's own predictions.
        """
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear: expected an nn.Linear, got {type(linear).__name__}")
        bias = linear.bias
        if bias is not None and bool((bias.detach() != 0).any()):
            if not ignore_bias:
                raise ValueError(
                    "linear: has a nonzero bias, which a cosine teacher cannot represent; pass "
                    "ignore_bias=True to drop it (predictions may change) or give the weights"
                )
            warnings.warn(
                "Teacher.from_linear: dropping the nonzero bias of the nn.Linear; the teacher "
                "uses cos(x, W)/T only, so its predictions may differ from the layer's",
                UserWarning,
                stacklevel=2,
            )
        return cls(linear.weight, temperature, backend=backend)

    # ----------------------------------------------------------------- properties
    @property
    def num_classes(self) -> int:
        return self.weight.shape[0]

    @property
    def in_features(self) -> int:
        return self.weight.shape[1]

    def __repr__(self) -> str:
        return (
            f"Teacher(num_classes={self.num_classes}, in_features={self.in_features}, "
            f"temperature={self.temperature})"
        )

    def check_width(self, d: int, what: str = "features") -> None:
        """Raise a ValueError naming `what` unless `d` equals the teacher's width."""
        if d != self.in_features:
            raise ValueError(
                f"{what}: width {d} does not match the teacher's width {self.in_features} "
                "(the teacher's classifier was trained on features of another size?)"
            )

    def weight_like(self, x: torch.Tensor) -> torch.Tensor:
        """The weight on x's device and dtype (cached per device/dtype)."""
        w = self.weight
        if w.device == x.device and w.dtype == x.dtype:
            return w
        key = (x.device, x.dtype)
        if key not in self._cache:
            self._cache[key] = w.to(device=x.device, dtype=x.dtype)
        return self._cache[key]

    def _check_x(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x: expected an (N, d) tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"x: expected a floating-point tensor, got dtype {x.dtype}")
        if x.dim() != 2:
            raise ValueError(f"x: expected shape (N, {self.in_features}), got {tuple(x.shape)}")
        self.check_width(x.shape[1], "x")
        return x

    # ----------------------------------------------------------------- queries
    @torch.no_grad()
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """(N, d) -> (N, C_s) cosine logits cos(x, W) / T, detached, in x's dtype."""
        x = self._check_x(x).detach()
        return cosine_logits(x, self.weight_like(x), 1.0 / self.temperature, backend=self.backend)

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """(N, d) -> (N,) int64 argmax class (the temperature does not change it)."""
        x = self._check_x(x).detach()
        if x.shape[0] == 0:
            return torch.empty(0, dtype=torch.int64, device=x.device)
        _, idx = cosine_topk(x, self.weight_like(x), 1, 1.0, backend=self.backend)
        return idx[:, 0]


def as_teacher(obj: Teacher | torch.Tensor | nn.Linear | CosineClassifier, **kwargs) -> Teacher:
    """A `Teacher` from a Teacher (returned as is), a (C_s, d) weight tensor, an nn.Linear (see
    `Teacher.from_linear`) or a `CosineClassifier` (its rows; its scale is not used).

    Keyword arguments go to the constructor (`temperature`, `backend`, `ignore_bias` for Linear).
    """
    if isinstance(obj, Teacher):
        if kwargs:
            raise ValueError("as_teacher: options cannot be applied to an existing Teacher")
        return obj
    if isinstance(obj, nn.Linear):
        return Teacher.from_linear(obj, **kwargs)
    if isinstance(obj, CosineClassifier):
        return Teacher(obj.weight, **kwargs)
    return Teacher(obj, **kwargs)
