// The latent noise of synthesis (torch-free, shared by the CPU and CUDA kernels): row r of class c
// of seed s draws z[4j .. 4j+3] from the Philox block with key (s_lo, s_hi) and counter
// (j, kStageSynth, r, c), by Box-Muller on its word pairs (0, 1) and (2, 3). The reference is
// dfzsl_fast/reference/philox.py (float64 log/sincos; these are float32 fastmath, equal to float
// rounding). A row depends on (seed, class, row) only: never on batch, thread or device.
#pragma once

#include <cstdint>

#include "fastmath.h"
#include "macros.h"
#include "philox.h"

namespace dfzsl_fast {
namespace detail {

constexpr uint32_t kStageSynth = 2;  // vmf.h uses 0 (direction) and 1 (w)

// z[0 .. width) of row (cls, row) of `seed`.
DFZSL_HD void synth_normals_row(uint64_t seed, uint32_t cls, uint32_t row, int64_t width,
                                float* z) {
  const int64_t blocks = (width + 3) / 4;
  for (int64_t j = 0; j < blocks; ++j) {
    uint32_t o0, o1, o2, o3;
    philox4x32_10(static_cast<uint32_t>(j), kStageSynth, row, cls, static_cast<uint32_t>(seed),
                  static_cast<uint32_t>(seed >> 32), o0, o1, o2, o3);
    float g[4];
    box_muller(o0, o1, g[0], g[1]);
    box_muller(o2, o3, g[2], g[3]);
    for (int k = 0; k < 4 && 4 * j + k < width; ++k) z[4 * j + k] = g[k];
  }
}

}  // namespace detail
}  // namespace dfzsl_fast
