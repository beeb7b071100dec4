// C++ unit tests of the torch-free core (csrc/include/dfzsl): Philox known-answer vectors, the
// fast float math against libm, and the Wood w-stage against exact theory. Run through ctest.
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "dfzsl/vmf.h"
#include "normals_avx2.h"

using namespace dfzsl_fast::detail;

static int g_failures = 0;
#define CHECK(cond, ...)                                               \
  do {                                                                 \
    if (!(cond)) {                                                     \
      std::printf("FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond);      \
      std::printf(__VA_ARGS__);                                        \
      std::printf("\n");                                               \
      ++g_failures;                                                    \
    }                                                                  \
  } while (0)

// Known-answer vectors of Philox4x32-10 from the Random123 distribution (kat_vectors).
static void test_philox_kat() {
  struct Kat {
    uint32_t c[4], k[2], out[4];
  } kats[] = {
      {{0, 0, 0, 0}, {0, 0}, {0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8}},
      {{0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff},
       {0xffffffff, 0xffffffff},
       {0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd}},
      {{0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344},
       {0xa4093822, 0x299f31d0},
       {0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1}},
  };
  for (const Kat& t : kats) {
    uint32_t o[4];
    philox4x32_10(t.c[0], t.c[1], t.c[2], t.c[3], t.k[0], t.k[1], o[0], o[1], o[2], o[3]);
    for (int i = 0; i < 4; ++i) CHECK(o[i] == t.out[i], "word %d: %08x != %08x", i, o[i], t.out[i]);
  }
}

static void test_fast_math() {
  double max_rel = 0, max_abs = 0;
  for (uint32_t k = 0; k < (1u << 24); k += 97) {
    const float u = (static_cast<float>(k) + 0.5f) * 5.9604644775390625e-08f;
    const double l = fast_logf(u), e = std::log(static_cast<double>(u));
    max_rel = std::fmax(max_rel, std::fabs(l - e) / std::fmax(std::fabs(e), 1e-3));
    float s, c;
    fast_sincos_2pi(static_cast<float>(k) * 5.9604644775390625e-08f, s, c);
    const double a = 2 * M_PI * static_cast<double>(k) * 5.9604644775390625e-08;
    max_abs = std::fmax(max_abs, std::fmax(std::fabs(s - std::sin(a)), std::fabs(c - std::cos(a))));
  }
  CHECK(max_rel < 3e-7, "fast_logf max relative error %g", max_rel);
  CHECK(max_abs < 3e-7, "fast_sincos_2pi max abs error %g", max_abs);
}

static void test_normals_moments_and_simd_agreement() {
  const int rows = 2000, nb = 130;  // d = 520, with a tail that the SIMD path does scalar
  std::vector<float> g(4 * nb), h(4 * nb);
  double s1 = 0, s2 = 0, s4 = 0, maxd = 0;
  long n = 0;
  for (int r = 0; r < rows; ++r) {
    for (int j = 0; j < nb; ++j) direction_normals(42, r, j, g[4 * j], g[4 * j + 1], g[4 * j + 2], g[4 * j + 3]);
#if DFZSL_HAVE_AVX2_PATH
    if (dfzsl_fast::cpu::cpu_has_avx2_fma()) {
      dfzsl_fast::cpu::fill_direction_normals_avx2(42, r, nb, h.data());
      for (int k = 0; k < 4 * nb; ++k) maxd = std::fmax(maxd, std::fabs(g[k] - h[k]));
    }
#endif
    for (float v : g) {
      s1 += v;
      s2 += v * v;
      s4 += double(v) * v * v * v;
      ++n;
    }
  }
  const double m = s1 / n, var = s2 / n, k4 = s4 / n;
  CHECK(std::fabs(m) < 5 / std::sqrt(double(n)), "normal mean %g", m);
  CHECK(std::fabs(var - 1) < 5 * std::sqrt(2.0 / n), "normal variance %g", var);
  CHECK(std::fabs(k4 - 3) < 5 * std::sqrt(96.0 / n), "normal 4th moment %g", k4);
  CHECK(maxd < 1e-5, "AVX2 normals differ from scalar by %g", maxd);
}

// A_d(kappa) by the backward continued fraction (the same definition as dfzsl_fast.theory).
static double mean_resultant(int d, double kappa) {
  if (kappa == 0) return 0;
  const double nu = d / 2.0;
  double r = 0;
  for (int k = 20000; k >= 0; --k) r = 1.0 / (2.0 * (nu + k) / kappa + r);
  return r;
}

static void test_wood_w_mean() {
  const int ds[] = {3, 64, 512};
  const double kappas[] = {0.0, 1.0, 100.0, 1000.0, 1e5};
  for (int d : ds) {
    for (double kappa : kappas) {
      const WoodConstants k = wood_constants(d, kappa, WoodMode::kExact);
      const int n = 40000;
      double s = 0, maxnorm = 0;
      for (int i = 0; i < n; ++i) {
        const WDraw wd = wood_draw_w(k, 7, static_cast<uint64_t>(i));
        s += wd.w;
        maxnorm = std::fmax(maxnorm, std::fabs(wd.w * wd.w + wd.rho * wd.rho - 1));
      }
      const double A = mean_resultant(d, kappa);
      const double var = kappa == 0 ? 1.0 / d : 1 - A * A - (d - 1) * A / kappa;
      const double z = (s / n - A) / std::sqrt(std::fmax(var, 1e-300) / n);
      CHECK(std::fabs(z) < 5, "d=%d kappa=%g mean w %.6f vs %.6f (z=%.2f)", d, kappa, s / n, A, z);
      CHECK(maxnorm < 1e-12, "w^2 + rho^2 - 1 = %g", maxnorm);
    }
  }
}

// The stable acceptance test equals Wood's original one where the latter is accurate.
static void test_stable_acceptance_identity() {
  const int d = 64;
  const double m = d - 1;
  for (double kappa : {0.5, 5.0, 50.0}) {
    const double b = wood_constants(d, kappa, WoodMode::kExact).b;
    const double x0 = (1 - b) / (1 + b), c = kappa * x0 + m * std::log(1 - x0 * x0);
    for (double z : {0.1, 0.3, 0.5, 0.8}) {
      const double D = 1 - (1 - b) * z, w = (1 - (1 + b) * z) / D;
      const double naive = kappa * w + m * std::log(1 - x0 * w) - c;
      const double stable = m * ((1 - b) * (1 - 2 * z) / (2 * D) + std::log1p(b) - std::log(2.0) - std::log(D));
      CHECK(std::fabs(naive - stable) < 1e-9 * (1 + std::fabs(naive)), "kappa=%g z=%g: %g vs %g", kappa, z, naive, stable);
    }
  }
}

static void test_stream_uniforms() {
  PhiloxStream st(3, 9, kStageW);
  double lo = 1, hi = 0;
  for (int i = 0; i < 100000; ++i) {
    const double u = st.uniform();
    lo = std::fmin(lo, u);
    hi = std::fmax(hi, u);
  }
  CHECK(lo > 0 && hi < 1 && lo < 1e-3 && hi > 1 - 1e-3, "uniform range [%g, %g]", lo, hi);
}

int main() {
  test_philox_kat();
  test_fast_math();
  test_normals_moments_and_simd_agreement();
  test_wood_w_mean();
  test_stable_acceptance_identity();
  test_stream_uniforms();
  if (g_failures) {
    std::printf("%d check(s) failed\n", g_failures);
    return 1;
  }
  std::printf("all C++ core checks passed\n");
  return 0;
}
