// CPU kernel of dfzsl_fast::gather_rows: the rows of a training batch gathered from several
// sources in one pass, converted to the output dtype on the way (schema and contract in
// dfzsl_fast/ops/_library.py; the pure-PyTorch default kernel in dfzsl_fast/ops/rows.py).
//
// Why a kernel: a streamed classifier batch takes its rows from the virtual base features in
// memory and from float16 feature shards, memory-mapped (dfzsl_fast/synthesis/rows.py). Composed
// from torch ops that is a gather per source, a float16 -> float32 conversion and a scatter of
// every piece into batch order (three passes and a dozen small ops a batch); here each output row
// is read once from its source and written once, converted in registers, rows in parallel.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

namespace dfzsl_fast {
namespace cpu {

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define DFZSL_GATHER_F16C 1
// float16 -> float32 with the F16C instruction, 8 values at a time: c10::Half's own conversion
// is integer bit manipulation per value, which made the float16 shards' rows of a streamed
// batch cost 3x the float32 ones (2.8 ms of a 9.6 ms epoch of reads at AWA2 size).
__attribute__((target("avx,f16c"))) static void half_to_float_f16c(const c10::Half* src,
                                                                    float* dst, int64_t d) {
  int64_t j = 0;
  for (; j + 8 <= d; j += 8) {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + j));
    _mm256_storeu_ps(dst + j, _mm256_cvtph_ps(h));
  }
  for (; j < d; ++j) dst[j] = static_cast<float>(src[j]);
}

static bool has_f16c() {
  static const bool ok = __builtin_cpu_supports("avx") && __builtin_cpu_supports("f16c");
  return ok;
}
#endif

// bfloat16 is the top half of a float32: the conversion is a 16-bit shift (exact, vectorised).
static inline void bf16_to_float(const c10::BFloat16* src, float* dst, int64_t d) {
  for (int64_t j = 0; j < d; ++j) {
    const uint32_t bits = static_cast<uint32_t>(src[j].x) << 16;
    std::memcpy(dst + j, &bits, sizeof(float));
  }
}

template <typename S, typename O>
static inline void copy_row(const S* src, O* dst, int64_t d) {
  if constexpr (std::is_same_v<S, O>) {
    std::memcpy(dst, src, static_cast<size_t>(d) * sizeof(O));
  } else if constexpr (std::is_same_v<S, c10::BFloat16> && std::is_same_v<O, float>) {
    bf16_to_float(src, dst, d);
  } else {
#ifdef DFZSL_GATHER_F16C
    if constexpr (std::is_same_v<S, c10::Half> && std::is_same_v<O, float>) {
      if (has_f16c()) {
        half_to_float_f16c(src, dst, d);
        return;
      }
    }
#endif
    for (int64_t j = 0; j < d; ++j) dst[j] = static_cast<O>(static_cast<float>(src[j]));
  }
}

template <typename O>
static void gather(const std::vector<at::Tensor>& src, const int64_t* part, const int64_t* local,
                   int64_t n, int64_t width, O* out) {
  at::parallel_for(0, n, 256, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      const at::Tensor& s = src[part[i]];
      const int64_t off = local[i] * width;
      O* dst = out + i * width;
      if constexpr (std::is_same_v<O, int64_t>) {
        copy_row(s.const_data_ptr<int64_t>() + off, dst, width);
      } else {
        switch (s.scalar_type()) {
          case at::kHalf: copy_row(s.const_data_ptr<c10::Half>() + off, dst, width); break;
          case at::kBFloat16: copy_row(s.const_data_ptr<c10::BFloat16>() + off, dst, width); break;
          case at::kFloat: copy_row(s.const_data_ptr<float>() + off, dst, width); break;
          default: copy_row(s.const_data_ptr<double>() + off, dst, width); break;
        }
      }
    }
  });
}

at::Tensor gather_rows_cpu(at::TensorList sources, const at::Tensor& part,
                           const at::Tensor& local, at::ScalarType dtype) {
  const char* op = "gather_rows";
  TORCH_CHECK(!sources.empty(), op, ": expected at least one source");
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble || dtype == at::kLong, op,
              ": expected dtype float32, float64 or int64, got ", dtype);
  const int64_t dim = sources[0].dim();
  TORCH_CHECK(dim == 1 || dim == 2, op, ": expected 1-D or 2-D sources, got ", sources[0].sizes());
  const int64_t width = dim == 2 ? sources[0].size(1) : 1;
  std::vector<at::Tensor> src;
  src.reserve(sources.size());
  for (size_t k = 0; k < sources.size(); ++k) {
    const at::Tensor& s = sources[k];
    TORCH_CHECK(s.device().is_cpu(), op, " (CPU kernel): expected CPU sources, got source ", k,
                " on ", s.device());
    TORCH_CHECK(s.dim() == dim && (dim == 1 || s.size(1) == width), op,
                ": expected every source of the shape of source 0 (rows, ",
                dim == 2 ? std::to_string(width) : std::string("-"), "), got source ", k, " ",
                s.sizes());
    const at::ScalarType t = s.scalar_type();
    const bool ok = dtype == at::kLong ? t == at::kLong
                                       : (t == at::kHalf || t == at::kBFloat16 ||
                                          t == at::kFloat || t == at::kDouble);
    TORCH_CHECK(ok, op, ": source ", k, " of dtype ", t, " cannot be gathered into ", dtype);
    src.push_back(s.contiguous());
  }
  TORCH_CHECK(part.scalar_type() == at::kLong && local.scalar_type() == at::kLong &&
                  part.dim() == 1 && local.dim() == 1 && part.numel() == local.numel(),
              op, ": expected part and local (n,) int64 of one length, got ", part.sizes(), " ",
              part.scalar_type(), " and ", local.sizes(), " ", local.scalar_type());
  TORCH_CHECK(part.device().is_cpu() && local.device().is_cpu(), op,
              " (CPU kernel): expected part and local on the CPU");
  const at::Tensor p = part.contiguous(), l = local.contiguous();
  const int64_t n = p.numel(), K = static_cast<int64_t>(src.size());
  const int64_t* pp = p.const_data_ptr<int64_t>();
  const int64_t* lp = l.const_data_ptr<int64_t>();
  for (int64_t i = 0; i < n; ++i) {  // every index checked before any row is read
    TORCH_CHECK(pp[i] >= 0 && pp[i] < K, op, ": expected part in [0, ", K, "), got part[", i,
                "] = ", pp[i]);
    TORCH_CHECK(lp[i] >= 0 && lp[i] < src[pp[i]].size(0), op, ": expected local[", i,
                "] in [0, ", src[pp[i]].size(0), ") (rows of source ", pp[i], "), got ", lp[i]);
  }
  at::Tensor out = dim == 2 ? at::empty({n, width}, part.options().dtype(dtype))
                            : at::empty({n}, part.options().dtype(dtype));
  if (n == 0 || width == 0) return out;
  if (dtype == at::kFloat) {
    gather(src, pp, lp, n, width, out.data_ptr<float>());
  } else if (dtype == at::kDouble) {
    gather(src, pp, lp, n, width, out.data_ptr<double>());
  } else {
    gather(src, pp, lp, n, width, out.data_ptr<int64_t>());
  }
  return out;
}

}  // namespace cpu
}  // namespace dfzsl_fast

TORCH_LIBRARY_IMPL(dfzsl_fast, CPU, m) {
  m.impl("gather_rows", &dfzsl_fast::cpu::gather_rows_cpu);
}
