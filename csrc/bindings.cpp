// The one compiled module, dfzsl_fast._C. Importing it runs the TORCH_LIBRARY_IMPL blocks of
// csrc/cpu/*.cpp and csrc/cuda/*.cu (the kernels behind torch.ops.dfzsl_fast.*, whose schemas
// live in dfzsl_fast/ops/_library.py). The pybind11 functions below are build facts and raw,
// non-autograd entry points for tests and microbenchmarks; the public API never calls them.
#include <torch/extension.h>

#ifndef DFZSL_WITH_CUDA
#define DFZSL_WITH_CUDA 0
#endif

namespace dfzsl_fast {
pybind11::dict build_info_dict();
namespace cpu {
at::Tensor direction_normals_cpu(int64_t n, int64_t d, int64_t seed, int64_t offset);
}
#if DFZSL_WITH_CUDA
namespace cuda {
at::Tensor direction_normals_cuda(int64_t n, int64_t d, int64_t seed, int64_t offset);
}
#endif
}  // namespace dfzsl_fast

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "dfzsl_fast native kernels (CPU, and CUDA when built with it)";
  m.def("build_info", &dfzsl_fast::build_info_dict, "Facts about this build of dfzsl_fast._C");
  m.def("has_cuda", [] { return DFZSL_WITH_CUDA != 0; });
  m.def("direction_normals_cpu", &dfzsl_fast::cpu::direction_normals_cpu,
        "Raw vMF direction-stage normals (n, 4*ceil(d/4)) float32, for stream tests");
#if DFZSL_WITH_CUDA
  m.def("direction_normals_cuda", &dfzsl_fast::cuda::direction_normals_cuda,
        "Raw vMF direction-stage normals on the current CUDA device, for stream tests");
#endif
}
