// CPU kernels of the fused cosine-classifier ops: dfzsl_fast::cosine_logits (+ _backward),
// cosine_cross_entropy (+ _backward), cosine_topk and cosine_logit_mse. The contract (shapes,
// dtypes, eps policy, reductions, what compute_grad returns) is that of the pure-PyTorch default
// kernels in dfzsl_fast/reference/cosine_chunked.py; the row math is in csrc/include/dfzsl/cosine.h.
//
// Math: logits z = x_hat @ ws^T with x_hat = x / max(|x|, eps) (torch.nn.functional.normalize)
// and ws = scale * w_hat precomputed once. For the cross-entropy (Liger-style, gradients in the
// forward pass when compute_grad and reduction != none),
//     P      = rw * (softmax(z + adj) - ls/C - (1 - ls) onehot(t))    (rw = 1/N for "mean")
//     grad_x = normalize_backward(P @ ws, x)
//     grad_w = normalize_backward(scale * P^T @ x_hat, w)
// summed over row tiles; the MSE and logits backward have the same shape with other P.
//
// Layouts: x (N, d), w (C, d) row-major contiguous (made so at entry); float16/bfloat16 are
// computed in float32 and the outputs cast back, as the default kernels do.
//
// Threading and tiling: the N rows are cut into one contiguous chunk per thread, of equal size,
// and each chunk into equal tiles of at most 256 rows (make_tiling, tile_rows: by measurement);
// at::parallel_for runs the chunks. Each chunk owns its scratch (x_hat tile R x d, logits tile R x C) and, for the
// weight gradient, a private (C, d) accumulator; the accumulators are summed in chunk order at the
// end, so results depend on the thread count but not on scheduling. Per tile: one GEMM for the
// logits (at::mm_out into the tile; inside parallel_for ATen's BLAS runs single-threaded), one
// fused pass over the rows (adjustment, max, exp, sum, lse, loss, P in place), then the GEMM
// P @ ws straight into grad_x's rows followed by the normalisation backward, and P^T @ x_hat
// accumulated (addmm) into the chunk's (C, d) buffer. Nothing of size N x C is ever allocated by
// the loss, top-k and MSE kernels.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdlib>
#include <optional>
#include <tuple>
#include <utility>
#include <vector>

#include "dfzsl/cosine.h"

namespace dfzsl_fast {
namespace cpu {

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define DFZSL_COSINE_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define DFZSL_COSINE_CLONES
#endif

// ------------------------------------------------------------------ row blocks (AVX2 clones)
// Row i of the block is x's row i, or x's row idx[i] when idx is given (a batch read in place,
// never copied out of x first); out may be null (norms only).
template <typename T>
static inline void normalize_rows_t(const T* x, const int64_t* idx, int64_t rows, int64_t d,
                                    T eps, T* out, T* denom, uint8_t* mask) {
  // Indexed rows lie at random places: the hardware prefetcher cannot see the next one coming,
  // so its cache lines are requested while this one is normalised.
  constexpr int64_t kAhead = 2;
  const int64_t line = 64 / static_cast<int64_t>(sizeof(T));
  for (int64_t i = 0; i < rows; ++i) {
    if (idx != nullptr && i + kAhead < rows) {
      const T* nxt = x + idx[i + kAhead] * d;
      for (int64_t k = 0; k < d; k += line) __builtin_prefetch(nxt + k, 0, 3);
    }
    const T* r = x + (idx != nullptr ? idx[i] : i) * d;
    denom[i] = detail::normalize_row(r, d, eps, out == nullptr ? nullptr : out + i * d, mask + i);
  }
}

template <typename T>
static inline void normalize_backward_rows_t(T* g, const T* rh, const T* denom,
                                             const uint8_t* mask, int64_t rows, int64_t d) {
  for (int64_t i = 0; i < rows; ++i) {
    detail::normalize_backward_row(g + i * d, rh + i * d, denom[i], mask[i], d);
  }
}

template <typename T>
static inline void ce_forward_rows_t(T* z, int64_t rows, int64_t C, const T* adj,
                                     const int64_t* tgt, T ls, T rw, bool grad, T* lse, T* loss) {
  for (int64_t i = 0; i < rows; ++i) {
    detail::ce_row_forward(z + i * C, C, adj, tgt[i], ls, rw, grad, lse + i, loss + i);
  }
}

template <typename T>
static inline void ce_backward_rows_t(T* z, int64_t rows, int64_t C, const T* adj,
                                      const int64_t* tgt, const T* lse, const T* g, T ls) {
  for (int64_t i = 0; i < rows; ++i) {
    detail::ce_row_backward(z + i * C, C, adj, tgt[i], lse[i], ls, g[i]);
  }
}

// Sum of squares of n values (per row in T, rows summed in double); optionally scales them.
template <typename T>
static inline double sumsq_scale_t(T* e, int64_t rows, int64_t C, bool scale, T coef) {
  double total = 0;
  for (int64_t i = 0; i < rows; ++i) {
    T* r = e + i * C;
    total += static_cast<double>(detail::row_sumsq(r, C));
    if (scale) {
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) r[c] *= coef;
    }
  }
  return total;
}

// Non-template entry points, so that target_clones can compile an AVX2+FMA variant of each.
#define DFZSL_COSINE_PAIR(T, SUFFIX)                                                              \
  DFZSL_COSINE_CLONES static void normalize_rows_##SUFFIX(                                        \
      const T* x, const int64_t* idx, int64_t rows, int64_t d, T eps, T* out, T* denom,           \
      uint8_t* mask) {                                                                            \
    normalize_rows_t<T>(x, idx, rows, d, eps, out, denom, mask);                                  \
  }                                                                                               \
  DFZSL_COSINE_CLONES static void normalize_backward_rows_##SUFFIX(                               \
      T* g, const T* rh, const T* denom, const uint8_t* mask, int64_t rows, int64_t d) {          \
    normalize_backward_rows_t<T>(g, rh, denom, mask, rows, d);                                    \
  }                                                                                               \
  DFZSL_COSINE_CLONES static void ce_forward_rows_##SUFFIX(T* z, int64_t rows, int64_t C,         \
                                                           const T* adj, const int64_t* tgt,      \
                                                           T ls, T rw, bool grad, T* lse,         \
                                                           T* loss) {                             \
    ce_forward_rows_t<T>(z, rows, C, adj, tgt, ls, rw, grad, lse, loss);                          \
  }                                                                                               \
  DFZSL_COSINE_CLONES static void ce_backward_rows_##SUFFIX(T* z, int64_t rows, int64_t C,        \
                                                            const T* adj, const int64_t* tgt,     \
                                                            const T* lse, const T* g, T ls) {     \
    ce_backward_rows_t<T>(z, rows, C, adj, tgt, lse, g, ls);                                      \
  }                                                                                               \
  DFZSL_COSINE_CLONES static double sumsq_scale_##SUFFIX(T* e, int64_t rows, int64_t C,           \
                                                         bool scale, T coef) {                    \
    return sumsq_scale_t<T>(e, rows, C, scale, coef);                                             \
  }                                                                                               \
  static inline void normalize_rows(const T* x, int64_t rows, int64_t d, T eps, T* out,           \
                                    T* denom, uint8_t* mask, const int64_t* idx = nullptr) {      \
    normalize_rows_##SUFFIX(x, idx, rows, d, eps, out, denom, mask);                              \
  }                                                                                               \
  static inline void normalize_backward_rows(T* g, const T* rh, const T* denom,                   \
                                             const uint8_t* mask, int64_t rows, int64_t d) {      \
    normalize_backward_rows_##SUFFIX(g, rh, denom, mask, rows, d);                                \
  }                                                                                               \
  static inline void ce_forward_rows(T* z, int64_t rows, int64_t C, const T* adj,                 \
                                     const int64_t* tgt, T ls, T rw, bool grad, T* lse,           \
                                     T* loss) {                                                   \
    ce_forward_rows_##SUFFIX(z, rows, C, adj, tgt, ls, rw, grad, lse, loss);                      \
  }                                                                                               \
  static inline void ce_backward_rows(T* z, int64_t rows, int64_t C, const T* adj,                \
                                      const int64_t* tgt, const T* lse, const T* g, T ls) {       \
    ce_backward_rows_##SUFFIX(z, rows, C, adj, tgt, lse, g, ls);                                  \
  }                                                                                               \
  static inline double sumsq_scale(T* e, int64_t rows, int64_t C, bool scale, T coef) {           \
    return sumsq_scale_##SUFFIX(e, rows, C, scale, coef);                                         \
  }

DFZSL_COSINE_PAIR(float, f32)
DFZSL_COSINE_PAIR(double, f64)
#undef DFZSL_COSINE_PAIR

// ------------------------------------------------------------------------------ tiling
// Rows per tile. The tile GEMMs run single-threaded and lose efficiency at small M, while the
// L2 size (1 MiB a core on the Zen 3 build machines) matters little: measured there (fp32,
// N = 65536, d = 512, cross-entropy forward + backward, 2 threads, min of 3) R = 64 / 128 / 256 /
// 512 took 1358 / 1309 / 1310 / 1298 ms at C = 1000 (~160 GFLOP/s over the three GEMMs) and
// 14.8 / 13.1 / 12.3 / 11.9 s at C = 10000 (R = 16: ~2.6x slower). So R = 256, with the logits
// tile capped at 32 MiB (very large C), and small N split so that every thread gets rows.
// DFZSL_COSINE_TILE_ROWS=<R> overrides (benchmarks, tests of the tiling).
static int64_t tile_rows(int64_t C, int64_t elem) {
  if (const char* env = std::getenv("DFZSL_COSINE_TILE_ROWS")) {
    const long v = std::strtol(env, nullptr, 10);
    if (v > 0) return static_cast<int64_t>(v);
  }
  const int64_t cap = (int64_t(32) << 20) / (elem * std::max<int64_t>(C, 1));
  return std::min<int64_t>(256, std::max<int64_t>(cap, 16));
}

// The rows are cut into one chunk per thread first, as equal as multiples of 8 allow, and each
// chunk into equal tiles of at most tile_rows: the chunks then finish together. (Cutting whole
// R-row tiles between threads instead left a batch of 1,800 rows at 1,024 + 776, and the
// short chunk's thread spun in the barrier for 12% of the classifier's kernel time.)
struct Tiling {
  int64_t R = 1, nchunks = 0, N = 0;
  // rows [begin, end) of chunk j
  int64_t begin(int64_t j) const { return std::min(N, (j * N / nchunks + 7) / 8 * 8); }
  int64_t end(int64_t j) const { return j + 1 == nchunks ? N : begin(j + 1); }
};

static Tiling make_tiling(int64_t N, int64_t C, int64_t d, int64_t elem) {
  (void)d;
  Tiling t;
  const int64_t nthreads = std::max(at::get_num_threads(), 1);
  t.N = N;
  const int64_t cap = tile_rows(C, elem);
  t.nchunks = std::min<int64_t>(nthreads, (N + 7) / 8);  // at least 8 rows a chunk
  if (t.nchunks == 0) return t;
  const int64_t per_chunk = (N + t.nchunks - 1) / t.nchunks + 7;  // the longest chunk
  const int64_t tiles = (per_chunk + cap - 1) / cap;
  t.R = std::max<int64_t>(1, std::min(cap, (per_chunk + tiles - 1) / tiles));
  return t;
}

// f(chunk, row_begin, row_end) for every chunk, the chunks in parallel.
template <typename F>
static void for_each_chunk(const Tiling& t, const F& f) {
  if (t.nchunks == 0) return;
  at::parallel_for(0, t.nchunks, 1, [&](int64_t b, int64_t e) {
    for (int64_t j = b; j < e; ++j) f(j, t.begin(j), t.end(j));
  });
}

// Sum of the per-chunk (C, d) accumulators, in chunk order (zeros when there are none).
static at::Tensor sum_parts(const std::vector<at::Tensor>& parts, int64_t C, int64_t d,
                            const at::TensorOptions& opts) {
  at::Tensor total;
  for (const auto& p : parts) {
    if (!p.defined()) continue;
    if (!total.defined()) {
      total = p;
    } else {
      total.add_(p);
    }
  }
  return total.defined() ? total : at::zeros({C, d}, opts);
}

// Row-normalised copy of a (R, d) matrix: (r_hat, denom (R,), mask (R,) uint8).
template <typename T>
static std::tuple<at::Tensor, at::Tensor, at::Tensor> normalized(const at::Tensor& m, T eps) {
  const int64_t R = m.size(0), d = m.size(1);
  at::Tensor out = at::empty({R, d}, m.options());
  at::Tensor denom = at::empty({R}, m.options());
  at::Tensor mask = at::empty({R}, m.options().dtype(at::kByte));
  const T* mp = m.data_ptr<T>();
  T* op = out.data_ptr<T>();
  T* dp = denom.data_ptr<T>();
  uint8_t* kp = mask.data_ptr<uint8_t>();
  at::parallel_for(0, R, std::max<int64_t>(1, 16384 / std::max<int64_t>(d, 1)),
                   [&](int64_t b, int64_t e) {
                     normalize_rows(mp + b * d, e - b, d, eps, op + b * d, dp + b, kp + b);
                   });
  return {out, denom, mask};
}

// g (R, d) <- normalisation backward of g at (r_hat, denom, mask), in place.
template <typename T>
static void normalize_backward_inplace(at::Tensor& g, const at::Tensor& rh,
                                       const at::Tensor& denom, const at::Tensor& mask) {
  const int64_t R = g.size(0), d = g.size(1);
  T* gp = g.data_ptr<T>();
  const T* rp = rh.data_ptr<T>();
  const T* dp = denom.data_ptr<T>();
  const uint8_t* kp = mask.data_ptr<uint8_t>();
  at::parallel_for(0, R, std::max<int64_t>(1, 16384 / std::max<int64_t>(d, 1)),
                   [&](int64_t b, int64_t e) {
                     normalize_backward_rows(gp + b * d, rp + b * d, dp + b, kp + b, e - b, d);
                   });
}

// Per-chunk scratch: the x_hat tile, the logits tile and the row norms.
template <typename T>
struct Scratch {
  at::Tensor xh, z;
  std::vector<T> denom;
  std::vector<uint8_t> mask;
  Scratch(int64_t R, int64_t C, int64_t d, const at::TensorOptions& opts)
      : xh(at::empty({R, d}, opts)), z(at::empty({R, C}, opts)), denom(R), mask(R) {}
  // Normalises rows [a, a + rows) of the batch into the tile: x's rows, or x's rows idx[a..]
  // when idx is given; returns (x_hat tile, logits tile) views.
  std::pair<at::Tensor, at::Tensor> load(const T* x, const int64_t* idx, int64_t a, int64_t rows,
                                         int64_t d, T eps) {
    normalize_rows(idx != nullptr ? x : x + a * d, rows, d, eps, xh.data_ptr<T>(), denom.data(),
                   mask.data(), idx != nullptr ? idx + a : nullptr);
    return {xh.narrow(0, 0, rows), z.narrow(0, 0, rows)};
  }
};

// ------------------------------------------------------------------------------ checks
static at::ScalarType compute_dtype(at::ScalarType t) {
  return (t == at::kHalf || t == at::kBFloat16) ? at::kFloat : t;
}

static void check_pair(const char* op, const at::Tensor& x, const at::Tensor& w,
                       const char* wname = "w") {
  TORCH_CHECK(x.dim() == 2, op, ": expected x of shape (N, d), got ", x.sizes());
  TORCH_CHECK(w.dim() == 2, op, ": expected ", wname, " of shape (C, d), got ", w.sizes());
  TORCH_CHECK(w.size(0) >= 1, op, ": expected at least one class (C >= 1), got ", wname, " ",
              w.sizes());
  TORCH_CHECK(x.size(1) == w.size(1), op, ": expected x and ", wname,
              " with the same feature dimension, got ", x.sizes(), " and ", w.sizes());
  TORCH_CHECK(x.scalar_type() == w.scalar_type(), op, ": expected x and ", wname,
              " of the same dtype, got ", x.scalar_type(), " and ", w.scalar_type());
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), op,
              ": expected floating-point x, got ", x.scalar_type());
  TORCH_CHECK(x.device().is_cpu() && w.device().is_cpu(), op,
              " (CPU kernel): expected CPU tensors, got ", x.device(), " and ", w.device());
}

// Every entry of a 1-D int64 CPU index in [0, n) (it addresses memory: never optional); the
// index, contiguous.
static at::Tensor check_index_range(const char* op, const char* name, const at::Tensor& index,
                                    int64_t n) {
  at::Tensor t = index.contiguous();
  const int64_t* tp = t.data_ptr<int64_t>();
  for (int64_t i = 0; i < t.size(0); ++i) {
    TORCH_CHECK(tp[i] >= 0 && tp[i] < n, op, ": expected ", name, " in [0, ", n, "), got ", name,
                "[", i, "] = ", tp[i]);
  }
  return t;
}

static at::Tensor check_target(const char* op, const at::Tensor& target, int64_t N, int64_t C) {
  TORCH_CHECK(target.scalar_type() == at::kLong && target.dim() == 1 && target.size(0) == N, op,
              ": expected target (", N, ",) int64, got ", target.sizes(), " ",
              target.scalar_type());
  TORCH_CHECK(target.device().is_cpu(), op, " (CPU kernel): expected target on the CPU");
  return check_index_range(op, "target", target, C);
}

static std::optional<at::Tensor> check_adjustment(const char* op,
                                                  const std::optional<at::Tensor>& adj, int64_t C,
                                                  at::ScalarType cdt) {
  if (!adj.has_value() || !adj->defined()) return std::nullopt;
  TORCH_CHECK(adj->dim() == 1 && adj->size(0) == C, op, ": expected logit_adjustment (", C,
              ",), got ", adj->sizes());
  TORCH_CHECK(at::isFloatingType(adj->scalar_type()), op,
              ": expected a floating-point logit_adjustment, got ", adj->scalar_type());
  TORCH_CHECK(adj->device().is_cpu(), op, " (CPU kernel): expected logit_adjustment on the CPU");
  return adj->to(cdt).contiguous();
}

static at::Tensor check_rows(const char* op, const char* name, const at::Tensor& v, int64_t N,
                             at::ScalarType cdt) {
  TORCH_CHECK(v.dim() == 1 && v.size(0) == N, op, ": expected ", name, " of shape (", N,
              ",), got ", v.sizes());
  TORCH_CHECK(at::isFloatingType(v.scalar_type()) && v.device().is_cpu(), op, ": expected ", name,
              " a floating-point CPU tensor, got ", v.scalar_type(), " on ", v.device());
  return v.to(cdt).contiguous();
}

// A (M,) int64 CPU index of rows of x (M = 0 allowed), each in [0, n): returned contiguous.
static at::Tensor check_row_index(const char* op, const at::Tensor& rows, int64_t n) {
  TORCH_CHECK(rows.dim() == 1 && rows.scalar_type() == at::kLong && rows.device().is_cpu(), op,
              ": expected rows a (M,) int64 CPU tensor, got ", rows.sizes(), " ",
              rows.scalar_type(), " on ", rows.device());
  return check_index_range(op, "rows", rows, n);
}

static at::Tensor empty_grad(const at::Tensor& t) { return at::empty({0, t.size(1)}, t.options()); }

// ====================================================================== cosine_logits
at::Tensor cosine_logits_cpu(const at::Tensor& x_in, const at::Tensor& w_in, double scale,
                             double eps) {
  check_pair("cosine_logits", x_in, w_in);
  const at::ScalarType cdt = compute_dtype(x_in.scalar_type());
  const at::Tensor x = x_in.to(cdt).contiguous();
  const at::Tensor w = w_in.to(cdt).contiguous();
  const int64_t N = x.size(0), d = x.size(1), C = w.size(0);
  at::Tensor out = at::empty({N, C}, x.options());
  AT_DISPATCH_FLOATING_TYPES(cdt, "cosine_logits_cpu", [&] {
    using T = scalar_t;
    const T teps = static_cast<T>(eps);
    const at::Tensor ws = std::get<0>(normalized<T>(w, teps)).mul_(scale);
    const at::Tensor wsT = ws.t();
    const T* xp = x.data_ptr<T>();
    const Tiling tl = make_tiling(N, C, d, sizeof(T));
    for_each_chunk(tl, [&](int64_t, int64_t r0, int64_t r1) {
      // the logits go straight to the output: only the x_hat tile is scratch
      at::Tensor xh = at::empty({tl.R, d}, x.options());
      std::vector<T> denom(tl.R);
      std::vector<uint8_t> mask(tl.R);
      for (int64_t a = r0; a < r1; a += tl.R) {
        const int64_t rows = std::min(tl.R, r1 - a);
        normalize_rows(xp + a * d, rows, d, teps, xh.data_ptr<T>(), denom.data(), mask.data());
        at::Tensor o = out.narrow(0, a, rows);
        at::mm_out(o, xh.narrow(0, 0, rows), wsT);
      }
    });
  });
  return out.to(x_in.scalar_type());
}

std::tuple<at::Tensor, at::Tensor> cosine_logits_backward_cpu(const at::Tensor& grad_in,
                                                              const at::Tensor& x_in,
                                                              const at::Tensor& w_in,
                                                              double scale, double eps) {
  const char* op = "cosine_logits_backward";
  check_pair(op, x_in, w_in);
  const int64_t N = x_in.size(0), d = x_in.size(1), C = w_in.size(0);
  TORCH_CHECK(grad_in.dim() == 2 && grad_in.size(0) == N && grad_in.size(1) == C, op,
              ": expected grad of shape (", N, ", ", C, "), got ", grad_in.sizes());
  TORCH_CHECK(at::isFloatingType(grad_in.scalar_type()) && grad_in.device().is_cpu(), op,
              ": expected a floating-point CPU grad, got ", grad_in.scalar_type());
  const at::ScalarType cdt = compute_dtype(x_in.scalar_type());
  const at::Tensor x = x_in.to(cdt).contiguous();
  const at::Tensor w = w_in.to(cdt).contiguous();
  const at::Tensor G = grad_in.to(cdt).contiguous();
  at::Tensor grad_x = at::empty({N, d}, x.options());
  at::Tensor grad_w;
  AT_DISPATCH_FLOATING_TYPES(cdt, "cosine_logits_backward_cpu", [&] {
    using T = scalar_t;
    const T teps = static_cast<T>(eps);
    auto [wh, wd, wm] = normalized<T>(w, teps);
    const at::Tensor ws = wh * scale;
    const T* xp = x.data_ptr<T>();
    const Tiling tl = make_tiling(N, C, d, sizeof(T));
    std::vector<at::Tensor> parts(tl.nchunks);
    for_each_chunk(tl, [&](int64_t j, int64_t r0, int64_t r1) {
      at::Tensor xh = at::empty({tl.R, d}, x.options());
      std::vector<T> denom(tl.R);
      std::vector<uint8_t> mask(tl.R);
      at::Tensor part = at::zeros({C, d}, x.options());
      for (int64_t a = r0; a < r1; a += tl.R) {
        const int64_t rows = std::min(tl.R, r1 - a);
        normalize_rows(xp + a * d, rows, d, teps, xh.data_ptr<T>(), denom.data(), mask.data());
        const at::Tensor xhs = xh.narrow(0, 0, rows);
        const at::Tensor Gs = G.narrow(0, a, rows);
        at::Tensor gx = grad_x.narrow(0, a, rows);
        at::mm_out(gx, Gs, ws);
        normalize_backward_rows(gx.data_ptr<T>(), xh.data_ptr<T>(), denom.data(), mask.data(),
                                rows, d);
        part.addmm_(Gs.t(), xhs);
      }
      parts[j] = part;
    });
    grad_w = sum_parts(parts, C, d, x.options()).mul_(scale);
    normalize_backward_inplace<T>(grad_w, wh, wd, wm);
  });
  return {grad_x.to(x_in.scalar_type()), grad_w.to(w_in.scalar_type())};
}

// ================================================================ cosine_cross_entropy
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> cosine_cross_entropy_cpu(
    const at::Tensor& x_in, const at::Tensor& w_in, const at::Tensor& target_in,
    const std::optional<at::Tensor>& logit_adjustment, double scale, double eps,
    double label_smoothing, int64_t reduction, bool compute_grad, bool compute_grad_x,
    const std::optional<at::Tensor>& rows_in) {
  const char* op = "cosine_cross_entropy";
  check_pair(op, x_in, w_in);
  TORCH_CHECK(reduction >= 0 && reduction <= 2, op,
              ": expected reduction 0 (none), 1 (mean) or 2 (sum), got ", reduction);
  const int64_t d = x_in.size(1), C = w_in.size(0);
  const at::ScalarType cdt = compute_dtype(x_in.scalar_type());
  // rows: the batch is x[rows], read row by row by the tiles' normalisation pass instead of
  // being gathered into a (N, d) copy first (float32/float64 x; a half x is gathered, then
  // converted, as without rows)
  at::Tensor x, index;
  if (rows_in.has_value() && rows_in->defined()) {
    index = check_row_index(op, *rows_in, x_in.size(0));
    if (cdt == x_in.scalar_type()) {
      x = x_in.contiguous();
    } else {
      x = x_in.index_select(0, index).to(cdt);
      index = at::Tensor();
    }
  } else {
    x = x_in.to(cdt).contiguous();
  }
  const int64_t N = index.defined() ? index.size(0) : x.size(0);
  const at::Tensor target = check_target(op, target_in, N, C);
  const std::optional<at::Tensor> adj = check_adjustment(op, logit_adjustment, C, cdt);
  const at::Tensor w = w_in.to(cdt).contiguous();
  const bool with_grad = compute_grad && reduction != 0;
  // compute_grad_x = false: features that do not require grad (a classifier trained on fixed
  // features); the P @ ws GEMM and the normalisation backward of every tile are skipped
  const bool with_gx = with_grad && compute_grad_x;
  at::Tensor loss_rows = at::empty({N}, x.options());
  at::Tensor lse = at::empty({N}, x.options());
  at::Tensor grad_x, grad_w;
  if (with_gx) grad_x = at::empty({N, d}, x.options());
  AT_DISPATCH_FLOATING_TYPES(cdt, "cosine_cross_entropy_cpu", [&] {
    using T = scalar_t;
    const T teps = static_cast<T>(eps);
    const T ls = static_cast<T>(label_smoothing);
    const T rw = (reduction == 1 && N > 0) ? T(1) / static_cast<T>(N) : T(1);
    auto [wh, wd, wm] = normalized<T>(w, teps);
    const at::Tensor ws = wh * scale;  // logits = x_hat @ ws^T
    const at::Tensor wsT = ws.t();
    const T* xp = x.data_ptr<T>();
    const int64_t* ip = index.defined() ? index.data_ptr<int64_t>() : nullptr;
    const T* ap = adj.has_value() ? adj->data_ptr<T>() : nullptr;
    const int64_t* tp = target.data_ptr<int64_t>();
    T* lossp = loss_rows.data_ptr<T>();
    T* lsep = lse.data_ptr<T>();
    const Tiling tl = make_tiling(N, C, d, sizeof(T));
    std::vector<at::Tensor> parts(tl.nchunks);
    for_each_chunk(tl, [&](int64_t j, int64_t r0, int64_t r1) {
      Scratch<T> s(tl.R, C, d, x.options());
      at::Tensor part;
      if (with_grad) part = at::zeros({C, d}, x.options());
      for (int64_t a = r0; a < r1; a += tl.R) {
        const int64_t rows = std::min(tl.R, r1 - a);
        auto [xhs, zs] = s.load(xp, ip, a, rows, d, teps);
        at::mm_out(zs, xhs, wsT);
        ce_forward_rows(zs.data_ptr<T>(), rows, C, ap, tp + a, ls, rw, with_grad, lsep + a,
                        lossp + a);
        if (with_grad) {  // zs now holds P
          if (with_gx) {
            at::Tensor gx = grad_x.narrow(0, a, rows);
            at::mm_out(gx, zs, ws);
            normalize_backward_rows(gx.data_ptr<T>(), xhs.data_ptr<T>(), s.denom.data(),
                                    s.mask.data(), rows, d);
          }
          part.addmm_(zs.t(), xhs);
        }
      }
      parts[j] = part;
    });
    if (with_grad) {
      grad_w = sum_parts(parts, C, d, x.options()).mul_(scale);
      normalize_backward_inplace<T>(grad_w, wh, wd, wm);
    }
  });
  at::Tensor loss;
  if (reduction == 0) {
    loss = loss_rows;
  } else if (reduction == 1) {
    loss = N > 0 ? loss_rows.sum() / static_cast<double>(N)
                 : loss_rows.sum() * std::numeric_limits<double>::quiet_NaN();
  } else {
    loss = loss_rows.sum();
  }
  const at::ScalarType odt = x_in.scalar_type();
  if (with_grad) {
    return {loss.to(odt), lse.to(odt), with_gx ? grad_x.to(odt) : empty_grad(x_in),
            grad_w.to(w_in.scalar_type())};
  }
  return {loss.to(odt), lse.to(odt), empty_grad(x_in), empty_grad(w_in)};
}

std::tuple<at::Tensor, at::Tensor> cosine_cross_entropy_backward_cpu(
    const at::Tensor& grad_loss_in, const at::Tensor& x_in, const at::Tensor& w_in,
    const at::Tensor& target_in, const std::optional<at::Tensor>& logit_adjustment,
    const at::Tensor& lse_in, double scale, double eps, double label_smoothing) {
  const char* op = "cosine_cross_entropy_backward";
  check_pair(op, x_in, w_in);
  const int64_t N = x_in.size(0), d = x_in.size(1), C = w_in.size(0);
  const at::ScalarType cdt = compute_dtype(x_in.scalar_type());
  const at::Tensor target = check_target(op, target_in, N, C);
  const std::optional<at::Tensor> adj = check_adjustment(op, logit_adjustment, C, cdt);
  const at::Tensor g = check_rows(op, "grad_loss", grad_loss_in, N, cdt);
  const at::Tensor lse = check_rows(op, "lse", lse_in, N, cdt);
  const at::Tensor x = x_in.to(cdt).contiguous();
  const at::Tensor w = w_in.to(cdt).contiguous();
  at::Tensor grad_x = at::empty({N, d}, x.options());
  at::Tensor grad_w;
  AT_DISPATCH_FLOATING_TYPES(cdt, "cosine_cross_entropy_backward_cpu", [&] {
    using T = scalar_t;
    const T teps = static_cast<T>(eps);
    const T ls = static_cast<T>(label_smoothing);
    auto [wh, wd, wm] = normalized<T>(w, teps);
    const at::Tensor ws = wh * scale;
    const at::Tensor wsT = ws.t();
    const T* xp = x.data_ptr<T>();
    const T* ap = adj.has_value() ? adj->data_ptr<T>() : nullptr;
    const int64_t* tp = target.data_ptr<int64_t>();
    const T* gp = g.data_ptr<T>();
    const T* lsep = lse.data_ptr<T>();
    const Tiling tl = make_tiling(N, C, d, sizeof(T));
    std::vector<at::Tensor> parts(tl.nchunks);
    for_each_chunk(tl, [&](int64_t j, int64_t r0, int64_t r1) {
      Scratch<T> s(tl.R, C, d, x.options());
      at::Tensor part = at::zeros({C, d}, x.options());
      for (int64_t a = r0; a < r1; a += tl.R) {
        const int64_t rows = std::min(tl.R, r1 - a);
        auto [xhs, zs] = s.load(xp, nullptr, a, rows, d, teps);
        at::mm_out(zs, xhs, wsT);
        ce_backward_rows(zs.data_ptr<T>(), rows, C, ap, tp + a, lsep + a, gp + a, ls);
        at::Tensor gx = grad_x.narrow(0, a, rows);
        at::mm_out(gx, zs, ws);
        normalize_backward_rows(gx.data_ptr<T>(), xhs.data_ptr<T>(), s.denom.data(),
                                s.mask.data(), rows, d);
        part.addmm_(zs.t(), xhs);
      }
      parts[j] = part;
    });
    grad_w = sum_parts(parts, C, d, x.options()).mul_(scale);
    normalize_backward_inplace<T>(grad_w, wh, wd, wm);
  });
  return {grad_x.to(x_in.scalar_type()), grad_w.to(w_in.scalar_type())};
}

// ========================================================================= cosine_topk
std::tuple<at::Tensor, at::Tensor> cosine_topk_cpu(const at::Tensor& x_in, const at::Tensor& w_in,
                                                   int64_t k, double scale, double eps) {
  const char* op = "cosine_topk";
  check_pair(op, x_in, w_in);
  const int64_t N = x_in.size(0), d = x_in.size(1), C = w_in.size(0);
  TORCH_CHECK(k >= 1 && k <= C, op, ": expected 1 <= k <= C = ", C, ", got k = ", k);
  const at::ScalarType cdt = compute_dtype(x_in.scalar_type());
  const at::Tensor x = x_in.to(cdt).contiguous();
  const at::Tensor w = w_in.to(cdt).contiguous();
  at::Tensor scores = at::empty({N, k}, x.options());
  at::Tensor idx = at::empty({N, k}, x.options().dtype(at::kLong));
  AT_DISPATCH_FLOATING_TYPES(cdt, "cosine_topk_cpu", [&] {
    using T = scalar_t;
    const T teps = static_cast<T>(eps);
    const at::Tensor ws = std::get<0>(normalized<T>(w, teps)).mul_(scale);
    const at::Tensor wsT = ws.t();
    const T* xp = x.data_ptr<T>();
    T* sp = scores.data_ptr<T>();
    int64_t* ip = idx.data_ptr<int64_t>();
    const Tiling tl = make_tiling(N, C, d, sizeof(T));
    for_each_chunk(tl, [&](int64_t, int64_t r0, int64_t r1) {
      Scratch<T> s(tl.R, C, d, x.options());
      std::vector<std::pair<T, int64_t>> queue(C);
      for (int64_t a = r0; a < r1; a += tl.R) {
        const int64_t rows = std::min(tl.R, r1 - a);
        auto [xhs, zs] = s.load(xp, nullptr, a, rows, d, teps);
        at::mm_out(zs, xhs, wsT);
        const T* zp = zs.data_ptr<T>();
        for (int64_t i = 0; i < rows; ++i) {
          detail::topk_row(zp + i * C, C, k, queue.data(), sp + (a + i) * k, ip + (a + i) * k);
        }
      }
    });
  });
  return {scores.to(x_in.scalar_type()), idx};
}

// ==================================================================== cosine_logit_mse
std::tuple<at::Tensor, at::Tensor, at::Tensor> cosine_logit_mse_cpu(
    const at::Tensor& x_in, const at::Tensor& ws_in, const at::Tensor& wt_in, double scale_s,
    double scale_t, double eps, bool compute_grad) {
  const char* op = "cosine_logit_mse";
  check_pair(op, x_in, ws_in, "w_student");
  check_pair(op, x_in, wt_in, "w_teacher");
  TORCH_CHECK(ws_in.sizes() == wt_in.sizes(), op,
              ": expected w_student and w_teacher of the same shape, got ", ws_in.sizes(), " and ",
              wt_in.sizes());
  const int64_t N = x_in.size(0), d = x_in.size(1), C = ws_in.size(0);
  const at::ScalarType cdt = compute_dtype(x_in.scalar_type());
  const at::Tensor x = x_in.to(cdt).contiguous();
  const at::Tensor wstu = ws_in.to(cdt).contiguous();
  const at::Tensor wtea = wt_in.to(cdt).contiguous();
  at::Tensor grad_x, grad_w;
  if (compute_grad) grad_x = at::empty({N, d}, x.options());
  double total = 0;
  AT_DISPATCH_FLOATING_TYPES(cdt, "cosine_logit_mse_cpu", [&] {
    using T = scalar_t;
    const T teps = static_cast<T>(eps);
    auto [wsh, wsd, wsm] = normalized<T>(wstu, teps);
    const at::Tensor wth = std::get<0>(normalized<T>(wtea, teps));
    const at::Tensor Ws = wsh * scale_s;
    const at::Tensor D = Ws - wth * scale_t;  // student - teacher logits = x_hat @ D^T
    const at::Tensor DT = D.t();
    const T coef = (N * C > 0) ? static_cast<T>(2.0 / static_cast<double>(N * C)) : T(0);
    const T* xp = x.data_ptr<T>();
    const Tiling tl = make_tiling(N, C, d, sizeof(T));
    std::vector<at::Tensor> parts(tl.nchunks);
    std::vector<double> sums(tl.nchunks, 0.0);
    for_each_chunk(tl, [&](int64_t j, int64_t r0, int64_t r1) {
      Scratch<T> s(tl.R, C, d, x.options());
      at::Tensor part;
      if (compute_grad) part = at::zeros({C, d}, x.options());
      double acc = 0;
      for (int64_t a = r0; a < r1; a += tl.R) {
        const int64_t rows = std::min(tl.R, r1 - a);
        auto [xhs, es] = s.load(xp, nullptr, a, rows, d, teps);
        at::mm_out(es, xhs, DT);
        acc += sumsq_scale(es.data_ptr<T>(), rows, C, compute_grad, coef);
        if (compute_grad) {  // the teacher is detached: x's gradient flows through Ws only
          at::Tensor gx = grad_x.narrow(0, a, rows);
          at::mm_out(gx, es, Ws);
          normalize_backward_rows(gx.data_ptr<T>(), xhs.data_ptr<T>(), s.denom.data(),
                                  s.mask.data(), rows, d);
          part.addmm_(es.t(), xhs);
        }
      }
      parts[j] = part;
      sums[j] = acc;
    });
    for (double v : sums) total += v;
    if (compute_grad) {
      grad_w = sum_parts(parts, C, d, x.options()).mul_(scale_s);
      normalize_backward_inplace<T>(grad_w, wsh, wsd, wsm);
    }
  });
  const double nc = static_cast<double>(N * C);
  const double value = N * C > 0 ? total / nc : std::numeric_limits<double>::quiet_NaN();
  at::Tensor loss = at::scalar_tensor(value, x_in.options());
  if (compute_grad) {
    return {loss, grad_x.to(x_in.scalar_type()), grad_w.to(ws_in.scalar_type())};
  }
  return {loss, empty_grad(x_in), empty_grad(ws_in)};
}

}  // namespace cpu
}  // namespace dfzsl_fast

TORCH_LIBRARY_IMPL(dfzsl_fast, CPU, m) {
  m.impl("cosine_logits", &dfzsl_fast::cpu::cosine_logits_cpu);
  m.impl("cosine_logits_backward", &dfzsl_fast::cpu::cosine_logits_backward_cpu);
  m.impl("cosine_cross_entropy", &dfzsl_fast::cpu::cosine_cross_entropy_cpu);
  m.impl("cosine_cross_entropy_backward", &dfzsl_fast::cpu::cosine_cross_entropy_backward_cpu);
  m.impl("cosine_topk", &dfzsl_fast::cpu::cosine_topk_cpu);
  m.impl("cosine_logit_mse", &dfzsl_fast::cpu::cosine_logit_mse_cpu);
}
