"""`dfzsl_fast.sample_vmf`: exact batched von Mises-Fisher sampling, routed to a backend.

The op `dfzsl_fast::vmf_sample(mu, kappa, labels, seed, offset, mode) -> (x, w, q)` has a C++
CPU kernel and a CUDA kernel in `_C` (same Philox streams, so the same samples on both to
rounding), a Triton kernel (`dfzsl_fast::vmf_sample_triton`: same distribution; Triton's Philox for the
direction, torch's generator for w),
and the pure-PyTorch reference as its "default" kernel. All share one backward formula
(`vmf_backward`): the pathwise (reparameterised) gradient in mu with w and the Gaussian g held
fixed. No gradient flows to kappa: differentiating through Wood's rejection step needs the
Naesseth et al. (2017) correction, which we do not implement.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .. import _backend
from ..reference import vmf as ref
from . import _library  # noqa: F401  (defines the schemas)

__all__ = ["sample_vmf", "vmf_backward", "WOOD_B_MODES"]

WOOD_B_MODES = {"exact": 0, "reference": 1}
_OP = "vmf_sample"


# ---------------------------------------------------------------- fake, default kernel, autograd
@torch.library.register_fake("dfzsl_fast::vmf_sample")
def _vmf_sample_fake(mu, kappa, labels, seed, offset, mode):
    torch._check(mu.dim() == 2, lambda: "vmf_sample: mu must be (C, d)")
    n = labels.shape[0]
    return (
        mu.new_empty(n, mu.shape[1]),
        mu.new_empty(n, dtype=torch.float64),
        mu.new_empty(n, dtype=torch.float64),
    )


@torch.library.register_fake("dfzsl_fast::vmf_sample_out")
def _vmf_sample_out_fake(mu, kappa, labels, seed, offset, mode, x, w, q):
    return None


@torch.library.register_kernel("dfzsl_fast::vmf_sample", "default")
def _vmf_sample_default(mu, kappa, labels, seed, offset, mode):
    with torch.no_grad():
        return ref.vmf_sample(mu, kappa, labels, seed, offset, mode)


@torch.library.register_kernel("dfzsl_fast::vmf_sample_out", "default")
def _vmf_sample_out_default(mu, kappa, labels, seed, offset, mode, x, w, q):
    xx, ww, qq = _vmf_sample_default(mu, kappa, labels, seed, offset, mode)
    x.copy_(xx)
    w.copy_(ww)
    q.copy_(qq)


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


def _setup_context(ctx, inputs, output):
    mu, kappa, labels, seed, offset, mode = inputs
    x, w, q = output
    ctx.save_for_backward(mu, labels, x, w, q)
    ctx.mark_non_differentiable(w, q)


def _backward(ctx, grad_x, grad_w, grad_q):
    mu, labels, x, w, q = ctx.saved_tensors
    grad_mu = None
    if ctx.needs_input_grad[0] and grad_x is not None:
        grad_mu = vmf_backward(grad_x, mu, labels, x, w, q)
    return grad_mu, None, None, None, None, None


torch.library.register_autograd(
    "dfzsl_fast::vmf_sample", _backward, setup_context=_setup_context
)


# ---------------------------------------------------------------------------- argument checking
def _as_tensor(value, name: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    try:
        return torch.as_tensor(value)
    except Exception as exc:
        raise TypeError(f"{name}: expected a tensor or array-like, got {type(value).__name__}") from exc


def _check_mu(mu) -> torch.Tensor:
    mu = _as_tensor(mu, "mu")
    if not mu.is_floating_point():
        raise TypeError(f"mu: expected a floating-point tensor, got dtype {mu.dtype}")
    if mu.dim() != 2:
        raise ValueError(f"mu: expected shape (C, d), got {tuple(mu.shape)}")
    if mu.shape[1] < 2:
        raise ValueError(f"mu: expected d >= 2 (samples live on S^(d-1)), got d = {mu.shape[1]}")
    with torch.no_grad():
        finite = torch.isfinite(mu).all(dim=1)
        if not bool(finite.all()):
            row = int((~finite).nonzero()[0, 0])
            raise ValueError(f"mu: row {row} contains NaN or Inf")
        norms = mu.double().norm(dim=1)
        if mu.shape[0] and not bool((norms > 0).all()):
            row = int((norms <= 0).nonzero()[0, 0])
            raise ValueError(f"mu: row {row} has zero norm; a mean direction must be nonzero")
    return mu


def _check_kappa(kappa, C: int, device) -> torch.Tensor:
    if isinstance(kappa, (int, float)) and not isinstance(kappa, bool):
        k = torch.full((C,), float(kappa), dtype=torch.float64, device=device)
    else:
        k = _as_tensor(kappa, "kappa")
        if k.dtype == torch.bool or k.is_complex():
            raise TypeError(f"kappa: expected real numbers, got dtype {k.dtype}")
        if k.requires_grad:
            raise ValueError(
                "kappa: no gradient flows to kappa (the rejection step is not reparameterised); "
                "pass kappa.detach()"
            )
        k = k.detach().to(device=device, dtype=torch.float64)
        if k.dim() == 0:
            k = k.expand(C).contiguous()
        elif k.shape != (C,):
            raise ValueError(f"kappa: expected a scalar or shape ({C},), got {tuple(k.shape)}")
    bad = ~(torch.isfinite(k) & (k >= 0))
    if bool(bad.any()):
        i = int(bad.nonzero()[0, 0])
        raise ValueError(f"kappa: expected finite values >= 0, got kappa[{i}] = {float(k[i])}")
    return k.contiguous()


def _make_labels(n_per_class, labels, C: int, device) -> torch.Tensor:
    if (n_per_class is None) == (labels is None):
        raise ValueError("give exactly one of n_per_class and labels")
    if labels is not None:
        lab = _as_tensor(labels, "labels")
        if lab.dtype.is_floating_point or lab.dtype == torch.bool or lab.is_complex():
            raise TypeError(f"labels: expected an integer tensor, got dtype {lab.dtype}")
        if lab.dim() != 1:
            raise ValueError(f"labels: expected shape (N,), got {tuple(lab.shape)}")
        lab = lab.to(device=device, dtype=torch.int64)
        if lab.numel() and (int(lab.min()) < 0 or int(lab.max()) >= C):
            raise ValueError(
                f"labels: expected class indices in [0, {C}), got range "
                f"[{int(lab.min())}, {int(lab.max())}]"
            )
        return lab.contiguous()
    if isinstance(n_per_class, bool):
        raise TypeError("n_per_class: expected an int or (C,) integer counts, got bool")
    if isinstance(n_per_class, int):
        if n_per_class < 0:
            raise ValueError(f"n_per_class: expected >= 0, got {n_per_class}")
        counts = torch.full((C,), n_per_class, dtype=torch.int64, device=device)
    else:
        counts = _as_tensor(n_per_class, "n_per_class")
        if counts.dtype.is_floating_point or counts.dtype == torch.bool:
            raise TypeError(f"n_per_class: expected integer counts, got dtype {counts.dtype}")
        if counts.shape != (C,):
            raise ValueError(
                f"n_per_class: expected an int or shape ({C},), got {tuple(counts.shape)}"
            )
        counts = counts.to(device=device, dtype=torch.int64)
        if counts.numel() and int(counts.min()) < 0:
            raise ValueError("n_per_class: counts must be >= 0")
    return torch.repeat_interleave(torch.arange(C, device=device), counts)


def _draw_seed(generator: torch.Generator | None) -> int:
    # From the given or the default CPU generator, so torch.manual_seed makes runs repeatable.
    return int(torch.randint(0, 2**62, (), generator=generator).item())


_NATIVE_DTYPES = {
    "cpu": (torch.float32, torch.float64),
    "cuda": (torch.float32, torch.float64),
}


def _dtype_reasons(device: torch.device, dtype: torch.dtype) -> dict:
    native = [] if dtype in _NATIVE_DTYPES.get(device.type, ()) else [f"no native kernel for {dtype}"]
    triton = [] if dtype == torch.float32 else [f"Triton kernel computes float32 only, got {dtype}"]
    return {"native": native, "triton": triton}


# ------------------------------------------------------------------------------------ public API
def sample_vmf(
    mu,
    kappa,
    n_per_class: int | Sequence[int] | torch.Tensor | None = None,
    labels: torch.Tensor | Sequence[int] | None = None,
    *,
    seed: int | None = None,
    offset: int = 0,
    generator: torch.Generator | None = None,
    dtype: torch.dtype | None = None,
    out: torch.Tensor | None = None,
    backend: str | None = None,
    wood_b: str = "exact",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw exact von Mises-Fisher samples for many classes in one call.

    Args:
        mu: (C, d) mean directions, any float dtype, CPU or CUDA; normalised inside. A zero,
            NaN or Inf row is an error naming the row. Differentiable (see below).
        kappa: concentration(s) >= 0: a scalar or (C,), one per class. Not differentiable.
        n_per_class: an int, or (C,) integer counts: samples per class, class-major order
            (all samples of class 0, then class 1, ...). Exclusive with `labels`.
        labels: (N,) class index of each sample to draw, in any order. Exclusive with
            `n_per_class`.
        seed: 64-bit seed. Default: drawn from `generator` (or torch's default generator, so
            `torch.manual_seed` makes runs repeatable).
        offset: index of the first row in the seed's stream. The native kernels give row i the
            stream (seed, offset + i), so chunked calls with matching offsets reproduce one big call.
        generator: where to draw the seed from when `seed` is None.
        dtype: output dtype (default: mu's dtype; float32 for half inputs).
        out: optional (N, d) tensor to write the samples into (not with a mu that needs grad).
        backend: "auto" (default), "native", "triton" or "torch" (see dfzsl_fast._backend).
        wood_b: "exact" (default), or "reference" to reproduce the envelope of the published
            DFZSL / s-vae-pytorch sampler, which is NOT a vMF for 11 <= kappa << d (its mean
            cosine at d = 512 is about (4 kappa - (d-1)) / (4 kappa + (d-1))); parity only.

    Returns:
        (samples, labels): (N, d) unit vectors and their (N,) int64 labels.

    Differentiable: in mu, by the reparameterised path (w and the Gaussian held fixed); no
    gradient to kappa.

    Example:
        >>> mu = torch.randn(200, 512)
        >>> x, y = dfzsl_fast.sample_vmf(mu, 1000.0, n_per_class=500, seed=0)
        >>> x.shape, y.shape
        (torch.Size([100000, 512]), torch.Size([100000]))
    """
    if wood_b not in WOOD_B_MODES:
        raise ValueError(f"wood_b: expected 'exact' or 'reference', got {wood_b!r}")
    mode = WOOD_B_MODES[wood_b]
    mu = _check_mu(mu)
    C, d = mu.shape
    device = mu.device
    k = _check_kappa(kappa, C, device)
    lab = _make_labels(n_per_class, labels, C, device)
    N = lab.numel()
    if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
        raise ValueError(f"offset: expected an int >= 0, got {offset!r}")
    if seed is None:
        seed = _draw_seed(generator)
    elif not isinstance(seed, int) or isinstance(seed, bool):
        raise TypeError(f"seed: expected an int, got {type(seed).__name__}")
    seed = int(seed) % 2**64
    seed = seed - 2**64 if seed >= 2**63 else seed  # the schema's int is signed 64-bit

    out_dtype = dtype if dtype is not None else mu.dtype
    if not out_dtype.is_floating_point:
        raise TypeError(f"dtype: expected a floating-point dtype, got {out_dtype}")
    compute_dtype = out_dtype if out_dtype in (torch.float32, torch.float64) else torch.float32
    if out is not None:
        if not isinstance(out, torch.Tensor):
            raise TypeError("out: expected a tensor")
        if tuple(out.shape) != (N, d):
            raise ValueError(f"out: expected shape ({N}, {d}), got {tuple(out.shape)}")
        if out.device != device:
            raise ValueError(f"out: expected device {device}, got {out.device}")
        if dtype is not None and out.dtype != dtype:
            raise ValueError(f"out: dtype {out.dtype} differs from dtype={dtype}")
        if torch.is_grad_enabled() and mu.requires_grad:
            raise ValueError("out: cannot be used when mu requires grad (use the returned tensor)")
        out_dtype = out.dtype
        compute_dtype = out_dtype if out_dtype in (torch.float32, torch.float64) else torch.float32

    mu_c = mu.to(compute_dtype)
    mu_hat = mu_c / mu_c.norm(dim=1, keepdim=True)
    name = _backend.resolve(backend, _OP, device, _dtype_reasons(device, compute_dtype))

    if N == 0:
        x = out if out is not None else torch.empty(0, d, dtype=out_dtype, device=device)
        return x, lab

    if name == "torch":
        x, _, _ = ref.vmf_sample(mu_hat, k, lab, seed, offset, mode)
    elif name == "native":
        if (
            out is not None
            and out.dtype == compute_dtype
            and out.is_contiguous()
            and not mu_hat.requires_grad
        ):
            w = torch.empty(N, dtype=torch.float64, device=device)
            q = torch.empty_like(w)
            torch.ops.dfzsl_fast.vmf_sample_out(mu_hat.contiguous(), k, lab, seed, offset, mode, out, w, q)
            return out, lab
        x, _, _ = torch.ops.dfzsl_fast.vmf_sample(mu_hat.contiguous(), k, lab, seed, offset, mode)
    else:  # triton
        from ..triton import vmf as tvmf

        x, _, _ = tvmf.vmf_sample_triton(mu_hat.contiguous(), k, lab, seed, offset, mode)

    if out is not None:
        out.copy_(x)
        return out, lab
    if x.dtype != out_dtype:
        x = x.to(out_dtype)
    return x, lab


