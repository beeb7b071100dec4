// Philox4x32-10 counter-based random number generator (Salmon et al., "Parallel random numbers:
// as easy as 1, 2, 3", SC 2011), shared verbatim by the CPU and CUDA kernels so that a given
// (seed, counter) produces the same bits on every device and for every thread count.
//
// Stream layout used by every dfzsl_fast sampler (one stream per output row):
//   key     = (seed_lo, seed_hi)                      64-bit user seed
//   counter = (j, stage, row_lo, row_hi)              row = offset + i (64-bit global row index)
// where `stage` separates independent uses inside a row (see vmf.h) and `j` counts 128-bit
// blocks inside a stage. Because the row index is global, generating rows [0, N) in one call or
// in chunks with matching offsets gives identical output.
#pragma once

#include <cstdint>

#include "macros.h"

namespace dfzsl_fast {
namespace detail {

struct Philox4 {
  uint32_t v[4];
};

constexpr uint32_t kPhiloxM0 = 0xD2511F53u;
constexpr uint32_t kPhiloxM1 = 0xCD9E8D57u;
constexpr uint32_t kPhiloxW0 = 0x9E3779B9u;
constexpr uint32_t kPhiloxW1 = 0xBB67AE85u;

DFZSL_HD void mulhilo32(uint32_t a, uint32_t b, uint32_t& hi, uint32_t& lo) {
  const uint64_t p = static_cast<uint64_t>(a) * static_cast<uint64_t>(b);
  hi = static_cast<uint32_t>(p >> 32);
  lo = static_cast<uint32_t>(p);
}

// Ten rounds of Philox4x32 on counter (c0, c1, c2, c3) with key (k0, k1). Written on scalars
// so that a compiler can vectorise a loop of independent calls (the CPU kernel relies on it).
DFZSL_HD void philox4x32_10(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3, uint32_t k0,
                            uint32_t k1, uint32_t& o0, uint32_t& o1, uint32_t& o2, uint32_t& o3) {
#if defined(__CUDA_ARCH__)
#pragma unroll
#elif defined(__GNUC__) && !defined(__clang__)
#pragma GCC unroll 10
#endif
  for (int r = 0; r < 10; ++r) {
    uint32_t hi0, lo0, hi1, lo1;
    mulhilo32(kPhiloxM0, c0, hi0, lo0);
    mulhilo32(kPhiloxM1, c2, hi1, lo1);
    const uint32_t n0 = hi1 ^ c1 ^ k0;
    const uint32_t n2 = hi0 ^ c3 ^ k1;
    c0 = n0;
    c1 = lo1;
    c2 = n2;
    c3 = lo0;
    k0 += kPhiloxW0;
    k1 += kPhiloxW1;
  }
  o0 = c0;
  o1 = c1;
  o2 = c2;
  o3 = c3;
}

DFZSL_HD Philox4 philox(uint32_t c0, uint32_t c1, uint64_t row, uint64_t seed) {
  Philox4 out;
  philox4x32_10(c0, c1, static_cast<uint32_t>(row), static_cast<uint32_t>(row >> 32),
                static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32), out.v[0],
                out.v[1], out.v[2], out.v[3]);
  return out;
}

// Uniform float in the open interval (0, 1) from the top 24 bits: (k + 0.5) / 2^24.
DFZSL_HD float u32_to_open_float(uint32_t x) {
  return (static_cast<float>(x >> 8) + 0.5f) * 5.9604644775390625e-08f;
}

// Uniform double in (0, 1) from 53 bits taken from two words: (k + 0.5) / 2^53.
DFZSL_HD double u64_to_open_double(uint32_t hi, uint32_t lo) {
  const uint64_t k = (static_cast<uint64_t>(hi) << 21) ^ (static_cast<uint64_t>(lo) >> 11);
  return (static_cast<double>(k) + 0.5) * 1.1102230246251565e-16;
}

// A sequential stream of 32-bit words inside one (stage, row) of the layout above. Used for the
// variable-length rejection loops; each refill is one Philox call with the next block index.
struct PhiloxStream {
  uint64_t seed;
  uint64_t row;
  uint32_t stage;
  uint32_t block;
  uint32_t buf[4];
  int used;

  DFZSL_HD PhiloxStream(uint64_t seed_, uint64_t row_, uint32_t stage_)
      : seed(seed_), row(row_), stage(stage_), block(0), used(4) {}

  DFZSL_HD uint32_t next_u32() {
    if (used == 4) {
      const Philox4 r = philox(block, stage, row, seed);
      buf[0] = r.v[0];
      buf[1] = r.v[1];
      buf[2] = r.v[2];
      buf[3] = r.v[3];
      ++block;
      used = 0;
    }
    return buf[used++];
  }

  DFZSL_HD double uniform() {
    const uint32_t hi = next_u32();
    const uint32_t lo = next_u32();
    return u64_to_open_double(hi, lo);
  }
};

}  // namespace detail
}  // namespace dfzsl_fast
