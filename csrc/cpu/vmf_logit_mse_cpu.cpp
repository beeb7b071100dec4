// CPU kernel of dfzsl_fast::vmf_logit_mse: one fused step of DFZSL's stage-1 fit (method.md 2.3),
// the loss and its gradient in the mean directions without the (N, d) samples or the (N, C)
// logits ever existing at full size.
//
// What it computes (the composition it replaces, dfzsl_fast/ops/vmf_fit.py: _composed):
//     mh  = normalize(mu) in float64, rounded to mu's dtype     (sample_vmf's mean directions)
//     x_i ~ vMF(mh_c, kappa_c), i = 0 .. N-1, N = C * nsample, class c = i / nsample (class-major),
//           row i from the Philox stream (seed, offset + i)        (vmf_rows.h, as vmf_sample)
//     L   = 1/(N C) sum_i sum_c (x_i . D_c)^2,  D = s_s ws_hat - s_t wt_hat  (cosine_logit_mse,
//           teacher detached; ws_hat = mu / max(|mu|, eps), wt_hat likewise)
//     dL/dmu through both paths: the student weights and the reparameterised samples
//           (autograd/vmf.py: vmf_backward) followed by the normalisations' backward.
//
// Why no (N, C) GEMMs: every quantity the step needs is a quadratic form in x_i, so it goes
// through d x d matrices instead of the C classes:
//   - S = sum_i x_i x_i^T gives the loss, L = <D S, D> / (N C), and the student-path gradient,
//     dL/dWs = coef D S with coef = 2 / (N C) (the composed kernel's E^T x_hat equals D S);
//   - the gradient reaching sample i is g_i = coef K x_i with K = Ws^T D (the composed kernel's
//     E_i @ Ws), so one GEMM Y = X K^T per tile gives every g_i.
// Two N x d x d GEMMs against the composed kernel's three N x d x C ones (and the sampler's
// backward, about ten (N, d) elementwise passes there, becomes a per-row epilogue here).
//
// The sampler path, per row (vmf_backward with G = g - a x the gradient after x's normalisation,
// a = g . x; G . x = 0, so G . u = -w (G . mu) with u = x - w mu, rho = sqrt(1 - w^2)):
//     r_i = (w - q rho) G - Gm (1 + w q/rho) u - q rho Gm mu,   Gm = G . mh_c = g . mh_c - a w
//         = coef (w - q rho) Y_i + beta_i x_i + (terms along mh_c),
//     beta_i = -(w - q rho) a - Gm (1 + w q/rho).
// The terms along mh_c are not formed: the backward of mh = mu/|mu| projects them out (to the
// rounding of mh, i.e. to float rounding, as is the difference between |x_i| and 1, which the
// composed path divides by). acc_c = sum_{i in c} r_i, then dL/dmu = (acc - mh (mh . acc)) / |mu|.
//
// Layouts: mu, w_teacher (C, d) float32 or float64 (the compute dtype: the GEMMs and samples run in
// it); kappa (C,) float64. The small (C, d) and (d, d) algebra (normalisations, K, D S, the loss,
// both normalisation backwards) runs in float64.
// Threading: one contiguous chunk of rows per thread (at::parallel_for); each chunk owns its
// scratch (tile X, Y of R x d, a d x d product) and float64 accumulators S (d, d) and acc (C, d),
// summed in chunk order afterwards: the result depends on the thread count, not on scheduling.
// The per-tile GEMMs are at::mm_out calls (single-threaded inside parallel_for), accumulated into
// float64 per tile so S keeps float64 sums over all N rows.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <tuple>
#include <vector>

#include "dfzsl/vmf.h"
#include "vmf_rows.h"

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define DFZSL_FIT_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define DFZSL_FIT_CLONES
#endif

namespace dfzsl_fast {
namespace cpu {

using detail::WoodConstants;

namespace {

// Rows per tile: X and Y tiles of 256 x 512 floats (512 KiB each) stay in L2 with the d x d
// matrix streaming; fewer, larger tiles cost more cache, smaller ones more GEMM calls.
constexpr int64_t kTileRows = 256;

// The per-row epilogue of one tile: acc[c] += coef (w - q rho) Y_i + beta_i x_i (see the header).
// x, y: the tile's rows (rows x d); w, q: the sampler's per-row scalars; mh: (C, d) mean
// directions in the compute dtype (the sampler's); lab: class of each row.
template <typename T>
inline void epilogue_rows(const T* x, const T* y, const double* w, const double* q,
                          const int64_t* lab, const T* mh, int64_t d, int64_t rows, double coef,
                          double* acc) {
  for (int64_t i = 0; i < rows; ++i) {
    const T* xi = x + i * d;
    const T* yi = y + i * d;
    const int64_t c = lab[i];
    const T* m = mh + c * d;
    T xy = 0, ym = 0;
#pragma omp simd reduction(+ : xy, ym)
    for (int64_t k = 0; k < d; ++k) {
      xy += xi[k] * yi[k];
      ym += yi[k] * m[k];
    }
    const double wi = w[i];
    const double a = coef * static_cast<double>(xy);    // g . x
    const double gm = coef * static_cast<double>(ym);   // g . mh
    // rho and q/rho as autograd/vmf.py forms them (q/rho = 0 where rho = 0: w = +-1 exactly)
    const double rho = std::sqrt(std::max(1.0 - wi * wi, 0.0));
    const double q_over_rho = rho > 0.0 ? q[i] / rho : 0.0;
    const double Gm = gm - a * wi;
    const double t = wi - q[i] * rho;
    const double alpha = coef * t;
    const double beta = -t * a - Gm * (1.0 + wi * q_over_rho);
    double* ac = acc + c * d;
#pragma omp simd
    for (int64_t k = 0; k < d; ++k) {
      ac[k] += alpha * static_cast<double>(yi[k]) + beta * static_cast<double>(xi[k]);
    }
  }
}

// dst (n doubles) += src (n floats or doubles)
template <typename T>
inline void add_to_double(double* dst, const T* src, int64_t n) {
#pragma omp simd
  for (int64_t k = 0; k < n; ++k) dst[k] += static_cast<double>(src[k]);
}

DFZSL_FIT_CLONES void epilogue_rows_f32(const float* x, const float* y, const double* w,
                                        const double* q, const int64_t* lab, const float* mh,
                                        int64_t d, int64_t rows, double coef, double* acc) {
  epilogue_rows<float>(x, y, w, q, lab, mh, d, rows, coef, acc);
}

DFZSL_FIT_CLONES void epilogue_rows_f64(const double* x, const double* y, const double* w,
                                        const double* q, const int64_t* lab, const double* mh,
                                        int64_t d, int64_t rows, double coef, double* acc) {
  epilogue_rows<double>(x, y, w, q, lab, mh, d, rows, coef, acc);
}

DFZSL_FIT_CLONES void add_to_double_f32(double* dst, const float* src, int64_t n) {
  add_to_double<float>(dst, src, n);
}

DFZSL_FIT_CLONES void add_to_double_f64(double* dst, const double* src, int64_t n) {
  add_to_double<double>(dst, src, n);
}

inline void epilogue_any(const float* x, const float* y, const double* w, const double* q,
                         const int64_t* lab, const float* mh, int64_t d, int64_t rows, double coef,
                         double* acc) {
  epilogue_rows_f32(x, y, w, q, lab, mh, d, rows, coef, acc);
}

inline void epilogue_any(const double* x, const double* y, const double* w, const double* q,
                         const int64_t* lab, const double* mh, int64_t d, int64_t rows,
                         double coef, double* acc) {
  epilogue_rows_f64(x, y, w, q, lab, mh, d, rows, coef, acc);
}

inline void add_any(double* dst, const float* src, int64_t n) { add_to_double_f32(dst, src, n); }
inline void add_any(double* dst, const double* src, int64_t n) { add_to_double_f64(dst, src, n); }

void check_args(const at::Tensor& mu, const at::Tensor& kappa, const at::Tensor& wt,
                int64_t nsample, int64_t offset, int64_t mode, double eps) {
  const char* op = "vmf_logit_mse";
  TORCH_CHECK(mu.dim() == 2 && mu.size(1) >= 2, op, ": expected mu of shape (C, d) with d >= 2, got ",
              mu.sizes());
  TORCH_CHECK(mu.scalar_type() == at::kFloat || mu.scalar_type() == at::kDouble, op,
              ": expected mu float32 or float64, got ", mu.scalar_type());
  TORCH_CHECK(wt.sizes() == mu.sizes() && wt.scalar_type() == mu.scalar_type(), op,
              ": expected w_teacher of mu's shape ", mu.sizes(), " and dtype ", mu.scalar_type(),
              ", got ", wt.sizes(), " ", wt.scalar_type());
  TORCH_CHECK(kappa.dim() == 1 && kappa.size(0) == mu.size(0) &&
                  kappa.scalar_type() == at::kDouble,
              op, ": expected kappa (", mu.size(0), ",) float64, got ", kappa.sizes(), " ",
              kappa.scalar_type());
  TORCH_CHECK(mu.device().is_cpu() && kappa.device().is_cpu() && wt.device().is_cpu(), op,
              " (CPU kernel): expected CPU tensors");
  TORCH_CHECK(nsample >= 1, op, ": expected nsample >= 1, got ", nsample);
  TORCH_CHECK(mode == 0 || mode == 1, op, ": expected mode 0 (exact) or 1 (reference), got ",
              mode);
  TORCH_CHECK(eps > 0.0 && std::isfinite(eps), op, ": expected a finite eps > 0, got ", eps);
  const int64_t C = mu.size(0);
  TORCH_CHECK(C == 0 || nsample <= std::numeric_limits<int64_t>::max() / C, op,
              ": C * nsample overflows int64");
  TORCH_CHECK(offset >= 0 && offset <= std::numeric_limits<int64_t>::max() - C * nsample, op,
              ": expected 0 <= offset <= 2^63 - 1 - N, got ", offset);
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> vmf_logit_mse_cpu(const at::Tensor& mu_in,
                                                     const at::Tensor& kappa_in,
                                                     const at::Tensor& wt_in, int64_t nsample,
                                                     int64_t seed, int64_t offset, int64_t mode,
                                                     double scale_s, double scale_t, double eps) {
  check_args(mu_in, kappa_in, wt_in, nsample, offset, mode, eps);
  const int64_t C = mu_in.size(0), d = mu_in.size(1), N = C * nsample;
  const at::ScalarType cdt = mu_in.scalar_type();
  if (N == 0) {  // as the composed path: the mean over no entries
    return {at::scalar_tensor(std::numeric_limits<double>::quiet_NaN(), mu_in.options()),
            at::zeros_like(mu_in)};
  }
  const at::Tensor kappa = kappa_in.contiguous();
  std::vector<WoodConstants> consts(C);
  const double* kap = kappa.data_ptr<double>();
  for (int64_t c = 0; c < C; ++c) {
    TORCH_CHECK(std::isfinite(kap[c]) && kap[c] >= 0.0,
                "vmf_logit_mse: expected finite kappa >= 0, got kappa[", c, "] = ", kap[c]);
    consts[c] = detail::wood_constants(d, kap[c], static_cast<detail::WoodMode>(mode));
  }

  // ---- (C, d) and (d, d) algebra in float64
  const at::Tensor mu64 = mu_in.to(at::kDouble).contiguous();
  // The sampler's mean directions, scale-safe as ops/vmf.py: _normalize_rows: rows divided by
  // their max |entry|, normalised in float64, rounded to the compute dtype once.
  const at::Tensor amax = mu64.abs().amax(1, true).clamp_min(std::numeric_limits<double>::min());
  const at::Tensor scaled = mu64 / amax;
  const at::Tensor snorm = at::linalg_vector_norm(scaled, 2, {1}, true);
  const at::Tensor mh64 = scaled / snorm;
  const at::Tensor mu_norm = snorm * amax;  // |mu|, for the backward of mh = mu / |mu|
  const at::Tensor mh = mh64.to(cdt).contiguous();
  // Student and teacher directions as cosine_logit_mse forms them: r / max(|r|, eps).
  const at::Tensor s_norm = at::linalg_vector_norm(mu64, 2, {1}, true);
  const at::Tensor s_den = s_norm.clamp_min(eps);
  const at::Tensor s_mask = (s_norm >= eps).to(at::kDouble);
  const at::Tensor wsh = mu64 / s_den;
  const at::Tensor wt64 = wt_in.to(at::kDouble);
  const at::Tensor wth = wt64 / at::linalg_vector_norm(wt64, 2, {1}, true).clamp_min(eps);
  const at::Tensor Ws = wsh * scale_s;
  const at::Tensor D = Ws - wth * scale_t;               // (C, d): student - teacher logits = x D^T
  const at::Tensor KT = at::mm(D.t(), Ws).to(cdt).contiguous();  // K^T = D^T Ws, (d, d)
  const double coef = 2.0 / static_cast<double>(N * C);

  // ---- the rows, one chunk per thread
  const int64_t ntiles = (N + kTileRows - 1) / kTileRows;
  const int64_t nchunks = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), ntiles));
  std::vector<at::Tensor> S_parts(nchunks), acc_parts(nchunks);
  const uint64_t useed = static_cast<uint64_t>(seed);
  const at::TensorOptions dopt = mu64.options();
  AT_DISPATCH_FLOATING_TYPES(cdt, "vmf_logit_mse_cpu", [&] {
    using T = scalar_t;
    const T* mhp = mh.data_ptr<T>();
    at::parallel_for(0, nchunks, 1, [&](int64_t jb, int64_t je) {
      for (int64_t j = jb; j < je; ++j) {
        const int64_t r0 = N * j / nchunks, r1 = N * (j + 1) / nchunks;
        const at::TensorOptions opt = mu_in.options().dtype(cdt);
        at::Tensor X = at::empty({kTileRows, d}, opt), Y = at::empty({kTileRows, d}, opt);
        at::Tensor St = at::empty({d, d}, opt);
        at::Tensor S = at::zeros({d, d}, dopt), acc = at::zeros({C, d}, dopt);
        std::vector<double> w(kTileRows), q(kTileRows);
        std::vector<int64_t> lab(kTileRows);
        std::vector<float> g(4 * ((d + 3) / 4));
        T* Xp = X.data_ptr<T>();
        for (int64_t a = r0; a < r1; a += kTileRows) {
          const int64_t rows = std::min(kTileRows, r1 - a);
          for (int64_t i = 0; i < rows; ++i) lab[i] = (a + i) / nsample;
          sample_rows_any(mhp, lab.data(), consts.data(), useed,
                          static_cast<uint64_t>(offset) + static_cast<uint64_t>(a), d, rows,
                          g.data(), Xp, w.data(), q.data());
          const at::Tensor Xs = X.narrow(0, 0, rows);
          at::Tensor Ys = Y.narrow(0, 0, rows);
          at::mm_out(Ys, Xs, KT);      // Y_i = K x_i
          at::mm_out(St, Xs.t(), Xs);  // this tile's x x^T, summed into S in float64
          add_any(S.data_ptr<double>(), St.data_ptr<T>(), d * d);
          epilogue_any(Xp, Y.data_ptr<T>(), w.data(), q.data(), lab.data(), mhp, d, rows, coef,
                       acc.data_ptr<double>());
        }
        S_parts[j] = S;
        acc_parts[j] = acc;
      }
    });
  });
  at::Tensor S = S_parts[0], acc = acc_parts[0];
  for (int64_t j = 1; j < nchunks; ++j) {
    S.add_(S_parts[j]);
    acc.add_(acc_parts[j]);
  }

  // ---- loss and the two gradient paths, float64
  const at::Tensor DS = at::mm(D, S);  // = sum_i (D x_i) x_i^T
  const double loss = (DS * D).sum().item<double>() / static_cast<double>(N * C);
  // student path: dL/dWs = coef D S, then through ws_hat = mu / max(|mu|, eps)
  const at::Tensor gs = DS * (coef * scale_s);
  const at::Tensor g_student = (gs - wsh * ((gs * wsh).sum(1, true) * s_mask)) / s_den;
  // sampler path: through mh = mu / |mu| (the amax scaling is a constant of the forward)
  const at::Tensor g_sampler = (acc - mh64 * (acc * mh64).sum(1, true)) / mu_norm;
  return {at::scalar_tensor(loss, mu_in.options()), (g_student + g_sampler).to(cdt)};
}

}  // namespace cpu
}  // namespace dfzsl_fast

TORCH_LIBRARY_IMPL(dfzsl_fast, CPU, m) {
  m.impl("vmf_logit_mse", &dfzsl_fast::cpu::vmf_logit_mse_cpu);
}
