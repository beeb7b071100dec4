// CPU kernel of dfzsl_fast::tfvaegan_synthesize: the fused TF-VAEGAN synthesis forward. Contract
// (shapes, math, noise) is that of dfzsl_fast/reference/generator.py; the noise is synth.h's.
//
// Per tile of kTile rows (a fixed count: the last tile is padded), with scratch owned by the
// thread's chunk of tiles:
//   z   = Philox normals of the tile's (class, row) pairs      (never an (N, Z) tensor)
//   h   = LReLU(z W_z^T + cond[cond_index])                     GEMM, fused gather-add + LReLU
//   y1  = h W_out^T + b_out;  x1 = y1 / |y1|                    GEMM, fused bias + row norm
//   d   = LReLU(x1 W_dec^T + b_dec)                             GEMM, fused bias + LReLU
//   f1  = LReLU(d W_fb1^T + b_fb1)                              GEMM, fused bias + LReLU
//   g   = h + a1 LReLU(f1 W_fb2^T + b_fb2)                      GEMM, fused bias + LReLU + add
//   out = normalize(g W_out^T + b_out)                          GEMM, fused bias + norm + cast
// The condition half of G's first layer, W_a a_c + b1, comes in hoisted (`cond`, one row per
// distinct class of the call), so it costs nothing per row.
//
// Why fixed tiles: every GEMM call then has the same shape, and at::parallel_for runs ATen's
// BLAS single-threaded inside each chunk, so a row's bits do not depend on the batch it came
// in, on its position in a tile or on the thread count (tests/test_generator.py checks batch
// sizes 1, 7, 4096 and 1 vs 2 threads). Rows are independent, so threads share nothing.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "dfzsl/synth.h"
#include "normals_avx2.h"

namespace dfzsl_fast {
namespace cpu {

namespace {

constexpr int64_t kTile = 256;  // rows per GEMM call (by measurement: 128 loses ~8% to packing)
constexpr float kSlope = 0.2f;  // LeakyReLU slope of every TF-VAEGAN network
constexpr float kEps = 1e-12f;  // F.normalize's eps

// z[0 .. width) of row (cls, row): the AVX2 Philox/Box-Muller path where the CPU has it (eight
// blocks per instruction), else synth.h's scalar loop. Same words, normals equal to rounding.
inline void fill_noise(uint64_t seed, uint32_t cls, uint32_t row, int64_t width, float* z,
                       float* tmp) {
  const int64_t blocks = (width + 3) / 4;
#if DFZSL_HAVE_AVX2_PATH
  if (cpu_has_avx2_fma()) {
    float* dst = (4 * blocks == width) ? z : tmp;  // tmp: 4 * blocks floats for a ragged width
    fill_stage_normals_avx2(seed, (static_cast<uint64_t>(cls) << 32) | row, detail::kStageSynth,
                            blocks, dst);
    if (dst != z) std::copy(dst, dst + width, z);
    return;
  }
#endif
  (void)tmp;
  (void)blocks;
  detail::synth_normals_row(seed, cls, row, width, z);
}

inline float lrelu(float v) { return v > 0.f ? v : kSlope * v; }

// Row-wise L2 normalisation in place, x / max(|x|, eps) (F.normalize): float32 sum of squares in
// a double accumulator for stability, like ATen's norm.
inline void normalize_row(float* x, int64_t n) {
  double ss = 0.0;
  for (int64_t k = 0; k < n; ++k) ss += static_cast<double>(x[k]) * x[k];
  const float nrm = static_cast<float>(std::sqrt(ss));
  const float inv = 1.0f / (nrm > kEps ? nrm : kEps);
  for (int64_t k = 0; k < n; ++k) x[k] *= inv;
}

template <typename T>
inline void store_row(const float* x, int64_t n, T* out) {
  for (int64_t k = 0; k < n; ++k) out[k] = static_cast<T>(x[k]);
}

void check_weight(const at::Tensor& t, const char* name, at::IntArrayRef shape) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kFloat,
              "tfvaegan_synthesize (CPU): ", name, " must be a float32 CPU tensor, got ",
              t.scalar_type(), " on ", t.device());
  TORCH_CHECK(t.sizes() == shape, "tfvaegan_synthesize (CPU): ", name, " must have shape ", shape,
              ", got ", t.sizes());
}

}  // namespace

at::Tensor tfvaegan_synthesize_cpu(const at::Tensor& cond, const at::Tensor& cond_index,
                                   const at::Tensor& class_ids, const at::Tensor& row_ids,
                                   const at::Tensor& w_z, const at::Tensor& w_out,
                                   const at::Tensor& b_out, const at::Tensor& w_dec,
                                   const at::Tensor& b_dec, const at::Tensor& w_fb1,
                                   const at::Tensor& b_fb1, const at::Tensor& w_fb2,
                                   const at::Tensor& b_fb2, int64_t seed, double a1_d,
                                   bool feedback, at::ScalarType out_dtype) {
  TORCH_CHECK(w_z.dim() == 2 && w_out.dim() == 2 && cond.dim() == 2,
              "tfvaegan_synthesize (CPU): w_z (H, Z), w_out (D, H), cond (K, H) expected");
  const int64_t H = w_z.size(0), Z = w_z.size(1), D = w_out.size(0), K = cond.size(0);
  const int64_t N = class_ids.numel();
  check_weight(cond, "cond", {K, H});
  check_weight(w_z, "w_z", {H, Z});
  check_weight(w_out, "w_out", {D, H});
  check_weight(b_out, "b_out", {D});
  check_weight(w_dec, "w_dec", {H, D});
  check_weight(b_dec, "b_dec", {H});
  check_weight(w_fb1, "w_fb1", {H, H});
  check_weight(b_fb1, "b_fb1", {H});
  check_weight(w_fb2, "w_fb2", {H, H});
  check_weight(b_fb2, "b_fb2", {H});
  for (const at::Tensor* t : {&cond_index, &class_ids, &row_ids}) {
    TORCH_CHECK(t->device().is_cpu() && t->scalar_type() == at::kLong && t->dim() == 1 &&
                    t->numel() == N,
                "tfvaegan_synthesize (CPU): cond_index, class_ids, row_ids must be (N,) int64");
  }
  TORCH_CHECK(out_dtype == at::kFloat || out_dtype == at::kHalf || out_dtype == at::kBFloat16,
              "tfvaegan_synthesize (CPU): out_dtype must be float32, float16 or bfloat16, got ",
              out_dtype);
  auto out = at::empty({N, D}, w_z.options().dtype(out_dtype));
  if (N == 0) return out;

  const auto ci = cond_index.contiguous(), cl = class_ids.contiguous(), rw = row_ids.contiguous();
  const int64_t* pci = ci.data_ptr<int64_t>();
  const int64_t* pcl = cl.data_ptr<int64_t>();
  const int64_t* prw = rw.data_ptr<int64_t>();
  for (int64_t i = 0; i < N; ++i) {
    TORCH_CHECK(pci[i] >= 0 && pci[i] < K, "tfvaegan_synthesize (CPU): cond_index out of range");
    TORCH_CHECK(pcl[i] >= 0 && pcl[i] < (int64_t{1} << 32) && prw[i] >= 0 &&
                    prw[i] < (int64_t{1} << 32),
                "tfvaegan_synthesize (CPU): class_ids and row_ids must lie in [0, 2^32)");
  }
  const auto condc = cond.contiguous();
  const float* pcond = condc.data_ptr<float>();
  // Transposed views: the GEMMs are A (T, in) @ W^T (in, out); MKL reads W^T without a copy.
  const auto wzT = w_z.contiguous().t(), woT = w_out.contiguous().t();
  const auto wdT = w_dec.contiguous().t(), wf1T = w_fb1.contiguous().t();
  const auto wf2T = w_fb2.contiguous().t();
  const auto bo = b_out.contiguous(), bd = b_dec.contiguous(), bf1 = b_fb1.contiguous(),
             bf2 = b_fb2.contiguous();
  const float* pbo = bo.data_ptr<float>();
  const float* pbd = bd.data_ptr<float>();
  const float* pbf1 = bf1.data_ptr<float>();
  const float* pbf2 = bf2.data_ptr<float>();
  const float a1 = static_cast<float>(a1_d);
  const uint64_t useed = static_cast<uint64_t>(seed);
  const int64_t ntiles = (N + kTile - 1) / kTile;
  char* pout = static_cast<char*>(out.data_ptr());
  const int64_t osize = out.element_size();

  at::parallel_for(0, ntiles, 1, [&](int64_t tb, int64_t te) {
    // Scratch of this chunk, zeroed once: padded rows of the last tile stay finite.
    const auto opt = w_z.options();
    at::Tensor z = at::zeros({kTile, Z}, opt), h = at::zeros({kTile, H}, opt);
    at::Tensor y = at::empty({kTile, D}, opt), d = at::empty({kTile, H}, opt);
    at::Tensor f = at::empty({kTile, H}, opt), g = at::empty({kTile, H}, opt);
    float* pz = z.data_ptr<float>();
    float* ph = h.data_ptr<float>();
    float* py = y.data_ptr<float>();
    float* pd = d.data_ptr<float>();
    float* pf = f.data_ptr<float>();
    float* pg = g.data_ptr<float>();
    std::vector<float> tmp(static_cast<size_t>((Z + 3) / 4 * 4));
    for (int64_t t = tb; t < te; ++t) {
      const int64_t r0 = t * kTile, m = std::min(kTile, N - r0);
      for (int64_t i = 0; i < m; ++i) {
        fill_noise(useed, static_cast<uint32_t>(pcl[r0 + i]), static_cast<uint32_t>(prw[r0 + i]),
                   Z, pz + i * Z, tmp.data());
      }
      at::mm_out(h, z, wzT);
      for (int64_t i = 0; i < m; ++i) {
        const float* c = pcond + pci[r0 + i] * H;
        float* hr = ph + i * H;
        for (int64_t k = 0; k < H; ++k) hr[k] = lrelu(hr[k] + c[k]);
      }
      at::mm_out(y, h, woT);
      for (int64_t i = 0; i < m; ++i) {
        float* yr = py + i * D;
        for (int64_t k = 0; k < D; ++k) yr[k] += pbo[k];
        normalize_row(yr, D);
      }
      if (feedback) {
        at::mm_out(d, y, wdT);
        for (int64_t i = 0; i < m; ++i) {
          float* dr = pd + i * H;
          for (int64_t k = 0; k < H; ++k) dr[k] = lrelu(dr[k] + pbd[k]);
        }
        at::mm_out(f, d, wf1T);
        for (int64_t i = 0; i < m; ++i) {
          float* fr = pf + i * H;
          for (int64_t k = 0; k < H; ++k) fr[k] = lrelu(fr[k] + pbf1[k]);
        }
        at::mm_out(g, f, wf2T);
        for (int64_t i = 0; i < m; ++i) {
          float* gr = pg + i * H;
          const float* hr = ph + i * H;
          for (int64_t k = 0; k < H; ++k) gr[k] = hr[k] + a1 * lrelu(gr[k] + pbf2[k]);
        }
        at::mm_out(y, g, woT);
        for (int64_t i = 0; i < m; ++i) {
          float* yr = py + i * D;
          for (int64_t k = 0; k < D; ++k) yr[k] += pbo[k];
          normalize_row(yr, D);
        }
      }
      char* orow = pout + r0 * D * osize;
      for (int64_t i = 0; i < m; ++i) {
        const float* yr = py + i * D;
        if (out_dtype == at::kFloat) {
          store_row(yr, D, reinterpret_cast<float*>(orow) + i * D);
        } else if (out_dtype == at::kHalf) {
          store_row(yr, D, reinterpret_cast<c10::Half*>(orow) + i * D);
        } else {
          store_row(yr, D, reinterpret_cast<c10::BFloat16*>(orow) + i * D);
        }
      }
    }
  });
  return out;
}

}  // namespace cpu
}  // namespace dfzsl_fast

TORCH_LIBRARY_IMPL(dfzsl_fast, CPU, m) {
  m.impl("tfvaegan_synthesize", &dfzsl_fast::cpu::tfvaegan_synthesize_cpu);
}
