"""Autograd of `dfzsl_fast::vmf_sample`, shared by the dispatcher op (dfzsl_fast/ops/vmf.py) and
the Triton custom op (dfzsl_fast/triton/vmf.py): the pathwise (reparameterised) gradient in mu
with w and the Gaussian g held fixed. No gradient flows to kappa: differentiating through Wood's
rejection step needs the Naesseth et al. (2017) correction, which we do not implement.
"""

from __future__ import annotations

import torch

__all__ = ["vmf_backward", "setup_context", "backward"]


def vmf_backward(grad_x, mu, labels, x, w, q):
    """Gradient of sum(grad_x * x) with respect to the unit means mu.

    With g fixed, x = w mu + rho v, v = p/r, p = g - s mu, s = g^T mu, r = |p|, rho = sqrt(1-w^2):
    dv = -(v^T dmu) mu - q (mu^T dmu) mu - q dmu + q v (v^T dmu), with q = s/r. Writing u = rho v =
    x - w mu, the per-row gradient is
        w G - (G^T mu) u - q rho (G^T mu) mu - q rho G + (q/rho) (G^T u) u,
    summed into the rows of mu by label.

    Args:
        grad_x: (N, d) upstream gradient. mu: (C, d). labels: (N,) int64. x: (N, d).
        w, q: (N,) float64 from the forward.

    Returns:
        (C, d) gradient in mu's dtype.
    """
    dt = mu.dtype
    G = grad_x.to(dt)
    mu_rows = mu[labels]
    wd = w.to(dt).unsqueeze(1)
    rho64 = torch.sqrt((1.0 - w * w).clamp_min(0.0))
    rho = rho64.to(dt).unsqueeze(1)
    qd = q.to(dt).unsqueeze(1)
    q_over_rho = torch.where(rho64 > 0, q / rho64.clamp_min(1e-300), torch.zeros_like(q))
    q_over_rho = q_over_rho.to(dt).unsqueeze(1)
    u = x.to(dt) - wd * mu_rows
    g_mu = (G * mu_rows).sum(1, keepdim=True)
    g_u = (G * u).sum(1, keepdim=True)
    rows = wd * G - g_mu * u - qd * rho * g_mu * mu_rows - qd * rho * G + q_over_rho * g_u * u
    return torch.zeros_like(mu).index_add_(0, labels, rows)


def setup_context(ctx, inputs, output):
    mu, kappa, labels, seed, offset, mode = inputs
    x, w, q = output
    ctx.save_for_backward(mu, labels, x, w, q)
    ctx.mark_non_differentiable(w, q)


def backward(ctx, grad_x, grad_w, grad_q):
    mu, labels, x, w, q = ctx.saved_tensors
    grad_mu = None
    if ctx.needs_input_grad[0] and grad_x is not None:
        grad_mu = vmf_backward(grad_x, mu, labels, x, w, q)
    return grad_mu, None, None, None, None, None


