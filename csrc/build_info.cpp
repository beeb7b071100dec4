// Facts about this build, compiled in (not a side file) so that a stale or foreign _C is detected.
#include <torch/extension.h>

#include <string>

#ifndef DFZSL_WITH_CUDA
#define DFZSL_WITH_CUDA 0
#endif
#ifndef DFZSL_TORCH_VERSION
#define DFZSL_TORCH_VERSION "unknown"
#endif
#ifndef DFZSL_CUDA_VERSION
#define DFZSL_CUDA_VERSION ""
#endif
#ifndef DFZSL_CUDA_ARCHS
#define DFZSL_CUDA_ARCHS ""
#endif

namespace dfzsl_fast {

pybind11::dict build_info_dict() {
  pybind11::dict d;
  d["with_cuda"] = static_cast<bool>(DFZSL_WITH_CUDA);
  d["torch_version"] = std::string(DFZSL_TORCH_VERSION);
  d["cuda_version"] = std::string(DFZSL_CUDA_VERSION);
  d["cuda_archs"] = std::string(DFZSL_CUDA_ARCHS);
#if defined(_OPENMP)
  d["openmp"] = true;
#else
  d["openmp"] = false;
#endif
  d["compiler"] = std::string(__VERSION__);
  d["cpu_kernels"] = pybind11::make_tuple(
      "vmf_sample", "vmf_sample_out", "vmf_logit_mse", "cosine_logits", "cosine_logits_backward",
      "cosine_cross_entropy", "cosine_cross_entropy_backward", "cosine_topk", "cosine_logit_mse",
      "tfvaegan_synthesize", "gather_rows");
#if DFZSL_WITH_CUDA
  d["cuda_kernels"] = pybind11::make_tuple("vmf_sample", "vmf_sample_out");
#else
  d["cuda_kernels"] = pybind11::tuple();
#endif
  return d;
}

}  // namespace dfzsl_fast
