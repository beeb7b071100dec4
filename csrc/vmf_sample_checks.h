// Argument checks of dfzsl_fast::vmf_sample shared by the CPU and CUDA kernels (torch glue; each
// kernel adds its own device check). The Python wrapper validates first with friendlier
// messages; these guard direct torch.ops calls.
#pragma once

#include <torch/library.h>
#include <ATen/ATen.h>

namespace dfzsl_fast {

inline void check_vmf_sample_args(const at::Tensor& mu, const at::Tensor& kappa,
                                  const at::Tensor& labels) {
  TORCH_CHECK(mu.dim() == 2, "vmf_sample: expected mu of shape (C, d), got ", mu.sizes());
  TORCH_CHECK(mu.size(1) >= 2, "vmf_sample: expected d >= 2, got d = ", mu.size(1));
  TORCH_CHECK(mu.scalar_type() == at::kFloat || mu.scalar_type() == at::kDouble,
              "vmf_sample: expected mu float32 or float64, got ", mu.scalar_type());
  TORCH_CHECK(kappa.dim() == 1 && kappa.size(0) == mu.size(0),
              "vmf_sample: expected kappa of shape (", mu.size(0), ",), got ", kappa.sizes());
  TORCH_CHECK(kappa.scalar_type() == at::kDouble, "vmf_sample: expected kappa float64, got ",
              kappa.scalar_type());
  TORCH_CHECK(labels.dim() == 1 && labels.scalar_type() == at::kLong,
              "vmf_sample: expected labels (N,) int64, got ", labels.sizes(), " ",
              labels.scalar_type());
}

}  // namespace dfzsl_fast
