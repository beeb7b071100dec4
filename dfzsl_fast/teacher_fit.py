"""A fast multinomial logistic-regression trainer: DFZSL's "black-box" teacher, without sklearn.

DFZSL's teacher (method.md 2.2) is sklearn ``LogisticRegression(C=0.316, solver="lbfgs",
max_iter=1000, fit_intercept=False)`` on raw (unnormalised) base-class CLIP features. This module
minimises the same objective with full-batch L-BFGS (SciPy's L-BFGS-B driver, as sklearn; the
loss and gradient are computed by PyTorch, on CPU or GPU, in chunks):

    J(W, b) = (1/N) sum_i CE(x_i W^T + b, y_i) + ||W||^2 / (2 C N)

(sklearn's ``C * sum_i CE + ||W||^2 / 2`` divided by C N; same minimiser, the intercept is not
penalised). Convergence: max |grad J| <= tol, as sklearn's ``tol`` on its scaled objective.

The issue also asks for a reusable trainer for users who have features (issue 4, item 1): this is
it; :mod:`dfzsl_fast.world` uses it for the simulated teacher.

Example:
    >>> res = fit_logistic_regression(x_train, y_train, C=0.316)
    >>> res.weight.shape            # (K, d), rows in the order of res.classes
    >>> pred = res.predict(x_test)  # original labels
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["LogisticRegressionResult", "fit_logistic_regression"]


@dataclass
class LogisticRegressionResult:
    """A fitted multinomial logistic regression.

    Attributes:
        weight: (K, d) float32 weights, one row per class of ``classes``.
        bias: (K,) float32 intercepts, or None (``fit_intercept=False``, DFZSL's choice).
        classes: (K,) int64 sorted original labels; row k of ``weight`` is class ``classes[k]``.
        n_iter: L-BFGS iterations run.
        converged: whether max |grad| <= tol was reached within ``max_iter``.
        loss: final value of the objective J.
    """

    weight: torch.Tensor
    bias: torch.Tensor | None
    classes: torch.Tensor
    n_iter: int
    converged: bool
    loss: float

    def decision_function(self, x: torch.Tensor) -> torch.Tensor:
        """Raw logits x W^T + b: (N, d) -> (N, K), in ``weight``'s dtype and device."""
        x = torch.as_tensor(x).to(self.weight)
        out = x @ self.weight.T
        return out if self.bias is None else out + self.bias

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """(N,) int64 predicted original labels (argmax of the raw logits)."""
        idx = self.decision_function(x).argmax(dim=1)
        return self.classes.to(idx.device)[idx]


def _labels_to_index(y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    classes, idx = torch.unique(y, sorted=True, return_inverse=True)
    return classes, idx


def fit_logistic_regression(
    features: Any,
    labels: Any,
    *,
    C: float = 0.316,
    max_iter: int = 1000,
    tol: float = 1e-4,
    fit_intercept: bool = False,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    chunk_size: int = 65536,
    history_size: int = 20,
) -> LogisticRegressionResult:
    """Fit an L2-regularised multinomial logistic regression with full-batch L-BFGS.

    The optimiser state (K*d float64 numbers) lives on the host; every loss/gradient evaluation
    is one pass of matrix products over the data on ``device``.

    Args:
        features: (N, d) float features (tensor or array), used as given (DFZSL: raw features).
        labels: (N,) integer labels (any values; at least 2 distinct).
        C: inverse regularisation strength, sklearn's convention (DFZSL: 0.316).
        max_iter: maximum L-BFGS iterations (sklearn's ``max_iter``).
        tol: stop when the largest absolute gradient entry of J is <= tol.
        fit_intercept: learn an unpenalised bias (DFZSL: False).
        device: where to fit (default: the features' device).
        dtype: compute dtype (float32 default; float64 for a tight sklearn comparison).
        chunk_size: rows per forward/backward chunk, bounding memory at chunk_size x K.
        history_size: L-BFGS memory (``maxcor``).

    Returns:
        :class:`LogisticRegressionResult` (weights returned in float32 on ``device``).

    Raises:
        ValueError: shape mismatch, N = 0, fewer than 2 classes, non-finite features, bad C.

    Differentiable: no (a fitting routine).
    """
    x = (
        features.detach()
        if isinstance(features, torch.Tensor)
        else torch.as_tensor(np.asarray(features))
    )
    y = labels.detach() if isinstance(labels, torch.Tensor) else torch.as_tensor(np.asarray(labels))
    if x.ndim != 2:
        raise ValueError(f"`features` must be (N, d), got shape {tuple(x.shape)}")
    if y.ndim != 1 or y.numel() != x.shape[0]:
        raise ValueError(f"`labels` must be (N,) with N = {x.shape[0]}, got {tuple(y.shape)}")
    if x.shape[0] == 0:
        raise ValueError("`features` is empty")
    if y.dtype.is_floating_point or y.dtype == torch.bool:
        raise ValueError(f"`labels` must be integers, got {y.dtype}")
    if not (C > 0 and np.isfinite(C)):
        raise ValueError(f"`C` must be finite and > 0, got {C!r}")
    if max_iter < 1:
        raise ValueError(f"`max_iter` must be >= 1, got {max_iter}")
    if chunk_size < 1:
        raise ValueError(f"`chunk_size` must be >= 1, got {chunk_size}")
    dev = torch.device(device) if device is not None else x.device
    x = x.to(dev, dtype)
    if not bool(torch.isfinite(x).all()):
        raise ValueError("`features` contains NaN or Inf")
    classes, yi = _labels_to_index(y.to(dev).long())
    K = classes.numel()
    if K < 2:
        raise ValueError(f"`labels` must hold at least 2 classes, got {K}")
    N, d = x.shape

    n_w = K * d
    n_p = n_w + (K if fit_intercept else 0)
    reg = 1.0 / (2.0 * C * N)

    def fun(theta: np.ndarray) -> tuple[float, np.ndarray]:
        p = torch.from_numpy(theta).to(dev, dtype).requires_grad_(True)
        W = p[:n_w].view(K, d)
        b = p[n_w:] if fit_intercept else None
        total = 0.0
        with torch.enable_grad():
            for s in range(0, N, chunk_size):
                logits = x[s : s + chunk_size] @ W.T
                if b is not None:
                    logits = logits + b
                part = F.cross_entropy(logits, yi[s : s + chunk_size], reduction="sum") / N
                part.backward()
                total += float(part.detach())
        w64 = theta[:n_w]
        loss = total + reg * float(w64 @ w64)
        grad = p.grad.detach().to("cpu", torch.float64).numpy().copy()
        grad[:n_w] += 2.0 * reg * w64
        return loss, grad

    from scipy.optimize import minimize

    res = minimize(
        fun,
        np.zeros(n_p, dtype=np.float64),
        method="L-BFGS-B",
        jac=True,
        options={
            "maxiter": int(max_iter),
            "maxcor": int(history_size),
            "maxls": 50,
            "gtol": float(tol),
            "ftol": 64 * np.finfo(float).eps,
        },
    )
    theta = torch.from_numpy(res.x)
    grad_max = float(np.abs(res.jac).max()) if res.jac is not None else float("inf")
    weight = theta[:n_w].view(K, d).to(dev, torch.float32)
    bias = theta[n_w:].to(dev, torch.float32) if fit_intercept else None
    return LogisticRegressionResult(
        weight=weight,
        bias=bias,
        classes=classes,
        n_iter=int(res.nit),
        converged=grad_max <= tol,
        loss=float(res.fun),
    )
