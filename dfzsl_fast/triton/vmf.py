"""Triton kernel of vMF sampling: the op `dfzsl_fast::vmf_sample_triton`.

Same contract as `dfzsl_fast::vmf_sample` (dfzsl_fast/ops/vmf.py):

    vmf_sample_triton(mu, kappa, labels, seed, offset, mode) -> (x, w, q)

Math (Wood 1994; same as csrc/include/dfzsl/vmf.h and dfzsl_fast/reference/vmf.py):

1. w stage, on the host side of the op in float64: w = mu^T x is drawn by Wood's rejection
   sampler, `reference.vmf.sample_w(kappa[labels], d, mode, gen)` with
   `gen = reference.vmf.reference_generator(seed, offset, device)`. It returns w and
   rho = sqrt(1 - w^2) (computed without cancellation). This is N scalars with masked retry
   rounds: cheap next to the (N, d) direction stage, and data-dependent, so left to PyTorch.
   mode 0 is the exact envelope, mode 1 the published s-vae/DFZSL envelope (biased; parity only).
2. direction stage, one fused Triton kernel `_vmf_direction_kernel`: with g ~ N(0, I_d),
       s = g^T mu,  p = g - s mu,  r = |p|,  x = w mu + rho p / r,  q = s / r
   (r = 0, probability zero, is replaced by 1 as in the reference). p / r is uniform on the unit
   sphere of the tangent space of mu, so x ~ vMF(mu, kappa). q is saved for the shared backward
   (`ops.vmf.vmf_backward`: pathwise gradient in mu with w and g held fixed; none to kappa).

Random numbers: the normals come from Triton's Philox (`tl.randn`), NOT from the Philox streams
of the native C++/CUDA kernels nor from torch's generator used by the reference, so this op is
statistically equal to the other backends, never bit-equal to them. Element (row i, column j)
uses the Philox counter (offset + i) * D_PAD + j, with D_PAD = BLOCK_D = max(16, the smallest
power of two >= d), so every row is an independent stream and a row's normals depend
only on (seed, offset + i, d). The key is a 31-bit integer derived from the 64-bit `seed` by a
splitmix64 finaliser (`_triton_seed`). The w stage draws from torch's generator for
(seed, offset), so chunked calls do not reproduce one big call (unlike the native kernels).

Layouts (the op's inputs are not required to be contiguous: strides are passed explicitly):
  mu      (C, d) float32, unit rows (sample_vmf normalises them)
  kappa   (C,)   float64, >= 0
  labels  (N,)   int64 in [0, C)
  x       (N, d) float32 (mu's dtype), contiguous output
  w, q    (N,)   float64, contiguous outputs; w = mu^T x, q = (g^T mu) / |p|

Thread-to-data mapping: a 1-D grid of cdiv(N, BLOCK_N) programs; program b owns rows
[b BLOCK_N, (b+1) BLOCK_N) and the whole padded row (BLOCK_D columns) of each, so the two row
reductions (s and |p|) stay in registers. Compute in float32; 64-bit row/element offsets.

CPU tensors run only under the Triton interpreter: TRITON_INTERPRET=1 must be set before this
module is imported (Triton reads it when `@triton.jit` decorates).
"""

from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl

from .. import _backend
from ..autograd import vmf as ag
from ..reference import vmf as ref
from . import devices as _devices

__all__ = ["vmf_sample_triton", "MAX_BLOCK_D"]

MAX_BLOCK_D = 8192  # largest padded row the kernel keeps in registers (d <= 8192)
_MIN_BLOCK_D = 16
_MASK64 = (1 << 64) - 1


@triton.jit(do_not_specialize=["seed", "counter_base"])
def _vmf_direction_kernel(
    mu_ptr,
    labels_ptr,
    w_ptr,
    rho_ptr,
    x_ptr,
    q_ptr,
    N,
    D,
    seed,
    counter_base,
    stride_mu_c,
    stride_mu_d,
    stride_lab,
    stride_w,
    stride_rho,
    stride_x_n,
    stride_x_d,
    stride_q,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    pid = tl.program_id(0)
    rows = pid.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N).to(tl.int64)
    cols = tl.arange(0, BLOCK_D).to(tl.int64)
    row_mask = rows < N
    col_mask = cols < D
    mask = row_mask[:, None] & col_mask[None, :]

    lab = tl.load(labels_ptr + rows * stride_lab, mask=row_mask, other=0).to(tl.int64)
    mu = tl.load(
        mu_ptr + lab[:, None] * stride_mu_c + cols[None, :] * stride_mu_d, mask=mask, other=0.0
    ).to(tl.float32)
    w = tl.load(w_ptr + rows * stride_w, mask=row_mask, other=0.0).to(tl.float32)
    rho = tl.load(rho_ptr + rows * stride_rho, mask=row_mask, other=0.0).to(tl.float32)

    # Philox counter of element (i, j): (offset + i) * BLOCK_D + j; counter_base = offset * BLOCK_D.
    counters = counter_base + rows[:, None] * BLOCK_D + cols[None, :]
    g = tl.randn(seed, counters)
    g = tl.where(mask, g, 0.0)

    s = tl.sum(g * mu, axis=1)
    p = g - s[:, None] * mu
    # Second Gram-Schmidt pass: in float32, p keeps a component along mu of about eps |g|, which
    # is large next to |p| when g is nearly parallel to mu (d = 2: ~0.1% of rows off the sphere
    # by up to 1e-3). Removing it once more leaves x unit to float32 rounding.
    t = tl.sum(p * mu, axis=1)
    p = p - t[:, None] * mu
    s = s + t
    r = tl.sqrt(tl.sum(p * p, axis=1))
    r = tl.where(r > 0.0, r, 1.0)
    x = w[:, None] * mu + (rho / r)[:, None] * p
    q = s / r

    tl.store(
        x_ptr + rows[:, None] * stride_x_n + cols[None, :] * stride_x_d,
        x.to(x_ptr.dtype.element_ty),
        mask=mask,
    )
    tl.store(q_ptr + rows * stride_q, q.to(q_ptr.dtype.element_ty), mask=row_mask)


_INTERPRETED = type(_vmf_direction_kernel).__name__ == "InterpretedFunction"


def _triton_seed(seed: int) -> int:
    """31-bit Philox key for tl.randn from a 64-bit seed (splitmix64 finaliser, deterministic)."""
    z = (int(seed) + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    z ^= z >> 31
    return z >> 33  # top 31 bits: a non-negative int32


def _block_d(d: int) -> int:
    if d > MAX_BLOCK_D:
        raise ValueError(
            f"vmf_sample_triton: d = {d} exceeds the Triton kernel's limit of {MAX_BLOCK_D} "
            "columns; use backend='native' or 'torch'"
        )
    return max(_MIN_BLOCK_D, triton.next_power_of_2(d))


def _launch_config(block_d: int) -> tuple[int, int]:
    """(BLOCK_N, num_warps): about 4096 elements per program on a GPU, more under the interpreter
    (where each program costs a Python-level pass, so fewer, larger programs are faster)."""
    tile = 32768 if _INTERPRETED else 4096
    block_n = max(1, min(tile // block_d, 256 if _INTERPRETED else 64))
    elems = block_n * block_d
    num_warps = 4 if elems <= 2048 else (8 if elems <= 4096 else 16)
    return block_n, num_warps


def _check_inputs(mu: torch.Tensor, kappa: torch.Tensor, labels: torch.Tensor) -> None:
    torch._check(
        mu.dim() == 2, lambda: f"vmf_sample_triton: mu must be (C, d), got {tuple(mu.shape)}"
    )
    torch._check(
        mu.dtype == torch.float32,
        lambda: (
            "vmf_sample_triton: mu must be float32 (the kernel computes in float32), "
            f"got {mu.dtype}"
        ),
    )
    torch._check(
        kappa.dim() == 1 and kappa.shape[0] == mu.shape[0],
        lambda: f"vmf_sample_triton: kappa must be ({mu.shape[0]},), got {tuple(kappa.shape)}",
    )
    torch._check(
        kappa.dtype == torch.float64,
        lambda: f"vmf_sample_triton: kappa must be float64, got {kappa.dtype}",
    )
    torch._check(
        labels.dim() == 1 and labels.dtype == torch.int64,
        lambda: (
            "vmf_sample_triton: labels must be (N,) int64, "
            f"got {tuple(labels.shape)} {labels.dtype}"
        ),
    )
    torch._check(
        mu.device == kappa.device == labels.device,
        lambda: (
            "vmf_sample_triton: mu, kappa and labels must be on one device, got "
            f"{mu.device}, {kappa.device}, {labels.device}"
        ),
    )


@torch.library.custom_op("dfzsl_fast::vmf_sample_triton", mutates_args=())
def vmf_sample_triton(
    mu: torch.Tensor,
    kappa: torch.Tensor,
    labels: torch.Tensor,
    seed: int,
    offset: int,
    mode: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Triton kernel of `dfzsl_fast::vmf_sample` (see the module docstring).

    Args:
        mu: (C, d) float32 unit mean directions. kappa: (C,) float64 >= 0.
        labels: (N,) int64 class of each row. seed: 64-bit seed. offset: first row's stream
        index (>= 0). mode: 0 exact envelope, 1 reference-compatible (biased) envelope.

    Returns:
        x (N, d) float32 unit vectors, w (N,) float64 = mu^T x, q (N,) float64 = (g^T mu)/|p|.
    """
    _check_inputs(mu, kappa, labels)
    if mode not in (0, 1):
        raise ValueError(f"vmf_sample_triton: mode must be 0 (exact) or 1 (reference), got {mode}")
    if not 0 <= offset <= 2**63 - labels.shape[0]:
        raise ValueError(
            f"vmf_sample_triton: offset must be in [0, 2^63 - N] (row streams offset + i < 2^63), "
            f"got {offset}"
        )
    device = mu.device
    if device.type == "cpu" and not _INTERPRETED:
        raise RuntimeError(
            "vmf_sample_triton: CPU tensors need the Triton interpreter; set TRITON_INTERPRET=1 "
            "before importing dfzsl_fast"
        )
    n, d = labels.shape[0], mu.shape[1]
    block_d = _block_d(d)
    x = torch.empty(n, d, dtype=mu.dtype, device=device)
    q = torch.empty(n, dtype=torch.float64, device=device)
    if n == 0:
        return x, torch.empty(n, dtype=torch.float64, device=device), q

    gen = ref.reference_generator(seed, offset, device)
    w, rho = ref.sample_w(kappa[labels], d, mode, gen)

    block_n, num_warps = _launch_config(block_d)
    # offset * BLOCK_D modulo 2^64, as a signed int64 (Philox counters wrap around).
    base = (int(offset) * block_d) & _MASK64
    base = base - (1 << 64) if base >= (1 << 63) else base
    grid = (triton.cdiv(n, block_n),)
    ctx = torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()
    with ctx:
        _vmf_direction_kernel[grid](
            mu,
            labels,
            w,
            rho,
            x,
            q,
            n,
            d,
            _triton_seed(seed),
            base,
            mu.stride(0),
            mu.stride(1),
            labels.stride(0),
            w.stride(0),
            rho.stride(0),
            x.stride(0),
            x.stride(1),
            q.stride(0),
            BLOCK_N=block_n,
            BLOCK_D=block_d,
            num_warps=num_warps,
        )
    return x, w, q


@vmf_sample_triton.register_fake
def _vmf_sample_triton_fake(mu, kappa, labels, seed, offset, mode):
    _check_inputs(mu, kappa, labels)
    n = labels.shape[0]
    return (
        mu.new_empty(n, mu.shape[1]),
        mu.new_empty(n, dtype=torch.float64),
        mu.new_empty(n, dtype=torch.float64),
    )


vmf_sample_triton.register_autograd(ag.backward, setup_context=ag.setup_context)


def _d_reasons(d: int | None = None, **_) -> list[str]:
    if d is not None and d > MAX_BLOCK_D:
        return [f"d = {d} exceeds the Triton kernel's limit of {MAX_BLOCK_D} columns"]
    return []


_DEVS, _NOTES = _devices((torch.float32,))
_backend.register(
    "vmf_sample", "triton", torch.ops.dfzsl_fast.vmf_sample_triton, devices=_DEVS, notes=_NOTES,
    reason_fn=_d_reasons,
)
