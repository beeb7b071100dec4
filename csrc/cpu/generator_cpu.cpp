// CPU kernel of dfzsl_fast::tfvaegan_synthesize: the fused TF-VAEGAN synthesis forward. Contract
// (shapes, math, noise) is that of dfzsl_fast/reference/generator.py; the noise is synth.h's.
//
// Per tile of kTile rows (a count fixed by the widths, `tile_rows`: the last tile is padded), with scratch owned by the
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
// Precision: the GEMM weights' dtype picks the GEMM operands: float32, or bfloat16 (weights and
// activations rounded to bf16, float32 accumulation, ATen/oneDNN's bf16 GEMM: about twice the
// float32 rate on CPUs with AVX512-BF16 or AMX). cond, the biases and every epilogue are float32.
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
#include <type_traits>
#include <vector>

#include "dfzsl/synth.h"
#include "normals_avx2.h"

namespace dfzsl_fast {
namespace cpu {

namespace {

// Rows per GEMM call, a function of the layer widths only (never of N, so a row's bits do not
// depend on the batch): every call re-reads (and BLAS re-packs) the weights, a cost that a
// taller tile amortises; once a weight matrix outgrows the caches (H = 4096: 64 MB) it comes
// from DRAM, so wide generators get taller tiles. By measurement (benchmarks/RESULTS.md).
int64_t tile_rows(int64_t H, int64_t D) {
  const int64_t w = std::max(H, D);
  return w <= 1024 ? 256 : w <= 2048 ? 512 : 1024;
}
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

void check_tensor(const at::Tensor& t, const char* name, at::ScalarType dt, at::IntArrayRef shape) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == dt, "tfvaegan_synthesize (CPU): ", name,
              " must be a ", dt, " CPU tensor, got ", t.scalar_type(), " on ", t.device());
  TORCH_CHECK(t.sizes() == shape, "tfvaegan_synthesize (CPU): ", name, " must have shape ", shape,
              ", got ", t.sizes());
}

struct Args {
  int64_t tile;
  const float* cond;
  const int64_t* cond_index;
  const int64_t* class_ids;
  const int64_t* row_ids;
  at::Tensor wzT, woT, wdT, wf1T, wf2T;  // transposed views (in, out) of the GEMM weights
  const float *b_out, *b_dec, *b_fb1, *b_fb2;
  int64_t N, H, Z, D;
  uint64_t seed;
  float a1;
  bool feedback;
  at::ScalarType out_dtype;
  char* out;
};

// The tiles [tb, te) of one chunk, with GEMM operands of type T (float, or BFloat16 for the
// bf16 mode: weights and activations rounded to bf16, float32 accumulation inside the GEMM,
// every epilogue in float32).
template <typename T>
void run_tiles(const Args& a, int64_t tb, int64_t te) {
  constexpr bool kF32 = std::is_same_v<T, float>;
  const int64_t H = a.H, Z = a.Z, D = a.D, kTile = a.tile;
  // Scratch of this chunk, zeroed once: padded rows of the last tile stay finite.
  const auto opt = a.wzT.options();
  const auto fopt = opt.dtype(at::kFloat);
  at::Tensor z = at::zeros({kTile, Z}, opt), h = at::zeros({kTile, H}, opt);
  at::Tensor y = at::zeros({kTile, D}, opt), d = at::zeros({kTile, H}, opt);
  at::Tensor f = at::zeros({kTile, H}, opt), g = at::zeros({kTile, H}, opt);
  // float32 copies where the operands are bf16: h for the feedback add, y for the output
  at::Tensor hf = kF32 ? h : at::zeros({kTile, H}, fopt);
  at::Tensor yf = kF32 ? y : at::zeros({kTile, D}, fopt);
  at::Tensor zf = kF32 ? z : at::zeros({kTile, Z}, fopt);
  T* pz = z.data_ptr<T>();
  T* ph = h.data_ptr<T>();
  T* py = y.data_ptr<T>();
  T* pd = d.data_ptr<T>();
  T* pf = f.data_ptr<T>();
  T* pg = g.data_ptr<T>();
  float* phf = hf.data_ptr<float>();
  float* pyf = yf.data_ptr<float>();
  float* pzf = zf.data_ptr<float>();
  std::vector<float> tmp(static_cast<size_t>((Z + 3) / 4 * 4));
  const int64_t osize = c10::elementSize(a.out_dtype);

  // y <- normalize(y_gemm + b_out) in float32 (yf), and the bf16 operand for the decoder
  auto output_epilogue = [&](int64_t m, bool operand) {
    for (int64_t i = 0; i < m; ++i) {
      float* yr = pyf + i * D;
      const T* yg = py + i * D;
      for (int64_t k = 0; k < D; ++k) yr[k] = static_cast<float>(yg[k]) + a.b_out[k];
      normalize_row(yr, D);
      if (!kF32 && operand) {
        for (int64_t k = 0; k < D; ++k) py[i * D + k] = static_cast<T>(yr[k]);
      }
    }
  };
  // buf <- LReLU(buf + bias) (the operand of the next GEMM)
  auto lrelu_epilogue = [&](T* buf, const float* bias, int64_t m) {
    for (int64_t i = 0; i < m; ++i) {
      T* r = buf + i * H;
      for (int64_t k = 0; k < H; ++k) r[k] = static_cast<T>(lrelu(static_cast<float>(r[k]) + bias[k]));
    }
  };

  for (int64_t t = tb; t < te; ++t) {
    const int64_t r0 = t * kTile, m = std::min(kTile, a.N - r0);
    for (int64_t i = 0; i < m; ++i) {
      fill_noise(a.seed, static_cast<uint32_t>(a.class_ids[r0 + i]),
                 static_cast<uint32_t>(a.row_ids[r0 + i]), Z, pzf + i * Z, tmp.data());
      if (!kF32) {
        for (int64_t k = 0; k < Z; ++k) pz[i * Z + k] = static_cast<T>(pzf[i * Z + k]);
      }
    }
    at::mm_out(h, z, a.wzT);
    for (int64_t i = 0; i < m; ++i) {
      const float* c = a.cond + a.cond_index[r0 + i] * H;
      T* hr = ph + i * H;
      float* hfr = phf + i * H;
      for (int64_t k = 0; k < H; ++k) {
        const float v = lrelu(static_cast<float>(hr[k]) + c[k]);
        hfr[k] = v;
        if (!kF32) hr[k] = static_cast<T>(v);
      }
    }
    at::mm_out(y, h, a.woT);
    output_epilogue(m, a.feedback);
    if (a.feedback) {
      at::mm_out(d, y, a.wdT);
      lrelu_epilogue(pd, a.b_dec, m);
      at::mm_out(f, d, a.wf1T);
      lrelu_epilogue(pf, a.b_fb1, m);
      at::mm_out(g, f, a.wf2T);
      for (int64_t i = 0; i < m; ++i) {
        T* gr = pg + i * H;
        const float* hr = phf + i * H;
        for (int64_t k = 0; k < H; ++k) {
          gr[k] = static_cast<T>(hr[k] + a.a1 * lrelu(static_cast<float>(gr[k]) + a.b_fb2[k]));
        }
      }
      at::mm_out(y, g, a.woT);
      output_epilogue(m, false);
    }
    char* orow = a.out + r0 * D * osize;
    for (int64_t i = 0; i < m; ++i) {
      const float* yr = pyf + i * D;
      if (a.out_dtype == at::kFloat) {
        store_row(yr, D, reinterpret_cast<float*>(orow) + i * D);
      } else if (a.out_dtype == at::kHalf) {
        store_row(yr, D, reinterpret_cast<c10::Half*>(orow) + i * D);
      } else {
        store_row(yr, D, reinterpret_cast<c10::BFloat16*>(orow) + i * D);
      }
    }
  }
}

}  // namespace

at::Tensor tfvaegan_synthesize_cpu(const at::Tensor& cond, const at::Tensor& cond_index,
                                   const at::Tensor& class_ids, const at::Tensor& row_ids,
                                   const at::Tensor& w_z, const at::Tensor& w_out,
                                   const at::Tensor& b_out, const at::Tensor& w_dec,
                                   const at::Tensor& b_dec, const at::Tensor& w_fb1,
                                   const at::Tensor& b_fb1, const at::Tensor& w_fb2,
                                   const at::Tensor& b_fb2, int64_t seed, double a1,
                                   bool feedback, at::ScalarType out_dtype) {
  TORCH_CHECK(w_z.dim() == 2 && w_out.dim() == 2 && cond.dim() == 2,
              "tfvaegan_synthesize (CPU): w_z (H, Z), w_out (D, H), cond (K, H) expected");
  const int64_t H = w_z.size(0), Z = w_z.size(1), D = w_out.size(0), K = cond.size(0);
  const int64_t N = class_ids.numel();
  const at::ScalarType wt = w_z.scalar_type();
  TORCH_CHECK(wt == at::kFloat || wt == at::kBFloat16,
              "tfvaegan_synthesize (CPU): the GEMM weights must be float32 or bfloat16, got ", wt);
  check_tensor(w_z, "w_z", wt, {H, Z});
  check_tensor(w_out, "w_out", wt, {D, H});
  check_tensor(w_dec, "w_dec", wt, {H, D});
  check_tensor(w_fb1, "w_fb1", wt, {H, H});
  check_tensor(w_fb2, "w_fb2", wt, {H, H});
  check_tensor(cond, "cond", at::kFloat, {K, H});
  check_tensor(b_out, "b_out", at::kFloat, {D});
  check_tensor(b_dec, "b_dec", at::kFloat, {H});
  check_tensor(b_fb1, "b_fb1", at::kFloat, {H});
  check_tensor(b_fb2, "b_fb2", at::kFloat, {H});
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
  const auto bo = b_out.contiguous(), bd = b_dec.contiguous(), bf1 = b_fb1.contiguous(),
             bf2 = b_fb2.contiguous();
  const int64_t kTile = tile_rows(H, D);
  Args args{kTile, condc.data_ptr<float>(), pci, pcl, prw,
            // A (T, in) @ W^T (in, out): BLAS reads the transposed view without a copy
            w_z.contiguous().t(), w_out.contiguous().t(), w_dec.contiguous().t(),
            w_fb1.contiguous().t(), w_fb2.contiguous().t(),
            bo.data_ptr<float>(), bd.data_ptr<float>(), bf1.data_ptr<float>(),
            bf2.data_ptr<float>(), N, H, Z, D, static_cast<uint64_t>(seed),
            static_cast<float>(a1), feedback, out_dtype, static_cast<char*>(out.data_ptr())};
  const int64_t ntiles = (N + kTile - 1) / kTile;
  at::parallel_for(0, ntiles, 1, [&](int64_t tb, int64_t te) {
    if (wt == at::kFloat) {
      run_tiles<float>(args, tb, te);
    } else {
      run_tiles<c10::BFloat16>(args, tb, te);
    }
  });
  return out;
}

}  // namespace cpu
}  // namespace dfzsl_fast

TORCH_LIBRARY_IMPL(dfzsl_fast, CPU, m) {
  m.impl("tfvaegan_synthesize", &dfzsl_fast::cpu::tfvaegan_synthesize_cpu);
}
