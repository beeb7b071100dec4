// Exact von Mises-Fisher sampling on S^{d-1}: the torch-free math shared by the CPU and CUDA
// kernels.
//
// A vMF(mu, kappa) sample is x = w mu + rho v with rho = sqrt(1 - w^2), where
//  * w = mu^T x has density f(w) ∝ exp(kappa w) (1 - w^2)^((d-3)/2) on [-1, 1], drawn by Wood's
//    (1994) rejection sampler with the cancellation-free envelope parameter
//        b = m / (2 kappa + sqrt(4 kappa^2 + m^2)),   m = d - 1,
//    from the proposal z ~ Beta(m/2, m/2), w = (1 - (1 + b) z) / (1 - (1 - b) z);
//  * v is uniform on the unit sphere orthogonal to mu: project a standard normal g off mu and
//    normalise, v = p / |p| with p = g - (g^T mu) mu. Unlike a Householder reflection of e1 this
//    has no singularity at mu = e1, and it is a valid reparameterisation for gradients in mu.
//
// Wood's acceptance test  kappa w + m log(1 - x0 w) - c >= log u  with x0 = (1 - b)/(1 + b),
// c = kappa x0 + m log(1 - x0^2) loses all precision for large kappa (terms ~ kappa cancel). With
// D = 1 - (1 - b) z and the identity 4 kappa b = m (1 - b^2) it becomes
//        m [ (1 - b)(1 - 2z) / (2D) + log1p(b) - log 2 - log D ] >= log u,
// where no kappa-sized term is left; likewise 1 - w^2 = 4 b z (1 - z) / D^2 (no cancellation as
// w -> 1). Everything in this stage is float64: it costs a few dozen flops per sample against the
// d normals of the direction.
//
// WoodMode::kReference reproduces the b of s-vae-pytorch / DFZSL (b = s (m / 4 kappa) + (1 - s) b
// with s = clamp(kappa - 10, 0, 1)) and their log-form test  m log t - t + delta >= log u  with
// a = (m + 2 kappa + sqrt(4 kappa^2 + m^2))/4, t = 2ab/D, delta = 4ab/(1 + b) - m log m. For
// 11 <= kappa << d this is NOT a vMF (the envelope is wrong and nearly everything is accepted);
// it exists only to reproduce published numbers.
//
// Random stream layout (see philox.h): stage kStageW for the rejection loop, stage kStageDir for
// the direction; block j of kStageDir gives the normals g[4j .. 4j+3] by Box-Muller on the word
// pairs (0, 1) and (2, 3).
#pragma once

#include <cmath>
#include <cstdint>

#include "fastmath.h"
#include "macros.h"
#include "philox.h"

namespace dfzsl_fast {
namespace detail {

constexpr uint32_t kStageDir = 0;
constexpr uint32_t kStageW = 1;

enum class WoodMode : int { kExact = 0, kReference = 1 };

// Per-class constants of the w stage, computed once on the host in float64.
struct WoodConstants {
  double m;      // d - 1
  double b;      // envelope parameter
  double a;      // reference mode only
  double delta;  // reference mode only
  int mode;      // WoodMode
};

inline WoodConstants wood_constants(int64_t d, double kappa, WoodMode mode) {
  WoodConstants k;
  k.m = static_cast<double>(d - 1);
  const double S = std::sqrt(4.0 * kappa * kappa + k.m * k.m);
  const double b_exact = k.m / (2.0 * kappa + S);
  k.mode = static_cast<int>(mode);
  if (mode == WoodMode::kExact) {
    k.b = b_exact;
    k.a = 0.0;
    k.delta = 0.0;
  } else {
    const double s = kappa - 10.0 < 0.0 ? 0.0 : (kappa - 10.0 > 1.0 ? 1.0 : kappa - 10.0);
    const double b_app = kappa > 0.0 ? k.m / (4.0 * kappa) : 0.0;
    k.b = s * b_app + (1.0 - s) * b_exact;
    k.a = (k.m + 2.0 * kappa + S) / 4.0;
    k.delta = 4.0 * k.a * k.b / (1.0 + k.b) - k.m * std::log(k.m);
  }
  return k;
}

// Standard normals in float64 by Box-Muller, both outputs used (the second is kept for the next
// call).
struct NormalSource {
  double spare;
  bool has_spare;
  DFZSL_HD NormalSource() : spare(0.0), has_spare(false) {}
  DFZSL_HD double next(PhiloxStream& st) {
    if (has_spare) {
      has_spare = false;
      return spare;
    }
    const double u1 = st.uniform();
    const double u2 = st.uniform();
    const double r = sqrt(-2.0 * log(u1));
    const double a = 6.283185307179586477 * u2;
    spare = r * sin(a);
    has_spare = true;
    return r * cos(a);
  }
};

// Gamma(alpha, 1) by Marsaglia & Tsang (2000), with their squeeze (accepts ~98% of proposals
// without evaluating a log); alpha < 1 through Gamma(alpha + 1) * U^(1/alpha).
DFZSL_HD double gamma_draw(PhiloxStream& st, NormalSource& ns, double alpha) {
  const bool boost = alpha < 1.0;
  const double a = boost ? alpha + 1.0 : alpha;
  const double dd = a - 1.0 / 3.0;
  const double c = 1.0 / sqrt(9.0 * dd);
  double g;
  for (;;) {
    const double x = ns.next(st);
    const double t = 1.0 + c * x;
    if (t <= 0.0) continue;
    const double v = t * t * t;
    const double u = st.uniform();
    const double x2 = x * x;
    if (u < 1.0 - 0.0331 * x2 * x2 || log(u) < 0.5 * x2 + dd - dd * v + dd * log(v)) {
      g = dd * v;
      break;
    }
  }
  if (boost) g *= pow(st.uniform(), 1.0 / alpha);
  return g;
}

// Beta(alpha, alpha) as G1 / (G1 + G2).
DFZSL_HD double symmetric_beta_draw(PhiloxStream& st, NormalSource& ns, double alpha) {
  const double g1 = gamma_draw(st, ns, alpha);
  const double g2 = gamma_draw(st, ns, alpha);
  return g1 / (g1 + g2);
}

struct WDraw {
  double w;    // mu^T x
  double rho;  // sqrt(1 - w^2), computed without cancellation
};

// The w stage of one row: Wood's rejection loop on the row's own stream.
DFZSL_HD WDraw wood_draw_w(const WoodConstants& k, uint64_t seed, uint64_t row) {
  PhiloxStream st(seed, row, kStageW);
  NormalSource ns;
  const double half_m = 0.5 * k.m;
  const double b = k.b;
  const double log1p_b = log1p(b);
  for (;;) {
    const double z = symmetric_beta_draw(st, ns, half_m);
    const double D = 1.0 - (1.0 - b) * z;
    const double log_u = log(st.uniform());
    double lhs;
    if (k.mode == static_cast<int>(WoodMode::kExact)) {
      lhs = k.m * ((1.0 - b) * (1.0 - 2.0 * z) / (2.0 * D) + log1p_b - 0.69314718055994531 - log(D));
    } else {
      const double t = 2.0 * k.a * b / D;
      lhs = k.m * log(t) - t + k.delta;
    }
    if (lhs >= log_u) {
      WDraw r;
      r.w = (1.0 - (1.0 + b) * z) / D;
      const double rho2 = 4.0 * b * z * (1.0 - z) / (D * D);
      // The reference sampler floors 1 - w^2 at 1e-10 (its sqrt(max(1 - w^2, 1e-10))).
      r.rho = k.mode == static_cast<int>(WoodMode::kExact) ? sqrt(rho2)
                                                            : sqrt(rho2 > 1e-10 ? rho2 : 1e-10);
      return r;
    }
  }
}

// Normals g[4j .. 4j+3] of a row's direction stage.
DFZSL_HD void direction_normals(uint64_t seed, uint64_t row, uint32_t j, float& g0, float& g1,
                                float& g2, float& g3) {
  uint32_t o0, o1, o2, o3;
  philox4x32_10(j, kStageDir, static_cast<uint32_t>(row), static_cast<uint32_t>(row >> 32),
                static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32), o0, o1, o2, o3);
  box_muller(o0, o1, g0, g1);
  box_muller(o2, o3, g2, g3);
}

}  // namespace detail
}  // namespace dfzsl_fast
