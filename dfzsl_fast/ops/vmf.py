"""`dfzsl_fast.sample_vmf`: exact batched von Mises-Fisher sampling, routed to a backend.

The op `dfzsl_fast::vmf_sample(mu, kappa, labels, seed, offset, mode) -> (x, w, q)` has a C++
CPU kernel and a CUDA kernel in `_C` (same Philox streams, so the same samples on both to
rounding; registered by `_extension`), a Triton kernel (`dfzsl_fast::vmf_sample_triton` in
triton/vmf.py: same distribution; Triton's Philox for the direction, torch's generator for w),
and the pure-PyTorch reference (reference/vmf.py) as its "default" kernel and "torch" backend.
All share one backward formula (autograd/vmf.py): the pathwise gradient in mu with w and the
Gaussian g held fixed; no gradient flows to kappa.

This module holds the fake kernels, the default-kernel and autograd registrations, the "torch"
entry of the backend table and the public wrapper with its argument checks.
"""

from __future__ import annotations

import numbers
import os
from collections.abc import Sequence

import torch

from .. import _backend, _load  # noqa: F401  (_load fills the backend table)
from ..autograd import vmf as ag
from ..autograd.vmf import vmf_backward
from ..reference import vmf as ref
from . import (
    _checks,
    _library,  # noqa: F401  (defines the schemas)
)

__all__ = ["sample_vmf", "vmf_backward", "WOOD_B_MODES", "MAX_STREAM"]

WOOD_B_MODES = {"exact": 0, "reference": 1}
#: Row i of a call uses the random stream offset + i; every stream index must be < MAX_STREAM
#: (a signed 64-bit int), i.e. offset + N <= MAX_STREAM, on every backend.
MAX_STREAM = 2**63
_OP = "vmf_sample"
_DTYPES = (torch.float32, torch.float64)


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


torch.library.register_autograd(
    "dfzsl_fast::vmf_sample", ag.backward, setup_context=ag.setup_context
)
# The "torch" backend: the reference, differentiable by torch's autograd.
_backend.register(_OP, "torch", ref.vmf_sample, devices={"cpu": _DTYPES, "cuda": _DTYPES})


# ---------------------------------------------------------------------------- argument checking
def _as_tensor(value, name: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (str, bytes)):
        raise TypeError(f"{name}: expected a tensor or array-like, got {type(value).__name__}")
    try:
        return torch.as_tensor(value)
    except Exception as exc:
        raise TypeError(
            f"{name}: expected a tensor or array-like, got {type(value).__name__}"
        ) from exc


def _check_mu(mu, check_inputs: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(mu, per-row max |mu| or None when values are not checked)."""
    mu = _as_tensor(mu, "mu")
    if not mu.is_floating_point():
        raise TypeError(
            "mu: expected a floating-point tensor (float16, bfloat16, float32 or float64), "
            f"got dtype {mu.dtype}"
        )
    if mu.dim() != 2:
        raise ValueError(f"mu: expected shape (C, d), got {tuple(mu.shape)}")
    if mu.shape[1] < 2:
        raise ValueError(f"mu: expected d >= 2 (samples live on S^(d-1)), got d = {mu.shape[1]}")
    if _checks.is_tracing(mu) or mu.shape[0] == 0:
        return mu, None
    with torch.no_grad():
        # one reduction serves three checks: NaN/Inf (amax propagates them), zero rows, and the
        # scale-safe normalisation below
        amax = mu.abs().amax(dim=1)
        if check_inputs:
            bad = ~torch.isfinite(amax) | (amax == 0)
            if bool(bad.any()):
                row = int(bad.nonzero()[0, 0])
                what = "has zero norm; a mean direction must be nonzero" if float(
                    amax[row]
                ) == 0 else "contains NaN or Inf"
                raise ValueError(f"mu: row {row} {what}")
    return mu, amax


def _check_kappa(kappa, C: int, device) -> torch.Tensor:
    if isinstance(kappa, numbers.Real) and not isinstance(kappa, bool):
        k = torch.full((C,), float(kappa), dtype=torch.float64, device=device)
    else:
        if isinstance(kappa, bool):
            raise TypeError("kappa: expected a real number or tensor, got bool")
        k = _as_tensor(kappa, "kappa")
        if k.dtype == torch.bool or k.is_complex():
            raise TypeError(f"kappa: expected real numbers, got dtype {k.dtype}")
        if k.requires_grad:
            raise ValueError(
                "kappa: no gradient flows to kappa (the rejection step is not reparameterised); "
                "pass kappa.detach()"
            )
        if k.device.type == "meta" and torch.device(device).type != "meta":
            raise ValueError("kappa: a meta tensor has no values; pass real concentrations")
        k = k.detach().to(device=device, dtype=torch.float64)
        if k.dim() == 0:
            k = k.expand(C).contiguous()
        elif k.shape != (C,):
            raise ValueError(f"kappa: expected a scalar or shape ({C},), got {tuple(k.shape)}")
    if k.device.type != "meta":
        bad = ~(torch.isfinite(k) & (k >= 0))
        if bool(bad.any()):
            i = int(bad.nonzero()[0, 0])
            raise ValueError(f"kappa: expected finite values >= 0, got kappa[{i}] = {float(k[i])}")
    return k.contiguous()


def _memory_bytes(device: torch.device) -> int | None:
    """Total memory of `device` (None: unknown or unlimited)."""
    try:
        if device.type == "cpu":
            return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        if device.type == "cuda":
            return torch.cuda.get_device_properties(device).total_memory
    except Exception:  # pragma: no cover
        return None
    return None


def _check_total(N: int, d: int, itemsize: int, device, name: str) -> None:
    """N samples of dimension d must be addressable and fit the device's memory."""
    if N * d >= 2**62:
        raise ValueError(f"{name}: N = {N} samples of d = {d} exceed 2^62 elements")
    need = N * (d * itemsize + 8 + 16)  # samples, labels, and the float64 w and q
    have = _memory_bytes(torch.device(device))
    if have is not None and need > have:
        raise ValueError(
            f"{name}: N = {N} samples of d = {d} need {need / 2**30:.3g} GiB, more than the "
            f"{have / 2**30:.3g} GiB of {device} memory; draw them in chunks (offset=)"
        )


def _make_labels(n_per_class, labels, C: int, d: int, itemsize: int, device) -> torch.Tensor:
    if (n_per_class is None) == (labels is None):
        raise ValueError("give exactly one of n_per_class and labels")
    if labels is not None:
        lab = _as_tensor(labels, "labels")
        if lab.dtype.is_floating_point or lab.dtype == torch.bool or lab.is_complex():
            raise TypeError(f"labels: expected an integer tensor, got dtype {lab.dtype}")
        if lab.dim() != 1:
            raise ValueError(f"labels: expected shape (N,), got {tuple(lab.shape)}")
        if lab.device.type == "meta" and torch.device(device).type != "meta":
            raise ValueError("labels: a meta tensor has no values; pass real class indices")
        _check_total(lab.numel(), d, itemsize, device, "labels")
        lab = lab.to(device=device, dtype=torch.int64)
        if lab.numel() and lab.device.type != "meta":
            lo, hi = (int(v) for v in torch.aminmax(lab))
            if lo < 0 or hi >= C:
                raise ValueError(
                    f"labels: expected class indices in [0, {C}), got range [{lo}, {hi}]"
                )
        return lab.contiguous()
    if isinstance(n_per_class, numbers.Integral) and not isinstance(n_per_class, bool):
        n = int(n_per_class)
        if n < 0:
            raise ValueError(f"n_per_class: expected >= 0, got {n}")
        _check_total(C * n, d, itemsize, device, "n_per_class")
        return torch.arange(C, device=device).repeat_interleave(n)
    if isinstance(n_per_class, bool):
        raise TypeError("n_per_class: expected an int or (C,) integer counts, got bool")
    counts = _as_tensor(n_per_class, "n_per_class")
    if counts.dtype.is_floating_point or counts.dtype == torch.bool or counts.is_complex():
        raise TypeError(f"n_per_class: expected integer counts, got dtype {counts.dtype}")
    if counts.shape != (C,):
        raise ValueError(f"n_per_class: expected an int or shape ({C},), got {tuple(counts.shape)}")
    if counts.device.type == "meta":
        raise ValueError("n_per_class: a meta tensor has no values; pass real counts")
    counts = counts.to(dtype=torch.int64)
    if counts.numel() and int(counts.min()) < 0:
        raise ValueError("n_per_class: counts must be >= 0")
    _check_total(int(counts.sum()), d, itemsize, device, "n_per_class")
    lab = torch.repeat_interleave(torch.arange(C, device=counts.device), counts)
    return lab.to(device)


def _seed_arg(seed, generator: torch.Generator | None) -> int:
    """The Philox key the ops take: `seed` (any int, taken mod 2^64) or, when None, one drawn
    from `generator`; as the schema's signed 64-bit int."""
    seed = _draw_seed(generator) if seed is None else _checks.check_int(seed, "seed")
    seed = int(seed) % 2**64
    return seed - 2**64 if seed >= 2**63 else seed


def _draw_seed(generator: torch.Generator | None) -> int:
    # From the given or the default CPU generator, so torch.manual_seed makes runs repeatable.
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator: expected a torch.Generator, got {type(generator).__name__}")
    return int(torch.randint(0, 2**62, (), generator=generator).item())


def _check_dtype(dtype) -> torch.dtype | None:
    if dtype is None:
        return None
    if not isinstance(dtype, torch.dtype):
        raise TypeError(
            f"dtype: expected a torch.dtype such as torch.float32, got {dtype!r} "
            f"({type(dtype).__name__})"
        )
    if not dtype.is_floating_point:
        raise TypeError(f"dtype: expected a real floating-point dtype, got {dtype}")
    return dtype


def _normalize_rows(mu: torch.Tensor, amax: torch.Tensor | None, dtype: torch.dtype):
    """Unit rows of mu in `dtype`, scale-safe: rows are divided by their max |entry| (so no row
    over- or underflows) before the norm is taken, in float64, and rounded to `dtype` once (the
    rows are then unit to `dtype`'s rounding, which the w of very concentrated samples sees)."""
    mu64 = mu.to(torch.float64)
    if amax is not None:
        mu64 = mu64 / amax.to(torch.float64).clamp_min(torch.finfo(torch.float64).tiny).unsqueeze(1)
    return (mu64 / torch.linalg.vector_norm(mu64, dim=1, keepdim=True)).to(dtype)


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
    check_inputs: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw exact von Mises-Fisher samples for many classes in one call.

    Args:
        mu: (C, d) mean directions, d >= 2, any real float dtype, CPU or CUDA (or meta: shapes
            only); normalised inside, scale-safely (any finite nonzero row, however large or
            small). A zero, NaN or Inf row is a ValueError naming the row. Differentiable.
        kappa: concentration(s) >= 0: a scalar or (C,), one per class. Not differentiable.
        n_per_class: an int, or (C,) integer counts: samples per class, class-major order
            (all samples of class 0, then class 1, ...). Exclusive with `labels`. A total that
            cannot fit the device's memory is a ValueError.
        labels: (N,) class index of each sample to draw, in any order. Exclusive with
            `n_per_class`.
        seed: 64-bit seed (any int; taken modulo 2^64). Default: drawn from `generator` (or
            torch's default generator, so `torch.manual_seed` makes runs repeatable).
        offset: index of the first row's random stream, 0 <= offset <= 2^63 - N (the same range
            on every backend). The native kernels give row i the stream (seed, offset + i), so
            chunked calls with matching offsets reproduce one big call.
        generator: where to draw the seed from when `seed` is None.
        dtype: output dtype, a real floating torch.dtype (default: mu's dtype). float16 and
            bfloat16 are computed in float32.
        out: optional (N, d) floating tensor to write the samples into (not with a mu that
            needs grad; not a leaf that requires grad).
        backend: "auto" (default), "native", "triton" or "torch" (see dfzsl_fast._backend).
        wood_b: "exact" (default), or "reference" to reproduce the envelope of the published
            DFZSL / s-vae-pytorch sampler, which is NOT a vMF for 11 <= kappa << d (its mean
            cosine at d = 512 is about (4 kappa - (d-1)) / (4 kappa + (d-1))); parity only.
        check_inputs: check mu for NaN/Inf and zero rows (one reduction over mu and one host
            sync; they are also what the scale-safe normalisation needs). With False, such rows
            give NaN samples.

    Returns:
        (samples, labels): (N, d) unit vectors (to the output dtype's rounding) and their (N,)
        int64 labels.

    Differentiable: in mu, by the reparameterised path (w and the Gaussian held fixed); no
    gradient to kappa.

    Example:
        >>> mu = torch.randn(200, 512)
        >>> x, y = dfzsl_fast.sample_vmf(mu, 1000.0, n_per_class=500, seed=0)
        >>> x.shape, y.shape
        (torch.Size([100000, 512]), torch.Size([100000]))
    """
    if not isinstance(wood_b, str) or wood_b not in WOOD_B_MODES:
        raise ValueError(f"wood_b: expected 'exact' or 'reference', got {wood_b!r}")
    if not isinstance(check_inputs, bool):
        raise TypeError(f"check_inputs: expected True or False, got {type(check_inputs).__name__}")
    mode = WOOD_B_MODES[wood_b]
    dtype = _check_dtype(dtype)
    mu, amax = _check_mu(mu, check_inputs)
    C, d = mu.shape
    device = mu.device
    out_dtype = dtype if dtype is not None else mu.dtype
    if out is not None:
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"out: expected a tensor, got {type(out).__name__}")
        if not out.is_floating_point():
            raise TypeError(f"out: expected a real floating-point tensor, got dtype {out.dtype}")
        if dtype is not None and out.dtype != dtype:
            raise ValueError(f"out: dtype {out.dtype} differs from dtype={dtype}")
        out_dtype = out.dtype
    compute_dtype = out_dtype if out_dtype in _DTYPES else torch.float32
    k = _check_kappa(kappa, C, device)
    lab = _make_labels(n_per_class, labels, C, d, torch.finfo(out_dtype).bits // 8, device)
    N = lab.numel()
    offset = _checks.check_int(offset, "offset", low=0)
    if offset > MAX_STREAM - N:
        raise ValueError(
            f"offset: expected 0 <= offset <= 2^63 - N = {MAX_STREAM - N} (row streams are "
            f"offset + i < 2^63), got {offset}"
        )
    seed = _seed_arg(seed, generator)

    if out is not None:
        if tuple(out.shape) != (N, d):
            raise ValueError(f"out: expected shape ({N}, {d}), got {tuple(out.shape)}")
        if out.device != device:
            raise ValueError(f"out: expected device {device}, got {out.device}")
        if out.requires_grad:
            raise ValueError("out: must not require grad (it is written in place)")
        if torch.is_grad_enabled() and mu.requires_grad:
            raise ValueError("out: cannot be used when mu requires grad (use the returned tensor)")

    name, fn = _backend.select(_OP, device, compute_dtype, backend, d=d)
    mu_hat = _normalize_rows(mu, amax, compute_dtype)

    if N == 0:
        x = out if out is not None else torch.empty(0, d, dtype=out_dtype, device=device)
        return x, lab

    if (
        name == "native"
        and out is not None
        and out.dtype == compute_dtype
        and out.is_contiguous()
        and not mu_hat.requires_grad
    ):
        w = torch.empty(N, dtype=torch.float64, device=device)
        q = torch.empty_like(w)
        torch.ops.dfzsl_fast.vmf_sample_out(
            mu_hat.contiguous(), k, lab, seed, offset, mode, out, w, q
        )
        return out, lab
    x, _, _ = fn(mu_hat.contiguous(), k, lab, seed, offset, mode)

    if out is not None:
        out.copy_(x)
        return out, lab
    if x.dtype != out_dtype:
        x = x.to(out_dtype)
    return x, lab

