// Branch-free float32 log, sincos(2*pi*u) and Box-Muller used by the samplers' hot loops.
//
// Why our own: (1) the CPU and CUDA kernels must produce the same normals for the same Philox
// bits, and libm / CUDA intrinsics differ in their last bits; (2) written as straight-line code
// on scalars, these compile to SIMD when the CPU kernel's row loop is vectorised (glibc's logf /
// sincosf calls would block that). Accuracy: a few float ulp, far below what any statistical test
// of the samplers can resolve (tests/cpp/test_core.cpp checks them against libm).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "macros.h"
#include "philox.h"

namespace dfzsl_fast {
namespace detail {

DFZSL_HD uint32_t float_bits(float x) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(x);
#else
  uint32_t u;
  std::memcpy(&u, &x, sizeof(u));
  return u;
#endif
}

DFZSL_HD float bits_float(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float x;
  std::memcpy(&x, &u, sizeof(x));
  return x;
#endif
}

// Natural log for finite x > 0 (no checks: callers pass (0, 1] uniforms). x = m * 2^e with
// m in [sqrt(1/2), sqrt(2)); log m = 2 atanh(s), s = (m - 1)/(m + 1), |s| <= 0.172, by its series
// to s^9 (truncation < 1e-9 relative).
DFZSL_HD float fast_logf(float x) {
  const uint32_t bits = float_bits(x);
  int e = static_cast<int>((bits >> 23) & 0xffu) - 127;
  float m = bits_float((bits & 0x007fffffu) | 0x3f800000u);  // [1, 2)
  const bool big = m > 1.41421356f;
  m = big ? 0.5f * m : m;
  e = big ? e + 1 : e;
  const float s = (m - 1.0f) / (m + 1.0f);
  const float s2 = s * s;
  float p = 1.0f / 9.0f;
  p = p * s2 + 1.0f / 7.0f;
  p = p * s2 + 1.0f / 5.0f;
  p = p * s2 + 1.0f / 3.0f;
  p = p * s2 + 1.0f;
  return static_cast<float>(e) * 0.693147180559945309f + 2.0f * s * p;
}

// sin and cos of 2*pi*u for u in [0, 1). 4u is exact in float; it is split into a quadrant k and
// a remainder f in [-1/2, 1/2], so the polynomials only see |a| = |f| * pi/2 <= pi/4 (Taylor to
// a^9 / a^10: truncation < 3e-9).
DFZSL_HD void fast_sincos_2pi(float u, float& s_out, float& c_out) {
  const float y = 4.0f * u;
  const int k = static_cast<int>(y + 0.5f);
  const float f = y - static_cast<float>(k);
  const float a = f * 1.57079632679489662f;
  const float a2 = a * a;
  float sp = 1.0f / 362880.0f;
  sp = sp * a2 - 1.0f / 5040.0f;
  sp = sp * a2 + 1.0f / 120.0f;
  sp = sp * a2 - 1.0f / 6.0f;
  sp = sp * a2 + 1.0f;
  const float sa = a * sp;
  float cp = -1.0f / 3628800.0f;
  cp = cp * a2 + 1.0f / 40320.0f;
  cp = cp * a2 - 1.0f / 720.0f;
  cp = cp * a2 + 1.0f / 24.0f;
  cp = cp * a2 - 0.5f;
  const float ca = cp * a2 + 1.0f;
  const int q = k & 3;
  // (sin, cos) of (q * pi/2 + a): q = 0 (sa, ca); 1 (ca, -sa); 2 (-sa, -ca); 3 (-ca, sa).
  const float s_mag = (q & 1) ? ca : sa;
  const float c_mag = (q & 1) ? sa : ca;
  s_out = (q >= 2) ? -s_mag : s_mag;
  c_out = (q == 1 || q == 2) ? -c_mag : c_mag;
}

// Box-Muller: two independent standard normals from two 32-bit words.
DFZSL_HD void box_muller(uint32_t w_radius, uint32_t w_angle, float& z0, float& z1) {
  const float u1 = u32_to_open_float(w_radius);
  const float r = sqrtf(-2.0f * fast_logf(u1));
  float s, c;
  fast_sincos_2pi(static_cast<float>(w_angle >> 8) * 5.9604644775390625e-08f, s, c);
  z0 = r * c;
  z1 = r * s;
}

}  // namespace detail
}  // namespace dfzsl_fast
