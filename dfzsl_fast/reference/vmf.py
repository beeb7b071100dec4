"""Reference (pure PyTorch) exact vMF sampler, batched over rows with per-row mean and kappa.

Same math as csrc/include/dfzsl/vmf.h (see its header comment for the derivation of the stable
acceptance test): Wood (1994) rejection for w = mu^T x in float64 with masked rounds over the
still-pending rows, then a direction drawn by projecting a standard normal off mu. It draws from
torch's generators, not from Philox, so it agrees with the native kernels in distribution, not
bit for bit.
"""

from __future__ import annotations

import math

import torch

from ..hashing import seeded_generator

__all__ = ["wood_constants", "sample_w", "direction", "vmf_sample", "reference_generator"]

LOG2 = math.log(2.0)


def wood_constants(d: int, kappa: torch.Tensor, mode: int) -> dict[str, torch.Tensor]:
    """Envelope constants for float64 kappa (any shape): b, and a, delta for mode 1 (reference)."""
    m = float(d - 1)
    S = torch.sqrt(4.0 * kappa * kappa + m * m)
    b_exact = m / (2.0 * kappa + S)
    if mode == 0:
        return {"b": b_exact}
    s = (kappa - 10.0).clamp(0.0, 1.0)
    b_app = torch.where(kappa > 0, m / (4.0 * kappa.clamp_min(1e-300)), torch.zeros_like(kappa))
    b = s * b_app + (1.0 - s) * b_exact
    a = (m + 2.0 * kappa + S) / 4.0
    delta = 4.0 * a * b / (1.0 + b) - m * math.log(m)
    return {"b": b, "a": a, "delta": delta}


def _gamma(alpha: float, n: int, gen: torch.Generator, device) -> torch.Tensor:
    """n draws of Gamma(alpha, 1), float64, by Marsaglia-Tsang with masked retry rounds."""
    boost = alpha < 1.0
    a = alpha + 1.0 if boost else alpha
    dd = a - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * dd)
    out = torch.empty(n, dtype=torch.float64, device=device)
    pending = torch.arange(n, device=device)
    while pending.numel() > 0:
        k = pending.numel()
        x = torch.randn(k, dtype=torch.float64, device=device, generator=gen)
        u = torch.rand(k, dtype=torch.float64, device=device, generator=gen)
        t = 1.0 + c * x
        v = t.clamp_min(1e-300) ** 3
        ok = (t > 0) & (torch.log(u) < 0.5 * x * x + dd - dd * v + dd * torch.log(v))
        out[pending[ok]] = dd * v[ok]
        pending = pending[~ok]
    if boost:
        u = torch.rand(n, dtype=torch.float64, device=device, generator=gen)
        out = out * u ** (1.0 / alpha)
    return out


def sample_w(kappa_rows: torch.Tensor, d: int, mode: int, gen: torch.Generator):
    """Wood's rejection sampler for w = mu^T x.

    Args:
        kappa_rows: (N,) float64 concentration of each row.
        d: dimension (>= 2).
        mode: 0 exact envelope, 1 the published (biased) s-vae/DFZSL envelope.
        gen: torch.Generator on kappa_rows' device.

    Returns:
        (w, rho): (N,) float64 each, rho = sqrt(1 - w^2) computed without cancellation.
    """
    n = kappa_rows.numel()
    device = kappa_rows.device
    m = float(d - 1)
    k = wood_constants(d, kappa_rows, mode)
    w = torch.empty(n, dtype=torch.float64, device=device)
    rho = torch.empty(n, dtype=torch.float64, device=device)
    pending = torch.arange(n, device=device)
    while pending.numel() > 0:
        cnt = pending.numel()
        g1 = _gamma(m / 2.0, cnt, gen, device)
        g2 = _gamma(m / 2.0, cnt, gen, device)
        z = g1 / (g1 + g2)
        log_u = torch.log(torch.rand(cnt, dtype=torch.float64, device=device, generator=gen))
        b = k["b"][pending]
        D = 1.0 - (1.0 - b) * z
        if mode == 0:
            lhs = m * (
                (1.0 - b) * (1.0 - 2.0 * z) / (2.0 * D) + torch.log1p(b) - LOG2 - torch.log(D)
            )
        else:
            t = 2.0 * k["a"][pending] * b / D
            lhs = m * torch.log(t) - t + k["delta"][pending]
        ok = lhs >= log_u
        idx = pending[ok]
        zo, Do, bo = z[ok], D[ok], b[ok]
        w[idx] = (1.0 - (1.0 + bo) * zo) / Do
        rho2 = 4.0 * bo * zo * (1.0 - zo) / (Do * Do)
        rho[idx] = torch.sqrt(rho2 if mode == 0 else rho2.clamp_min(1e-10))
        pending = pending[~ok]
    return w, rho


def direction(g: torch.Tensor, mu_rows: torch.Tensor, w: torch.Tensor, rho: torch.Tensor):
    """x = w mu + rho p/|p| with p = g - (g^T mu) mu (projected twice). Differentiable in mu_rows.

    Args:
        g: (N, d) standard normals; mu_rows: (N, d) unit means (same dtype);
        w, rho: (N,) float64.

    Returns:
        (x, q): (N, d) in g's dtype and (N,) float64 q = (g^T mu)/|p|.
    """
    s = (g * mu_rows).sum(1, keepdim=True)
    p = g - s * mu_rows
    # Second Gram-Schmidt pass (value only: t is 0 in exact arithmetic, so it carries no
    # gradient). In float32, p keeps a component along mu of about eps |g|, which is large next
    # to |p| when g is nearly parallel to mu (d = 2: ~0.1% of rows off the sphere by ~1e-3).
    t = (p * mu_rows).sum(1, keepdim=True).detach()
    p = p - t * mu_rows
    s = s + t
    r = p.norm(dim=1, keepdim=True)
    r = torch.where(r > 0, r, torch.ones_like(r))
    wd = w.to(g.dtype).unsqueeze(1)
    x = wd * mu_rows + (rho.to(g.dtype).unsqueeze(1) / r) * p
    q = (s / r).squeeze(1).detach().double()
    return x, q


def reference_generator(seed: int, offset: int, device) -> torch.Generator:
    """A torch.Generator for (seed, offset): the reference's stand-in for a Philox stream."""
    return seeded_generator(seed, offset, device)


def vmf_sample(mu: torch.Tensor, kappa: torch.Tensor, labels: torch.Tensor, seed: int,
               offset: int, mode: int):
    """Reference kernel of dfzsl_fast::vmf_sample.

    Args:
        mu: (C, d) unit mean directions, float32 or float64.
        kappa: (C,) float64, >= 0.
        labels: (N,) int64 in [0, C).
        seed, offset: stream selection (deterministic for a given pair).
        mode: 0 exact, 1 reference-compatible envelope.

    Returns:
        x (N, d) in mu's dtype, w (N,) float64 = mu^T x, q (N,) float64.
    """
    gen = reference_generator(seed, offset, mu.device)
    n, d = labels.numel(), mu.shape[1]
    w, rho = sample_w(kappa[labels], d, mode, gen)
    g = torch.randn(n, d, dtype=mu.dtype, device=mu.device, generator=gen)
    x, q = direction(g, mu[labels], w, rho)
    return x, w, q
