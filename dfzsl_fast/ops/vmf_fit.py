"""`dfzsl_fast.vmf_logit_mse`: the fused stage-1 step (sampler + cosine-logit MSE + gradient).

One optimiser step of DFZSL's vMF-mean fit (method.md 2.3, `pipeline.fit_vmf_means`) needs the
loss and its gradient in the mean directions mu of

    x, _ = sample_vmf(mu, kappa, n_per_class=nsample, seed=seed, offset=offset)
    loss = cosine_logit_mse(x, mu, w_teacher, scale_s, scale_t)

with the gradient reaching mu both through the reparameterised samples and through the student
weights. The op `dfzsl_fast::vmf_logit_mse(mu, kappa, w_teacher, nsample, seed, offset, mode,
scale_s, scale_t, eps) -> (loss, grad_mu)` returns both at once:

- "native" (C++ CPU, csrc/cpu/vmf_logit_mse_cpu.cpp): draws the same samples as the native
  `vmf_sample` (the same row sampler and Philox streams) tile by tile and never holds the (N, d)
  samples or the (N, C) logits; everything the step needs is a quadratic form in the samples, so
  it runs two N x d x d GEMMs instead of the composed path's three N x d x C ones plus the
  sampler's backward (the derivation is in the kernel's header comment).
- "torch" (also the dispatcher's default kernel): the composition itself, `sample_vmf` +
  `cosine_logit_mse` + `torch.autograd.grad`, with those two ops routed as `backend` says. In
  float64 on the CPU with the native sampler it is the oracle of the tests.

No Triton kernel (the Triton sampler draws other streams, so it could not match the native
samples; the CUDA path runs the composition on the CUDA sampler).
"""

from __future__ import annotations

import math

import torch

from .. import _backend, _load  # noqa: F401  (_load fills the backend table)
from . import (
    _checks,
    _library,  # noqa: F401  (defines the schemas)
)
from .cosine import cosine_logit_mse
from .vmf import MAX_STREAM, WOOD_B_MODES, _check_kappa, _seed_arg, sample_vmf

__all__ = ["vmf_logit_mse", "composed_vmf_logit_mse"]

_OP = "vmf_logit_mse"
_MODE_NAMES = {v: k for k, v in WOOD_B_MODES.items()}
_DTYPES = (torch.float32, torch.float64)


# ---------------------------------------------------------------- fake, default kernel, table
@torch.library.register_fake("dfzsl_fast::vmf_logit_mse")
def _vmf_logit_mse_fake(mu, kappa, w_teacher, nsample, seed, offset, mode, scale_s, scale_t, eps):
    torch._check(mu.dim() == 2, lambda: "vmf_logit_mse: mu must be (C, d)")
    return mu.new_empty(()), torch.empty_like(mu)


def composed_vmf_logit_mse(
    mu, kappa, w_teacher, nsample, seed, offset, mode, scale_s, scale_t, eps, backend=None
):
    """The unfused step: sample_vmf + cosine_logit_mse + autograd (the op's "torch" kernel).

    Same arguments as the op (`mode` as in `WOOD_B_MODES`), plus `backend`: where the two
    composed ops run (None: their automatic choice, so the native sampler where it is loaded).

    Returns:
        (loss, grad_mu): () loss and (C, d) gradient, both in mu's dtype, detached.
    """
    with torch.enable_grad():
        m = mu.detach().requires_grad_(True)
        x, _ = sample_vmf(
            m, kappa, n_per_class=nsample, seed=seed, offset=offset,
            wood_b=_MODE_NAMES[int(mode)], backend=backend, check_inputs=False,
        )
        loss = cosine_logit_mse(
            x, m, w_teacher, scale_s, scale_t, eps, backend=backend, check_inputs=False
        )
        (grad,) = torch.autograd.grad(loss, m)
    return loss.detach(), grad


@torch.library.register_kernel("dfzsl_fast::vmf_logit_mse", "default")
def _vmf_logit_mse_default(mu, kappa, w_teacher, nsample, seed, offset, mode, scale_s, scale_t,
                           eps):
    return composed_vmf_logit_mse(
        mu, kappa, w_teacher, nsample, seed, offset, mode, scale_s, scale_t, eps
    )


_backend.register(
    _OP, "torch", composed_vmf_logit_mse, devices={"cpu": _DTYPES, "cuda": _DTYPES}
)


# ------------------------------------------------------------------------------------ public API
def _check_rows(t: torch.Tensor, name: str, allow_zero: bool) -> None:
    """NaN/Inf rows (and zero rows unless allowed) are a ValueError naming the row."""
    with torch.no_grad():
        amax = t.abs().amax(dim=1)
        bad = ~torch.isfinite(amax) if allow_zero else ~torch.isfinite(amax) | (amax == 0)
        if bool(bad.any()):
            row = int(bad.nonzero()[0, 0])
            what = "contains NaN or Inf" if not math.isfinite(float(amax[row])) else (
                "has zero norm; a mean direction must be nonzero"
            )
            raise ValueError(f"{name}: row {row} {what}")


def vmf_logit_mse(
    mu: torch.Tensor,
    kappa,
    w_teacher: torch.Tensor,
    nsample: int,
    *,
    seed: int | None = None,
    offset: int = 0,
    scale_s: float = 1.0,
    scale_t: float = 1.0,
    eps: float = 1e-12,
    wood_b: str = "exact",
    generator: torch.Generator | None = None,
    backend: str | None = None,
    check_inputs: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Loss and mu-gradient of one stage-1 step, without materialising samples or logits.

    Equals, to float rounding,

        m = mu.detach().requires_grad_()
        x, _ = sample_vmf(m, kappa, n_per_class=nsample, seed=seed, offset=offset, wood_b=wood_b)
        loss = cosine_logit_mse(x, m, w_teacher, scale_s, scale_t, eps)
        grad_mu, = torch.autograd.grad(loss, m)

    i.e. N = C * nsample samples, class-major (row i of class i // nsample, random stream
    offset + i), the mean over the N x C entries of (scale_s cos(x, mu) - scale_t cos(x, W))^2
    with the teacher detached, and the gradient through the samples (reparameterised; no
    gradient to kappa) and the student weights.

    Args:
        mu: (C, d) mean directions, C >= 1, d >= 2, float32/float64 (float16/bfloat16 computed in
            float32), any nonzero norm; CPU or CUDA. Read as a value (detached).
        kappa: scalar or (C,) concentrations >= 0.
        w_teacher: (C, d) teacher weights, same dtype and device as mu.
        nsample: samples per class, >= 1.
        seed: 64-bit seed (None: drawn from `generator` or torch's default generator).
        offset: stream of the first row, 0 <= offset <= 2^63 - N.
        scale_s, scale_t: finite logit scales of student and teacher (fit_vmf_means: 1 and 1/T).
        eps: normalisation floor of the cosine logits (see `cosine_logits`).
        wood_b: "exact" or "reference" (see `sample_vmf`).
        generator: where to draw the seed from when `seed` is None.
        backend: "auto" (default), "native" (C++ CPU, fused) or "torch" (the composition, whose
            two ops then run on `backend`).
        check_inputs: reject NaN/Inf and zero rows of mu and NaN/Inf rows of w_teacher (one
            read of each; one host sync on CUDA).

    Returns:
        (loss, grad_mu): () loss and (C, d) gradient in mu's dtype.

    Differentiable: no (it returns the gradient; use it as `mu.grad`).

    Example:
        >>> mu, wt = torch.randn(40, 512), torch.randn(40, 512)
        >>> loss, grad = dfzsl_fast.vmf_logit_mse(mu, 228.7, wt, 50, seed=0, offset=0)
        >>> grad.shape
        torch.Size([40, 512])
    """
    if not isinstance(wood_b, str) or wood_b not in WOOD_B_MODES:
        raise ValueError(f"wood_b: expected 'exact' or 'reference', got {wood_b!r}")
    if not isinstance(check_inputs, bool):
        raise TypeError(f"check_inputs: expected True or False, got {type(check_inputs).__name__}")
    mu = _checks.check_matrix(mu, "mu", "C")
    C, d = mu.shape
    if C < 1:
        raise ValueError(f"mu: expected at least one class (C >= 1), got shape {tuple(mu.shape)}")
    if d < 2:
        raise ValueError(f"mu: expected d >= 2 (samples live on S^(d-1)), got d = {d}")
    w_teacher = _checks.check_matrix(w_teacher, "w_teacher", "C")
    if w_teacher.shape != mu.shape:
        raise ValueError(
            f"w_teacher: expected mu's shape {tuple(mu.shape)}, got {tuple(w_teacher.shape)}"
        )
    if w_teacher.device != mu.device:
        raise ValueError(f"w_teacher: expected device {mu.device} (mu's), got {w_teacher.device}")
    if w_teacher.dtype != mu.dtype:
        raise TypeError(f"w_teacher: expected dtype {mu.dtype} (mu's), got {w_teacher.dtype}")
    nsample = _checks.check_int(nsample, "nsample", low=1)
    N = C * nsample
    offset = _checks.check_int(offset, "offset", low=0)
    if offset > MAX_STREAM - N:
        raise ValueError(
            f"offset: expected 0 <= offset <= 2^63 - N = {MAX_STREAM - N} (row streams are "
            f"offset + i < 2^63), got {offset}"
        )
    cdt = _checks.compute_dtype(mu.dtype)
    eps = _checks.check_eps(eps, mu.dtype, d)
    # every squared difference <= (|s_s| + |s_t|)^2, summed over N*C entries (as cosine_logit_mse)
    bound = min(
        math.sqrt(float(torch.finfo(mu.dtype).max) / 2),
        math.sqrt(float(torch.finfo(cdt).max) / (2 * N * C)),
    )
    scale_s = _checks.check_scale(scale_s, "scale_s", bound, mu.dtype, "squared logit differences")
    scale_t = _checks.check_scale(
        scale_t, "scale_t", bound - abs(scale_s), mu.dtype, "squared logit differences"
    )
    k = _check_kappa(kappa, C, mu.device)
    seed = _seed_arg(seed, generator)
    mu = mu.detach()
    w_teacher = w_teacher.detach()
    if check_inputs and not _checks.is_tracing(mu, w_teacher):
        _check_rows(mu, "mu", allow_zero=False)
        _check_rows(w_teacher, "w_teacher", allow_zero=True)

    name, fn = _backend.select(_OP, mu.device, cdt, backend, d=d)
    args = (
        mu.to(cdt).contiguous(), k, w_teacher.to(cdt).contiguous(), nsample, seed, offset,
        WOOD_B_MODES[wood_b], scale_s, scale_t, eps,
    )
    if name == "torch":  # the composition, its two ops routed as this call asked
        loss, grad = composed_vmf_logit_mse(*args, backend=backend)
    else:
        loss, grad = fn(*args)
    return loss.to(mu.dtype), grad.to(mu.dtype)
