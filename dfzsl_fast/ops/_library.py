"""The one place where the schemas of the `dfzsl_fast::*` ops are written.

Kernels register against these names: C++ (`TORCH_LIBRARY_IMPL(dfzsl_fast, CPU|CUDA, m)` in
csrc/), the pure-PyTorch "default" kernels (dfzsl_fast/reference, registered in ops/<op>.py), and
Triton custom ops (dfzsl_fast/triton/<op>.py, own names with a `_triton` suffix).
"""

from __future__ import annotations

import torch

LIB = torch.library.Library("dfzsl_fast", "FRAGMENT")

# x (N, d) in mu's dtype, w (N,) float64 = mu^T x, q (N,) float64 = (g^T mu)/|p| (for backward).
# mode: 0 exact Wood envelope, 1 the published s-vae/DFZSL envelope (biased; parity only).
VMF_SAMPLE = (
    "vmf_sample(Tensor mu, Tensor kappa, Tensor labels, int seed, int offset, int mode)"
    " -> (Tensor, Tensor, Tensor)"
)
VMF_SAMPLE_OUT = (
    "vmf_sample_out(Tensor mu, Tensor kappa, Tensor labels, int seed, int offset, int mode,"
    " Tensor(a!) x, Tensor(b!) w, Tensor(c!) q) -> ()"
)

LIB.define(VMF_SAMPLE)
LIB.define(VMF_SAMPLE_OUT)
