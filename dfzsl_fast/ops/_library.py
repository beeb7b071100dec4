"""The one place where the schemas of the `dfzsl_fast::*` ops are written.

Kernels register against these names: C++ (`TORCH_LIBRARY_IMPL(dfzsl_fast, CPU|CUDA, m)` in
csrc/), the pure-PyTorch "default" kernels (dfzsl_fast/reference, registered in ops/<op>.py), and
Triton custom ops (dfzsl_fast/triton/<op>.py, own names with a `_triton` suffix).
"""

from __future__ import annotations

import torch

from .. import _backend

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

# The fused stage-1 step (ops/vmf_fit.py): nsample vMF samples per class of mu (class-major, row
# i from the stream (seed, offset + i)), the cosine-logit MSE against the teacher, and its
# gradient in mu through both the samples and the student weights -> (loss (), grad_mu (C, d)).
VMF_LOGIT_MSE = (
    "vmf_logit_mse(Tensor mu, Tensor kappa, Tensor w_teacher, int nsample, int seed, int offset,"
    " int mode, float scale_s, float scale_t, float eps) -> (Tensor, Tensor)"
)
LIB.define(VMF_LOGIT_MSE)

# ------------------------------------------------------------------------- cosine classifier ops
# x (N, d), w (C, d): rows normalised as r / max(|r|, eps) (torch.nn.functional.normalize).
# reduction: 0 none, 1 mean, 2 sum. compute_grad: the forward also returns the gradients of the
# (mean/sum) loss in x and w (Liger-style; the backward scales them), else empty (0, d) tensors.
# compute_grad_x=False (cross-entropy only): the gradient in x is skipped and returned empty, for
# a loss whose features do not require grad (a classifier trained on fixed features: one GEMM of
# three, the normalisation backward and an (N, d) allocation saved per step).
# rows (M,) int64 (cross-entropy only): the loss is that of the batch x[rows] (N = M above;
# target, lse and grad_x are per batch row), which a kernel may read row by row instead of
# gathering it first (the native CPU kernel does: a training step's batch is never copied).
COSINE_LOGITS = "cosine_logits(Tensor x, Tensor w, float scale, float eps) -> Tensor"
COSINE_LOGITS_BACKWARD = (
    "cosine_logits_backward(Tensor grad, Tensor x, Tensor w, float scale, float eps)"
    " -> (Tensor, Tensor)"
)
# -> (loss () or (N,), lse (N,) of the adjusted logits, grad_x, grad_w)
COSINE_CROSS_ENTROPY = (
    "cosine_cross_entropy(Tensor x, Tensor w, Tensor target, Tensor? logit_adjustment,"
    " float scale, float eps, float label_smoothing, int reduction, bool compute_grad,"
    " bool compute_grad_x=True, Tensor? rows=None) -> (Tensor, Tensor, Tensor, Tensor)"
)
# grad_loss (N,): per-row weight of each row's loss.
COSINE_CROSS_ENTROPY_BACKWARD = (
    "cosine_cross_entropy_backward(Tensor grad_loss, Tensor x, Tensor w, Tensor target,"
    " Tensor? logit_adjustment, Tensor lse, float scale, float eps, float label_smoothing)"
    " -> (Tensor, Tensor)"
)
# -> (scores (N, k), indices (N, k) int64)
COSINE_TOPK = "cosine_topk(Tensor x, Tensor w, int k, float scale, float eps) -> (Tensor, Tensor)"
# -> (loss (), grad_x, grad_w_student)
COSINE_LOGIT_MSE = (
    "cosine_logit_mse(Tensor x, Tensor w_student, Tensor w_teacher, float scale_s, float scale_t,"
    " float eps, bool compute_grad) -> (Tensor, Tensor, Tensor)"
)

LIB.define(COSINE_LOGITS)
LIB.define(COSINE_LOGITS_BACKWARD)
LIB.define(COSINE_CROSS_ENTROPY)
LIB.define(COSINE_CROSS_ENTROPY_BACKWARD)
LIB.define(COSINE_TOPK)
LIB.define(COSINE_LOGIT_MSE)

# ------------------------------------------------------------------------- generator synthesis
# TF-VAEGAN synthesis forward (reference/generator.py): cond (K, H) hoisted condition term,
# cond_index / class_ids / row_ids (N,) int64, the weights of G (z half), G's output layer, the
# decoder's hidden layer and F; noise drawn inside from Philox (seed, class_ids, row_ids).
# out_dtype: float32 / float16 / bfloat16 (/ float64 on the reference).
TFVAEGAN_SYNTHESIZE = (
    "tfvaegan_synthesize(Tensor cond, Tensor cond_index, Tensor class_ids, Tensor row_ids,"
    " Tensor w_z, Tensor w_out, Tensor b_out, Tensor w_dec, Tensor b_dec, Tensor w_fb1,"
    " Tensor b_fb1, Tensor w_fb2, Tensor b_fb2, int seed, float a1, bool feedback,"
    " ScalarType out_dtype) -> Tensor"
)
LIB.define(TFVAEGAN_SYNTHESIZE)

# A training batch's rows from several sources (synthesis/rows.py: features in memory and in
# memory-mapped shards): row i is sources[part[i]][local[i]], converted to dtype (float32 or
# float64 from float16/bfloat16/float32/float64 sources; int64 from int64). -> (n, D) or (n,).
GATHER_ROWS = "gather_rows(Tensor[] sources, Tensor part, Tensor local, ScalarType dtype) -> Tensor"
LIB.define(GATHER_ROWS)

#: Every op of the library, forward ops first (the backend table is declared in this order).
OPS = (
    "vmf_sample",
    "vmf_sample_out",
    "vmf_logit_mse",
    "cosine_logits",
    "cosine_logits_backward",
    "cosine_cross_entropy",
    "cosine_cross_entropy_backward",
    "cosine_topk",
    "cosine_logit_mse",
    "tfvaegan_synthesize",
    "gather_rows",
)
for _op in OPS:
    _backend.declare(_op, getattr(torch.ops.dfzsl_fast, _op))
