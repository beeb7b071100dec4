// CPU kernel of dfzsl_fast::vmf_logit_mse: one fused step of DFZSL's stage-1 fit (method.md 2.3),
// the loss and its gradient in the mean directions without the (N, d) samples or the (N, C)
// logits ever existing at full size.
//
// What it computes (the composition it replaces, dfzsl_fast/ops/vmf_fit.py: composed_vmf_logit_mse):
//     mh  = normalize(mu) in float64, rounded to mu's dtype     (sample_vmf's mean directions)
//     x_i ~ vMF(mh_c, kappa_c), i = 0 .. N-1, N = C * nsample, class c = i / nsample (class-major),
//           row i from the Philox stream (seed, offset + i)        (vmf_rows.h, as vmf_sample)
//     L   = 1/(N C) sum_i sum_c (x_i . D_c)^2,  D = s_s ws_hat - s_t wt_hat  (cosine_logit_mse,
//           teacher detached; ws_hat = mu / max(|mu|, eps), wt_hat likewise)
//     dL/dmu through both paths: the student weights and the reparameterised samples
//           (autograd/vmf.py: vmf_backward) followed by the normalisations' backward.
//
// Why no (N, C) GEMMs: every quantity the step needs is linear or quadratic in x_i, so it goes
// through d x d matrices instead of the C classes:
//   - S = sum_i x_i x_i^T gives the loss, L = <D S, D> / (N C), and the student-path gradient,
//     dL/dWs = coef D S with coef = 2 / (N C) (the composed kernel's E^T x_hat equals D S);
//   - the gradient reaching sample i is g_i = coef K x_i with K = Ws^T D (the composed kernel's
//     E_i @ Ws); the sampler's backward needs of it only a_i = g_i . x_i (a quadratic form in
//     x_i, with K's symmetric part Ks), g_i . mh_c = coef x_i . (K^T mh_c), and class sums
//     sum_i alpha_i g_i = coef K sum_i alpha_i x_i.
// Both S and the quadratic forms are symmetric, so only the upper block triangle of each is
// computed: about 1.25 N d^2 multiply-adds against the composed kernel's 3 N d C (and the
// sampler's backward, about ten (N, d) elementwise passes there, becomes a per-row epilogue).
//
// The sampler path, per row (vmf_backward with G = g - a x the gradient after x's normalisation,
// a = g . x; G . x = 0, so G . u = -w (G . mu) with u = x - w mu, rho = sqrt(1 - w^2)):
//     r_i = (w - q rho) G - Gm (1 + w q/rho) u - q rho Gm mu,   Gm = G . mh_c = g . mh_c - a w
//         = alpha_i K x_i + beta_i x_i + (terms along mh_c),
//     alpha_i = coef (w - q rho),  beta_i = -(w - q rho) a - Gm (1 + w q/rho).
// The terms along mh_c are not formed: the backward of mh = mu/|mu| projects them out (to the
// rounding of mh, i.e. to float rounding, as is the difference between |x_i| and 1, which the
// composed path divides by). With s1_c = sum_{i in c} alpha_i x_i and s2_c = sum beta_i x_i,
// acc_c = K s1_c + s2_c and dL/dmu (sampler path) = (acc - mh (mh . acc)) / |mu|.
//
// Layouts: mu, w_teacher (C, d) float32 or float64 (the compute dtype: the GEMMs and samples run in
// it); kappa (C,) float64. The small (C, d) and (d, d) algebra (normalisations, K, D S, the loss,
// both normalisation backwards) runs in float64.
// Threading: the N rows are cut into tiles of R = 512 rows and the tiles into 4 groups per thread
// of consecutive tiles; the threads (at::parallel_for) claim groups from an atomic counter as they
// come free. Each thread owns its scratch (a tile X of R x d, R x 128 products); each group its
// accumulators, S (d, d) in the compute dtype (as one GEMM over the group's rows would sum it),
// s1 and s2 (its classes, d) in float64, summed in group order in float64 afterwards: the result
// depends on the thread count, not on scheduling. The per-tile GEMMs are ATen calls on 128-column
// blocks, sequential inside the parallel region. Everything outside it (the (C, d) and (d, d)
// algebra) runs on the calling thread: a few ms of work whose ~20 ATen ops and 4 GEMMs would
// otherwise each fork and join the OpenMP team, which costs 50-60 ms apiece when another job
// keeps the cores busy (measured on the 2-core machine).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>
#include <c10/util/ParallelGuard.h>

#include <algorithm>
#include <atomic>
#include <optional>
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

// MKL's per-thread BLAS thread count (its C entry point, mkl_set_num_threads_local in
// mkl_service.h; exported by the MKL that torch's CPU wheels link in; weak,
// so builds against another BLAS load and skip it).
extern "C" int MKL_Set_Num_Threads_Local(int) __attribute__((weak));

namespace dfzsl_fast {
namespace cpu {

using detail::WoodConstants;

namespace {

// Rows per tile: an X tile of 512 x 512 floats (1 MiB); 512 measured 4% faster than 256 (fewer,
// larger block GEMMs).
constexpr int64_t kTileRows = 512;
// Column blocks of the S = X^T X products: only the upper block triangle is computed (10 of 16
// blocks at d = 512); 128 was the fastest block measured (smaller GEMMs lose efficiency).
constexpr int64_t kBlock = 128;
// Groups of tiles per thread: threads claim groups as they come free, so a thread slowed by
// another process does not hold the others up; each group sums into its own accumulators, so
// the result does not depend on which thread ran which group.
constexpr int64_t kGroupsPerThread = 4;

// out[i] += f * (z_i . x_i) over n columns: one block's share of the quadratic forms.
template <typename T>
inline void rowdot_acc(const T* z, int64_t ldz, const T* x, int64_t ldx, int64_t rows, int64_t n,
                       T f, T* out) {
  for (int64_t i = 0; i < rows; ++i) {
    const T* zi = z + i * ldz;
    const T* xi = x + i * ldx;
    T s = 0;
#pragma omp simd reduction(+ : s)
    for (int64_t k = 0; k < n; ++k) s += zi[k] * xi[k];
    out[i] += f * s;
  }
}

// The per-row epilogue of one tile (see the header): s1[c] += alpha_i x_i, s2[c] += beta_i x_i.
// x: the tile's rows (rows x d); quad: x_i^T Ks x_i; w, q: the sampler's per-row scalars;
// kmh: (C, d) rows K^T mh_c; lab: class of each row (relative to s1, s2 and kmh).
template <typename T>
inline void epilogue_rows(const T* x, const T* quad, const double* w, const double* q,
                          const int64_t* lab, const T* kmh, int64_t d, int64_t rows, double coef,
                          double* s1, double* s2) {
  for (int64_t i = 0; i < rows; ++i) {
    const T* xi = x + i * d;
    const int64_t c = lab[i];
    const T* km = kmh + c * d;
    T xk = 0;
#pragma omp simd reduction(+ : xk)
    for (int64_t k = 0; k < d; ++k) xk += xi[k] * km[k];
    const double wi = w[i];
    const double a = coef * static_cast<double>(quad[i]);  // g . x
    const double gm = coef * static_cast<double>(xk);      // g . mh
    // rho and q/rho as autograd/vmf.py forms them (q/rho = 0 where rho = 0: w = +-1 exactly)
    const double rho = std::sqrt(std::max(1.0 - wi * wi, 0.0));
    const double q_over_rho = rho > 0.0 ? q[i] / rho : 0.0;
    const double Gm = gm - a * wi;
    const double t = wi - q[i] * rho;
    const double alpha = coef * t;
    const double beta = -t * a - Gm * (1.0 + wi * q_over_rho);
    double* a1 = s1 + c * d;
    double* a2 = s2 + c * d;
#pragma omp simd
    for (int64_t k = 0; k < d; ++k) {
      const double xv = static_cast<double>(xi[k]);
      a1[k] += alpha * xv;
      a2[k] += beta * xv;
    }
  }
}

DFZSL_FIT_CLONES void epilogue_rows_f32(const float* x, const float* quad, const double* w,
                                        const double* q, const int64_t* lab, const float* kmh,
                                        int64_t d, int64_t rows, double coef, double* s1,
                                        double* s2) {
  epilogue_rows<float>(x, quad, w, q, lab, kmh, d, rows, coef, s1, s2);
}

DFZSL_FIT_CLONES void epilogue_rows_f64(const double* x, const double* quad, const double* w,
                                        const double* q, const int64_t* lab, const double* kmh,
                                        int64_t d, int64_t rows, double coef, double* s1,
                                        double* s2) {
  epilogue_rows<double>(x, quad, w, q, lab, kmh, d, rows, coef, s1, s2);
}

DFZSL_FIT_CLONES void rowdot_acc_f32(const float* z, int64_t ldz, const float* x, int64_t ldx,
                                     int64_t rows, int64_t n, float f, float* out) {
  rowdot_acc<float>(z, ldz, x, ldx, rows, n, f, out);
}

DFZSL_FIT_CLONES void rowdot_acc_f64(const double* z, int64_t ldz, const double* x, int64_t ldx,
                                     int64_t rows, int64_t n, double f, double* out) {
  rowdot_acc<double>(z, ldz, x, ldx, rows, n, f, out);
}

inline void epilogue_any(const float* x, const float* quad, const double* w, const double* q,
                         const int64_t* lab, const float* kmh, int64_t d, int64_t rows,
                         double coef, double* s1, double* s2) {
  epilogue_rows_f32(x, quad, w, q, lab, kmh, d, rows, coef, s1, s2);
}

inline void epilogue_any(const double* x, const double* quad, const double* w, const double* q,
                         const int64_t* lab, const double* kmh, int64_t d, int64_t rows,
                         double coef, double* s1, double* s2) {
  epilogue_rows_f64(x, quad, w, q, lab, kmh, d, rows, coef, s1, s2);
}

inline void rowdot_any(const float* z, int64_t ldz, const float* x, int64_t ldx, int64_t rows,
                       int64_t n, float f, float* out) {
  rowdot_acc_f32(z, ldz, x, ldx, rows, n, f, out);
}

inline void rowdot_any(const double* z, int64_t ldz, const double* x, int64_t ldx, int64_t rows,
                       int64_t n, double f, double* out) {
  rowdot_acc_f64(z, ldz, x, ldx, rows, n, f, out);
}


// Makes MKL run on the calling thread only while in scope: the serial algebra's GEMMs must not
// fork MKL's team, and the tile GEMMs inside our parallel region must not nest one (torch leaves
// OpenMP nesting enabled: max-active-levels unlimited).
struct SequentialBlas {
  int prev = 0;
  SequentialBlas() {
    if (MKL_Set_Num_Threads_Local != nullptr) prev = MKL_Set_Num_Threads_Local(1);
  }
  ~SequentialBlas() {
    if (MKL_Set_Num_Threads_Local != nullptr) MKL_Set_Num_Threads_Local(prev);
  }
};

// Runs the ATen ops and BLAS calls in scope on this thread alone (see the serial algebra below).
struct SerialScope {
  c10::ParallelGuard in_region{true};  // ATen's parallel_for then runs inline
  SequentialBlas blas;
};

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

  // ---- (C, d) and (d, d) algebra in float64, serial: some 30 ms of work (four C x d x d GEMMs)
  // in some twenty ATen ops, each of which would otherwise be an OpenMP fork/join. On a busy
  // machine every fork/join waits for a descheduled thread: measured on 2 cores shared with
  // another job, 50-60 ms each, which more than doubled the step.
  std::optional<SerialScope> serial;
  serial.emplace();
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
  const at::Tensor K = at::mm(Ws.t(), D);                   // (d, d)
  const at::Tensor Ks = ((K + K.t()) * 0.5).to(cdt).contiguous();  // x^T K x = x^T Ks x
  const at::Tensor kmh = at::mm(mh64, K).to(cdt).contiguous();     // rows K^T mh_c
  const double coef = 2.0 / static_cast<double>(N * C);

  // ---- the rows: groups of consecutive tiles, claimed by the threads as they come free
  serial.reset();
  const int64_t ntiles = (N + kTileRows - 1) / kTileRows;
  const int64_t nthreads = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), ntiles));
  const int64_t ngroups = std::min<int64_t>(ntiles, kGroupsPerThread * nthreads);
  std::vector<at::Tensor> S_parts(ngroups), s_parts(ngroups);
  std::vector<int64_t> class0(ngroups);
  std::atomic<int64_t> next_group{0};
  const uint64_t useed = static_cast<uint64_t>(seed);
  const at::TensorOptions dopt = mu64.options();
  const at::TensorOptions opt = mu_in.options().dtype(cdt);
  const int64_t nb = (d + kBlock - 1) / kBlock;  // column blocks of S
  AT_DISPATCH_FLOATING_TYPES(cdt, "vmf_logit_mse_cpu", [&] {
    using T = scalar_t;
    const T* mhp = mh.data_ptr<T>();
    const T* kmhp = kmh.data_ptr<T>();
    at::parallel_for(0, nthreads, 1, [&](int64_t, int64_t) {
      const SequentialBlas sequential_blas;
      at::Tensor X = at::empty({kTileRows, d}, opt), Z = at::empty({kTileRows, kBlock}, opt);
      at::Tensor quad = at::empty({kTileRows}, opt);
      std::vector<double> w(kTileRows), q(kTileRows);
      std::vector<int64_t> lab(kTileRows);
      std::vector<float> g(4 * ((d + 3) / 4));
      T* Xp = X.data_ptr<T>();
      for (int64_t j = next_group++; j < ngroups; j = next_group++) {
        const int64_t r0 = std::min(N, ntiles * j / ngroups * kTileRows);
        const int64_t r1 = std::min(N, ntiles * (j + 1) / ngroups * kTileRows);
        const int64_t c0 = r0 / nsample, c1 = (r1 - 1) / nsample;  // the group's classes
        // S, and s1, s2 (see the header) for the group's classes
        // the group's x x^T sums in the compute dtype (as one GEMM over the group's rows would
        // sum them), handed over in float64
        at::Tensor Sg = at::zeros({d, d}, opt), sg = at::zeros({2, c1 - c0 + 1, d}, dopt);
        for (int64_t a = r0; a < r1; a += kTileRows) {
          const int64_t rows = std::min(kTileRows, r1 - a);
          for (int64_t i = 0; i < rows; ++i) lab[i] = (a + i) / nsample;
          sample_rows_any(mhp, lab.data(), consts.data(), useed,
                          static_cast<uint64_t>(offset) + static_cast<uint64_t>(a), d, rows,
                          g.data(), Xp, w.data(), q.data());
          const at::Tensor Xs = X.narrow(0, 0, rows);
          T* qp = quad.data_ptr<T>();
          std::fill(qp, qp + rows, T(0));
          // upper block triangles (the matrices are symmetric): this tile's X^T X, summed into
          // the group's S, and the quadratic forms x_i^T Ks x_i (off-diagonal blocks count twice)
          for (int64_t bi = 0; bi < nb; ++bi) {
            const int64_t i0 = bi * kBlock, ni = std::min(kBlock, d - i0);
            const at::Tensor Xi = Xs.narrow(1, i0, ni);
            for (int64_t bj = bi; bj < nb; ++bj) {
              const int64_t j0 = bj * kBlock, nj = std::min(kBlock, d - j0);
              const at::Tensor Xj = Xs.narrow(1, j0, nj);
              Sg.narrow(0, i0, ni).narrow(1, j0, nj).addmm_(Xi.t(), Xj);
              at::Tensor z = Z.narrow(0, 0, rows).narrow(1, 0, nj);
              if (nj < kBlock) z = at::empty({rows, nj}, opt);
              at::mm_out(z, Xi, Ks.narrow(0, i0, ni).narrow(1, j0, nj));
              rowdot_any(z.data_ptr<T>(), nj, Xp + j0, d, rows, nj, T(bi == bj ? 1 : 2), qp);
            }
          }
          for (int64_t i = 0; i < rows; ++i) lab[i] -= c0;
          const int64_t ncls = c1 - c0 + 1;
          epilogue_any(Xp, qp, w.data(), q.data(), lab.data(), kmhp + c0 * d, d, rows, coef,
                       sg.data_ptr<double>(), sg.data_ptr<double>() + ncls * d);
        }
        S_parts[j] = Sg.to(at::kDouble);
        s_parts[j] = sg;
        class0[j] = c0;
      }
    });
  });
  serial.emplace();
  // sums in group order: the result depends on the thread count, not on which thread ran what
  at::Tensor S = S_parts[0], s12 = at::zeros({2, C, d}, dopt);
  for (int64_t j = 1; j < ngroups; ++j) S.add_(S_parts[j]);
  for (int64_t j = 0; j < ngroups; ++j) {
    s12.narrow(1, class0[j], s_parts[j].size(1)).add_(s_parts[j]);
  }
  const at::Tensor acc = at::mm(s12[0], K.t()) + s12[1];  // acc_c = K s1_c + s2_c
  // the lower block triangle from the upper one
  for (int64_t bi = 1; bi < nb; ++bi) {
    const int64_t i0 = bi * kBlock, ni = std::min(kBlock, d - i0);
    S.narrow(0, i0, ni).narrow(1, 0, i0).copy_(S.narrow(0, 0, i0).narrow(1, i0, ni).t());
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
