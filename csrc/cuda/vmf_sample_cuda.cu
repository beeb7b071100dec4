// CUDA glue of dfzsl_fast::vmf_sample: checks, per-class constants, launches (kernels, math,
// layouts and thread mapping in vmf_sample_kernel.cuh; the CPU twin is csrc/cpu/vmf_sample_cpu.cpp,
// whose checks and signatures this file mirrors).
//
// Layout: mu (C, d) unit rows, float32 or float64; kappa (C,) float64; labels (N,) int64, all on
// one CUDA device. Outputs x (N, d) in mu's dtype, w (N,) float64, q (N,) float64, on that device.
// Host work per call: kappa and the label range are read back (one synchronisation each, as the
// CPU kernel's checks need them), and the (C,) WoodConstants table is copied to the device from
// pinned memory. Then two kernels on the current stream: the Wood w-stage (writing rho into q's
// storage as scratch) and the direction stage (overwriting q with s / |p|).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cmath>
#include <cstring>
#include <tuple>

#include "../vmf_sample_checks.h"
#include "vmf_sample_kernel.cuh"

namespace dfzsl_fast {
namespace cuda {

using detail::WoodConstants;

static void check_inputs(const at::Tensor& mu, const at::Tensor& kappa, const at::Tensor& labels) {
  check_vmf_sample_args(mu, kappa, labels);
  TORCH_CHECK(mu.device().is_cuda() && kappa.device() == mu.device() &&
                  labels.device() == mu.device(),
              "vmf_sample (CUDA kernel): expected mu, kappa and labels on one CUDA device, got ",
              mu.device(), ", ", kappa.device(), ", ", labels.device());
  // Philox block indices are 32-bit: d < 2^34 (far beyond any memory).
  TORCH_CHECK(mu.size(1) <= (int64_t{1} << 34), "vmf_sample: expected d <= 2^34, got ",
              mu.size(1));
}

void vmf_sample_out_cuda(const at::Tensor& mu_in, const at::Tensor& kappa_in,
                         const at::Tensor& labels_in, int64_t seed, int64_t offset, int64_t mode,
                         const at::Tensor& x, const at::Tensor& w, const at::Tensor& q) {
  check_inputs(mu_in, kappa_in, labels_in);
  const c10::cuda::OptionalCUDAGuard guard(mu_in.device());
  TORCH_CHECK(mode == 0 || mode == 1, "vmf_sample: expected mode 0 (exact) or 1 (reference), got ",
              mode);
  const int64_t C = mu_in.size(0), d = mu_in.size(1), N = labels_in.size(0);
  TORCH_CHECK(x.dim() == 2 && x.size(0) == N && x.size(1) == d && x.is_contiguous() &&
                  x.scalar_type() == mu_in.scalar_type(),
              "vmf_sample_out: expected x contiguous (", N, ", ", d, ") of dtype ",
              mu_in.scalar_type(), ", got ", x.sizes(), " ", x.scalar_type());
  TORCH_CHECK(w.dim() == 1 && w.size(0) == N && w.is_contiguous() && w.scalar_type() == at::kDouble,
              "vmf_sample_out: expected w contiguous (", N, ",) float64");
  TORCH_CHECK(q.dim() == 1 && q.size(0) == N && q.is_contiguous() && q.scalar_type() == at::kDouble,
              "vmf_sample_out: expected q contiguous (", N, ",) float64");
  TORCH_CHECK(x.device() == mu_in.device() && w.device() == mu_in.device() &&
                  q.device() == mu_in.device(),
              "vmf_sample_out: expected x, w and q on ", mu_in.device(), ", got ", x.device(), ", ",
              w.device(), ", ", q.device());
  if (N == 0) return;
  const at::Tensor mu = mu_in.contiguous();
  const at::Tensor labels = labels_in.contiguous();

  // Per-class constants on the host (kappa is read back; C values), then one copy to the device.
  const at::Tensor kap_host = kappa_in.to(at::kCPU).contiguous();
  const double* kap = kap_host.data_ptr<double>();
  at::Tensor consts_host =
      at::empty({C * static_cast<int64_t>(sizeof(WoodConstants))},
                at::TensorOptions().dtype(at::kByte).pinned_memory(true));
  WoodConstants* ch = reinterpret_cast<WoodConstants*>(consts_host.data_ptr<uint8_t>());
  for (int64_t c = 0; c < C; ++c) {
    TORCH_CHECK(std::isfinite(kap[c]) && kap[c] >= 0.0,
                "vmf_sample: expected finite kappa >= 0, got kappa[", c, "] = ", kap[c]);
    ch[c] = detail::wood_constants(d, kap[c], static_cast<detail::WoodMode>(mode));
  }
  {
    const auto mm = at::aminmax(labels);
    const at::Tensor lohi = at::stack({std::get<0>(mm), std::get<1>(mm)}).to(at::kCPU);
    const int64_t lo = lohi[0].item<int64_t>(), hi = lohi[1].item<int64_t>();
    TORCH_CHECK(lo >= 0 && hi < C, "vmf_sample: expected labels in [0, ", C, "), got range [", lo,
                ", ", hi, "]");
  }
  // Pinned source + non_blocking: the caching host allocator keeps the buffer until the copy
  // has run on the current stream.
  const at::Tensor consts_dev = consts_host.to(at::TensorOptions().device(mu.device()), /*non_blocking=*/true);
  const WoodConstants* cd = reinterpret_cast<const WoodConstants*>(consts_dev.data_ptr<uint8_t>());

  const uint64_t useed = static_cast<uint64_t>(seed);
  const uint64_t uoffset = static_cast<uint64_t>(offset);
  const int64_t* lab = labels.data_ptr<int64_t>();
  double* wp = w.data_ptr<double>();
  double* qp = q.data_ptr<double>();  // rho scratch of phase 1, then q
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();

  launch_vmf_wood_w(cd, lab, useed, uoffset, N, wp, qp, stream);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  AT_DISPATCH_FLOATING_TYPES(mu.scalar_type(), "vmf_sample_cuda", [&] {
    launch_vmf_direction<scalar_t>(mu.data_ptr<scalar_t>(), lab, wp, qp, useed, uoffset, N, d,
                                   x.data_ptr<scalar_t>(), qp, stream);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> vmf_sample_cuda(const at::Tensor& mu,
                                                               const at::Tensor& kappa,
                                                               const at::Tensor& labels,
                                                               int64_t seed, int64_t offset,
                                                               int64_t mode) {
  check_inputs(mu, kappa, labels);
  const int64_t N = labels.size(0);
  at::Tensor x = at::empty({N, mu.size(1)}, mu.options());
  at::Tensor w = at::empty({N}, mu.options().dtype(at::kDouble));
  at::Tensor q = at::empty({N}, mu.options().dtype(at::kDouble));
  vmf_sample_out_cuda(mu, kappa, labels, seed, offset, mode, x, w, q);
  return {x, w, q};
}

// Raw normals of the direction stage on the current CUDA device, for tests of the CPU/CUDA
// stream agreement: (n, 4*ceil(d/4)) float32, row i from stream row offset + i.
at::Tensor direction_normals_cuda(int64_t n, int64_t d, int64_t seed, int64_t offset) {
  TORCH_CHECK(n >= 0, "direction_normals: expected n >= 0, got ", n);
  TORCH_CHECK(d >= 1 && d <= (int64_t{1} << 34), "direction_normals: expected 1 <= d <= 2^34, got ",
              d);
  const int64_t nblocks = (d + 3) / 4;
  at::Tensor g = at::empty({n, 4 * nblocks},
                           at::TensorOptions().dtype(at::kFloat).device(at::kCUDA,
                                                                        c10::cuda::current_device()));
  if (n == 0) return g;
  launch_direction_normals(static_cast<uint64_t>(seed), static_cast<uint64_t>(offset), n, nblocks,
                           g.data_ptr<float>(), at::cuda::getCurrentCUDAStream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return g;
}

}  // namespace cuda
}  // namespace dfzsl_fast

TORCH_LIBRARY_IMPL(dfzsl_fast, CUDA, m) {
  m.impl("vmf_sample", &dfzsl_fast::cuda::vmf_sample_cuda);
  m.impl("vmf_sample_out", &dfzsl_fast::cuda::vmf_sample_out_cuda);
}
