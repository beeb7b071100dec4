// Torch-free row math of the fused cosine-classifier ops (csrc/cpu/cosine_cpu.cpp).
//
// Normalisation follows torch.nn.functional.normalize: r_hat = r / max(|r|, eps). Its gradient
// (the "normalisation backward") of sum(g * r_hat) is
//     (g - r_hat (g . r_hat)) / |r|   when |r| >= eps,
//     g / eps                         on the clamped branch |r| < eps (r_hat = r / eps is linear),
// i.e. (g - r_hat * dot * mask) / denom with denom = max(|r|, eps), mask = |r| >= eps.
//
// Cross-entropy of one row z (C logits, + optional adjustment a) with target t and label
// smoothing ls (as torch.nn.functional.cross_entropy defines it):
//     lse  = m + log sum_c exp(z_c - m),  m = max_c z_c  (m := 0 when |m| = inf, as torch does)
//     loss = lse - (1 - ls) z_t - (ls / C) sum_c z_c          (the last term only when ls > 0)
//     dloss/dz_c = softmax_c - ls / C - (1 - ls) [c == t]
// The row kernels below hold the whole row (all C classes) in a cache-resident tile, so the
// exponentials are computed once (softmax_c = exp(z_c - m) / sum) and no online merge is needed.
//
// Written as straight-line loops over contiguous rows so that they vectorise (the callers compile
// an AVX2+FMA clone); float32 uses a branch-free exp (exp_f32) that vectorises, float64 std::exp.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <utility>

#include "macros.h"

namespace dfzsl_fast {
namespace detail {

// exp(x) for float32, branch-free (vectorisable), < 1 ulp over the normal range (checked against
// double exp on a dense grid of [-103.9, 88.7]), with
// exact 0 / +inf / NaN at the extremes. x = n ln2 + r, |r| <= ln2 / 2 (Cody-Waite split), exp(r)
// by its Taylor series to r^7 (truncation < 6e-9 relative), 2^n applied as two exact powers of
// two so that results down into the subnormal range are correctly scaled.
inline float exp_f32(float x) {
  const float kHi = 88.72283935546875f;   // largest x with a finite exp(x)
  const float kLo = -103.97208404541016f;  // exp(x) < smallest subnormal / 2 below this
  float xc = x < kLo ? kLo : x;
  xc = xc > kHi ? kHi : xc;
  const float n = std::floor(xc * 1.44269504088896341f + 0.5f);
  float r = xc - n * 0.693359375f;
  r = r + n * 2.12194440e-4f;
  float p = 1.0f / 5040.0f;
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const int32_t ni = static_cast<int32_t>(n);
  const int32_t n1 = ni / 2;
  const int32_t n2 = ni - n1;
  const uint32_t b1 = static_cast<uint32_t>(n1 + 127) << 23;
  const uint32_t b2 = static_cast<uint32_t>(n2 + 127) << 23;
  float s1, s2;
  std::memcpy(&s1, &b1, sizeof(s1));
  std::memcpy(&s2, &b2, sizeof(s2));
  float y = p * s1 * s2;
  y = x > kHi ? std::numeric_limits<float>::infinity() : y;
  y = x < kLo ? 0.0f : y;
  return x != x ? x : y;
}

inline float fexp(float x) { return exp_f32(x); }
inline double fexp(double x) { return std::exp(x); }

// Sum of squares of a row (accumulated in T: float for float32, as at::opmath_type).
template <typename T>
inline T row_sumsq(const T* r, int64_t d) {
  T s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t k = 0; k < d; ++k) s += r[k] * r[k];
  return s;
}

// out = r / denom, denom = max(|r|, eps); returns denom and sets mask = |r| >= eps.
template <typename T>
inline T normalize_row(const T* r, int64_t d, T eps, T* out, uint8_t* mask) {
  const T n = std::sqrt(row_sumsq(r, d));
  const T denom = n > eps ? n : eps;  // clamp_min; a NaN norm stays NaN through the division
  *mask = n >= eps ? 1 : 0;
  if (out != nullptr) {
#pragma omp simd
    for (int64_t k = 0; k < d; ++k) out[k] = r[k] / denom;
  }
  return n != n ? n : denom;
}

// g <- (g - r_hat (g . r_hat) mask) / denom, in place (the normalisation backward).
template <typename T>
inline void normalize_backward_row(T* g, const T* rh, T denom, uint8_t mask, int64_t d) {
  T dot = 0;
  if (mask) {
#pragma omp simd reduction(+ : dot)
    for (int64_t k = 0; k < d; ++k) dot += g[k] * rh[k];
  }
#pragma omp simd
  for (int64_t k = 0; k < d; ++k) g[k] = (g[k] - rh[k] * dot) / denom;
}

// Forward cross-entropy of one row, in place. z: the C logits (adj added in place when given).
// Writes lse and the row loss; when `grad`, replaces z by rw * dloss/dz (the row of P).
template <typename T>
inline void ce_row_forward(T* z, int64_t C, const T* adj, int64_t t, T ls, T rw, bool grad,
                           T* lse_out, T* loss_out) {
  if (adj != nullptr) {
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) z[c] += adj[c];
  }
  // A NaN logit makes the sum (hence lse, loss and the row of P) NaN whatever m is.
  T m = -std::numeric_limits<T>::infinity();
#pragma omp simd reduction(max : m)
  for (int64_t c = 0; c < C; ++c) m = std::max(m, z[c]);
  if (std::isinf(m)) m = 0;  // all -inf (lse = -inf) or some +inf (lse = +inf), as torch
  const T zt = z[t];
  T zsum = 0;
  if (ls != T(0)) {
#pragma omp simd reduction(+ : zsum)
    for (int64_t c = 0; c < C; ++c) zsum += z[c];
  }
  T s = 0;
  if (grad) {
#pragma omp simd reduction(+ : s)
    for (int64_t c = 0; c < C; ++c) {
      const T e = fexp(z[c] - m);
      z[c] = e;
      s += e;
    }
  } else {
#pragma omp simd reduction(+ : s)
    for (int64_t c = 0; c < C; ++c) s += fexp(z[c] - m);
  }
  const T lse = m + std::log(s);
  T loss = lse - (T(1) - ls) * zt;
  if (ls != T(0)) loss = loss - (ls / static_cast<T>(C)) * zsum;
  *lse_out = lse;
  *loss_out = loss;
  if (!grad) return;
  const T inv = T(1) / s;
  const T lsc = ls / static_cast<T>(C);
  const T et = z[t];
  if (ls != T(0)) {
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) z[c] = (z[c] * inv - lsc) * rw;
  } else {
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) z[c] = z[c] * inv * rw;
  }
  // the target: ((p_t - ls/C) - (1 - ls)) * rw, in the default kernel's order of operations
  z[t] = ((et * inv - lsc) - (T(1) - ls)) * rw;
}

// Backward of one row from the saved lse: z <- g * (exp(z + adj - lse) - ls/C - (1 - ls)[c == t]).
template <typename T>
inline void ce_row_backward(T* z, int64_t C, const T* adj, int64_t t, T lse, T ls, T g) {
  const T lsc = ls / static_cast<T>(C);
  const T zt = adj != nullptr ? z[t] + adj[t] : z[t];
  if (adj != nullptr) {
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) z[c] = (fexp(z[c] + adj[c] - lse) - lsc) * g;
  } else {
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) z[c] = (fexp(z[c] - lse) - lsc) * g;
  }
  // the target in the default kernel's order (subtract, then scale): exactly 0 for C = 1, where
  // a fused multiply-add of the form z_t - (1 - ls) g would leave a rounding residue
  z[t] = ((fexp(zt - lse) - lsc) - (T(1) - ls)) * g;
}

// The k largest of z[0 .. C) (NaN counts as largest), sorted descending, exactly as
// at::native::topk_impl_loop (ATen/native/TopKImpl.h) selects them: the same std algorithms with
// the same comparator on (value, index) pairs in index order, so ties come out as torch.topk
// orders them. queue: scratch of C pairs.
template <typename T>
inline void topk_row(const T* z, int64_t C, int64_t k, std::pair<T, int64_t>* queue, T* vals,
                     int64_t* idx) {
  using elem_t = std::pair<T, int64_t>;
  for (int64_t c = 0; c < C; ++c) {
    queue[c].first = z[c];
    queue[c].second = c;
  }
  auto greater = [](const elem_t& a, const elem_t& b) -> bool {
    return ((std::isnan(a.first) && !std::isnan(b.first)) || (a.first > b.first));
  };
  if (k * 64 <= C) {
    std::partial_sort(queue, queue + k, queue + C, greater);
  } else {
    std::nth_element(queue, queue + k - 1, queue + C, greater);
    std::sort(queue, queue + k - 1, greater);
  }
  for (int64_t j = 0; j < k; ++j) {
    vals[j] = queue[j].first;
    idx[j] = queue[j].second;
  }
}

}  // namespace detail
}  // namespace dfzsl_fast
