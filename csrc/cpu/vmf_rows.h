// The CPU vMF row sampler, shared by dfzsl_fast::vmf_sample (vmf_sample_cpu.cpp, which defines
// it) and the fused stage-1 op dfzsl_fast::vmf_logit_mse (vmf_logit_mse_cpu.cpp): for each row,
// Wood's w from the row's Philox stream, the d direction normals, and the projection
// x = w mu + rho p / |p| (math in csrc/include/dfzsl/vmf.h). One definition, so both ops draw
// bitwise the same samples for the same (seed, stream).
#pragma once

#include <cstdint>

#include "dfzsl/vmf.h"

namespace dfzsl_fast {
namespace cpu {

// Rows i = 0 .. rows-1 with class lab[i] and random stream row0 + i: x (rows, d) in mu's dtype,
// w (rows,) = mu^T x and q (rows,) = (g^T mu) / |p| (what vmf_backward needs). mu (C, d) unit
// rows; consts (C,) Wood constants; g a scratch row of 4 * ceil(d/4) floats.
void sample_rows_f32(const float* mu, const int64_t* lab, const detail::WoodConstants* consts,
                     uint64_t seed, uint64_t row0, int64_t d, int64_t rows, float* g, float* x,
                     double* w, double* q);
void sample_rows_f64(const double* mu, const int64_t* lab, const detail::WoodConstants* consts,
                     uint64_t seed, uint64_t row0, int64_t d, int64_t rows, float* g, double* x,
                     double* w, double* q);

inline void sample_rows_any(const float* mu, const int64_t* lab,
                            const detail::WoodConstants* consts, uint64_t seed, uint64_t row0,
                            int64_t d, int64_t rows, float* g, float* x, double* w, double* q) {
  sample_rows_f32(mu, lab, consts, seed, row0, d, rows, g, x, w, q);
}

inline void sample_rows_any(const double* mu, const int64_t* lab,
                            const detail::WoodConstants* consts, uint64_t seed, uint64_t row0,
                            int64_t d, int64_t rows, float* g, double* x, double* w, double* q) {
  sample_rows_f64(mu, lab, consts, seed, row0, d, rows, g, x, w, q);
}

}  // namespace cpu
}  // namespace dfzsl_fast
