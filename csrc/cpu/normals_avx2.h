// AVX2+FMA version of the direction-stage normals (detail::direction_normals in vmf.h) for the
// CPU kernel: eight Philox blocks at once, one per 32-bit lane, then Box-Muller on eight lanes.
//
// Why hand-written: compilers vectorise the scalar Philox loop poorly (the 32x32->64 products of
// mulhilo need even/odd lane splits), and the normals are ~all of the sampler's cost. The math is
// the scalar code's, operation for operation; results agree with it to float rounding (the
// polynomial steps are fused multiply-adds here), which tests/test_vmf_native.py checks.
#pragma once

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define DFZSL_HAVE_AVX2_PATH 1
#include <immintrin.h>

#include <cstdint>

#include "dfzsl/vmf.h"

namespace dfzsl_fast {
namespace cpu {

#define DFZSL_AVX2 __attribute__((target("avx2,fma")))

// (hi, lo) of a * b for eight unsigned 32-bit lanes and a constant multiplier m.
DFZSL_AVX2 static inline void mulhilo8(__m256i a, __m256i m, __m256i& hi, __m256i& lo) {
  const __m256i pe = _mm256_mul_epu32(a, m);                         // lanes 0, 2, 4, 6
  const __m256i po = _mm256_mul_epu32(_mm256_srli_epi64(a, 32), m);  // lanes 1, 3, 5, 7
  lo = _mm256_blend_epi32(pe, _mm256_slli_epi64(po, 32), 0xAA);
  hi = _mm256_blend_epi32(_mm256_srli_epi64(pe, 32), po, 0xAA);
}

DFZSL_AVX2 static inline __m256 fast_log8(__m256 x) {
  const __m256i bits = _mm256_castps_si256(x);
  __m256i e = _mm256_sub_epi32(_mm256_and_si256(_mm256_srli_epi32(bits, 23), _mm256_set1_epi32(0xff)),
                               _mm256_set1_epi32(127));
  __m256 m = _mm256_castsi256_ps(_mm256_or_si256(_mm256_and_si256(bits, _mm256_set1_epi32(0x007fffff)),
                                                 _mm256_set1_epi32(0x3f800000)));
  const __m256 big = _mm256_cmp_ps(m, _mm256_set1_ps(1.41421356f), _CMP_GT_OQ);
  m = _mm256_blendv_ps(m, _mm256_mul_ps(m, _mm256_set1_ps(0.5f)), big);
  e = _mm256_sub_epi32(e, _mm256_castps_si256(big));  // big lanes are all-ones = -1
  const __m256 one = _mm256_set1_ps(1.0f);
  const __m256 s = _mm256_div_ps(_mm256_sub_ps(m, one), _mm256_add_ps(m, one));
  const __m256 s2 = _mm256_mul_ps(s, s);
  __m256 p = _mm256_set1_ps(1.0f / 9.0f);
  p = _mm256_fmadd_ps(p, s2, _mm256_set1_ps(1.0f / 7.0f));
  p = _mm256_fmadd_ps(p, s2, _mm256_set1_ps(1.0f / 5.0f));
  p = _mm256_fmadd_ps(p, s2, _mm256_set1_ps(1.0f / 3.0f));
  p = _mm256_fmadd_ps(p, s2, one);
  return _mm256_fmadd_ps(_mm256_cvtepi32_ps(e), _mm256_set1_ps(0.693147180559945309f),
                         _mm256_mul_ps(_mm256_add_ps(s, s), p));
}

DFZSL_AVX2 static inline void fast_sincos_2pi8(__m256 u, __m256& s_out, __m256& c_out) {
  const __m256 y = _mm256_mul_ps(_mm256_set1_ps(4.0f), u);
  const __m256i k = _mm256_cvttps_epi32(_mm256_add_ps(y, _mm256_set1_ps(0.5f)));
  const __m256 f = _mm256_sub_ps(y, _mm256_cvtepi32_ps(k));
  const __m256 a = _mm256_mul_ps(f, _mm256_set1_ps(1.57079632679489662f));
  const __m256 a2 = _mm256_mul_ps(a, a);
  __m256 sp = _mm256_set1_ps(1.0f / 362880.0f);
  sp = _mm256_fmadd_ps(sp, a2, _mm256_set1_ps(-1.0f / 5040.0f));
  sp = _mm256_fmadd_ps(sp, a2, _mm256_set1_ps(1.0f / 120.0f));
  sp = _mm256_fmadd_ps(sp, a2, _mm256_set1_ps(-1.0f / 6.0f));
  sp = _mm256_fmadd_ps(sp, a2, _mm256_set1_ps(1.0f));
  const __m256 sa = _mm256_mul_ps(a, sp);
  __m256 cp = _mm256_set1_ps(-1.0f / 3628800.0f);
  cp = _mm256_fmadd_ps(cp, a2, _mm256_set1_ps(1.0f / 40320.0f));
  cp = _mm256_fmadd_ps(cp, a2, _mm256_set1_ps(-1.0f / 720.0f));
  cp = _mm256_fmadd_ps(cp, a2, _mm256_set1_ps(1.0f / 24.0f));
  cp = _mm256_fmadd_ps(cp, a2, _mm256_set1_ps(-0.5f));
  const __m256 ca = _mm256_fmadd_ps(cp, a2, _mm256_set1_ps(1.0f));
  const __m256i q = _mm256_and_si256(k, _mm256_set1_epi32(3));
  const __m256 odd = _mm256_castsi256_ps(
      _mm256_cmpeq_epi32(_mm256_and_si256(q, _mm256_set1_epi32(1)), _mm256_set1_epi32(1)));
  const __m256 s_neg = _mm256_castsi256_ps(_mm256_cmpgt_epi32(q, _mm256_set1_epi32(1)));
  const __m256 c_neg = _mm256_castsi256_ps(_mm256_or_si256(
      _mm256_cmpeq_epi32(q, _mm256_set1_epi32(1)), _mm256_cmpeq_epi32(q, _mm256_set1_epi32(2))));
  const __m256 s_mag = _mm256_blendv_ps(sa, ca, odd);
  const __m256 c_mag = _mm256_blendv_ps(ca, sa, odd);
  const __m256 sign = _mm256_set1_ps(-0.0f);
  s_out = _mm256_xor_ps(s_mag, _mm256_and_ps(s_neg, sign));
  c_out = _mm256_xor_ps(c_mag, _mm256_and_ps(c_neg, sign));
}

DFZSL_AVX2 static inline __m256 open_uniform8(__m256i w) {
  return _mm256_mul_ps(_mm256_add_ps(_mm256_cvtepi32_ps(_mm256_srli_epi32(w, 8)), _mm256_set1_ps(0.5f)),
                       _mm256_set1_ps(5.9604644775390625e-08f));
}

DFZSL_AVX2 static inline void box_muller8(__m256i wr, __m256i wa, __m256& z0, __m256& z1) {
  const __m256 r = _mm256_sqrt_ps(_mm256_mul_ps(_mm256_set1_ps(-2.0f), fast_log8(open_uniform8(wr))));
  const __m256 ua = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_srli_epi32(wa, 8)),
                                  _mm256_set1_ps(5.9604644775390625e-08f));
  __m256 s, c;
  fast_sincos_2pi8(ua, s, c);
  z0 = _mm256_mul_ps(r, c);
  z1 = _mm256_mul_ps(r, s);
}

DFZSL_AVX2 static inline void store_block8(__m256i c0, __m256i c1, __m256i c2, __m256i c3, float* out) {
    __m256 z0, z1, z2, z3;
    box_muller8(c0, c1, z0, z1);
    box_muller8(c2, c3, z2, z3);
    // Transpose 4 x 8 (component t of block j + l) into 32 consecutive floats g[4 (j + l) + t].
    const __m256 t0 = _mm256_unpacklo_ps(z0, z1);  // a0 b0 a1 b1 | a4 b4 a5 b5
    const __m256 t1 = _mm256_unpackhi_ps(z0, z1);  // a2 b2 a3 b3 | a6 b6 a7 b7
    const __m256 t2 = _mm256_unpacklo_ps(z2, z3);  // c0 d0 c1 d1 | c4 d4 c5 d5
    const __m256 t3 = _mm256_unpackhi_ps(z2, z3);
    const __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44);  // a0 b0 c0 d0 | a4 b4 c4 d4
    const __m256 u1 = _mm256_shuffle_ps(t0, t2, 0xEE);  // a1 b1 c1 d1 | a5 b5 c5 d5
    const __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44);  // a2 .. | a6 ..
    const __m256 u3 = _mm256_shuffle_ps(t1, t3, 0xEE);  // a3 .. | a7 ..
    _mm256_storeu_ps(out + 0, _mm256_permute2f128_ps(u0, u1, 0x20));   // blocks 0, 1
    _mm256_storeu_ps(out + 8, _mm256_permute2f128_ps(u2, u3, 0x20));   // blocks 2, 3
    _mm256_storeu_ps(out + 16, _mm256_permute2f128_ps(u0, u1, 0x31));  // blocks 4, 5
    _mm256_storeu_ps(out + 24, _mm256_permute2f128_ps(u2, u3, 0x31));  // blocks 6, 7
}

// g[0 .. 4 * nblocks) <- normals of blocks j = 0 .. nblocks-1 of (seed, row) in stream stage
// `stage_word`: kStageDir for the vMF direction, kStageSynth (synth.h) for synthesis noise,
// whose (row id, class id) counter words are the low and high halves of `row`.
DFZSL_AVX2 static void fill_stage_normals_avx2(uint64_t seed, uint64_t row, uint32_t stage_word,
                                               int64_t nblocks, float* g) {
  const __m256i M0 = _mm256_set1_epi32(static_cast<int>(detail::kPhiloxM0));
  const __m256i M1 = _mm256_set1_epi32(static_cast<int>(detail::kPhiloxM1));
  // The key schedule is the same for every lane: precompute it.
  __m256i key0[10], key1[10];
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  for (int r = 0; r < 10; ++r) {
    key0[r] = _mm256_set1_epi32(static_cast<int>(k0));
    key1[r] = _mm256_set1_epi32(static_cast<int>(k1));
    k0 += detail::kPhiloxW0;
    k1 += detail::kPhiloxW1;
  }
  const __m256i stage = _mm256_set1_epi32(static_cast<int>(stage_word));
  const __m256i rlo = _mm256_set1_epi32(static_cast<int>(static_cast<uint32_t>(row)));
  const __m256i rhi = _mm256_set1_epi32(static_cast<int>(static_cast<uint32_t>(row >> 32)));
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  int64_t j = 0;
  for (; j + 16 <= nblocks; j += 16) {
    __m256i c0 = _mm256_add_epi32(_mm256_set1_epi32(static_cast<int>(j)), lane);
    __m256i c1 = stage, c2 = rlo, c3 = rhi;
    __m256i d0 = _mm256_add_epi32(_mm256_set1_epi32(static_cast<int>(j + 8)), lane);
    __m256i d1 = stage, d2 = rlo, d3 = rhi;
    for (int r = 0; r < 10; ++r) {
      __m256i hi0, lo0, hi1, lo1, ehi0, elo0, ehi1, elo1;
      mulhilo8(c0, M0, hi0, lo0);
      mulhilo8(d0, M0, ehi0, elo0);
      mulhilo8(c2, M1, hi1, lo1);
      mulhilo8(d2, M1, ehi1, elo1);
      c0 = _mm256_xor_si256(_mm256_xor_si256(hi1, c1), key0[r]);
      d0 = _mm256_xor_si256(_mm256_xor_si256(ehi1, d1), key0[r]);
      c1 = lo1; d1 = elo1;
      c2 = _mm256_xor_si256(_mm256_xor_si256(hi0, c3), key1[r]);
      d2 = _mm256_xor_si256(_mm256_xor_si256(ehi0, d3), key1[r]);
      c3 = lo0; d3 = elo0;
    }
    store_block8(c0, c1, c2, c3, g + 4 * j);
    store_block8(d0, d1, d2, d3, g + 4 * (j + 8));
  }
  for (; j + 8 <= nblocks; j += 8) {
    __m256i c0 = _mm256_add_epi32(_mm256_set1_epi32(static_cast<int>(j)), lane);
    __m256i c1 = stage, c2 = rlo, c3 = rhi;
    for (int r = 0; r < 10; ++r) {
      __m256i hi0, lo0, hi1, lo1;
      mulhilo8(c0, M0, hi0, lo0);
      mulhilo8(c2, M1, hi1, lo1);
      c0 = _mm256_xor_si256(_mm256_xor_si256(hi1, c1), key0[r]);
      c1 = lo1;
      c2 = _mm256_xor_si256(_mm256_xor_si256(hi0, c3), key1[r]);
      c3 = lo0;
    }
    store_block8(c0, c1, c2, c3, g + 4 * j);
  }
  for (; j < nblocks; ++j) {
    uint32_t o0, o1, o2, o3;
    detail::philox4x32_10(static_cast<uint32_t>(j), stage_word, static_cast<uint32_t>(row),
                          static_cast<uint32_t>(row >> 32), static_cast<uint32_t>(seed),
                          static_cast<uint32_t>(seed >> 32), o0, o1, o2, o3);
    detail::box_muller(o0, o1, g[4 * j], g[4 * j + 1]);
    detail::box_muller(o2, o3, g[4 * j + 2], g[4 * j + 3]);
  }
}

DFZSL_AVX2 static inline void fill_direction_normals_avx2(uint64_t seed, uint64_t row,
                                                          int64_t nblocks, float* g) {
  fill_stage_normals_avx2(seed, row, detail::kStageDir, nblocks, g);
}

static inline bool cpu_has_avx2_fma() {
  static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return ok;
}

}  // namespace cpu
}  // namespace dfzsl_fast
#else
#define DFZSL_HAVE_AVX2_PATH 0
#endif
