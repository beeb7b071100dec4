// CUDA kernels of dfzsl_fast::vmf_sample: exact batched von Mises-Fisher sampling. Torch-free
// (only dfzsl/*.h and CUDA headers), so it compiles with bare nvcc (tools/cuda_compile_check.sh);
// the torch glue is vmf_sample_cuda.cu.
//
// Math (shared with the CPU kernel through csrc/include/dfzsl/vmf.h). A sample of vMF(mu, kappa)
// on S^{d-1} is x = w mu + rho p / |p|, where
//  * w = mu^T x comes from Wood's (1994) rejection sampler, run in float64 on the row's own
//    Philox stream (stage kStageW) by detail::wood_draw_w, which also returns
//    rho = sqrt(1 - w^2) computed without cancellation;
//  * p = g - s mu, s = g^T mu, with g the row's standard normals: Philox block j of stage
//    kStageDir gives g[4j .. 4j+3] (detail::direction_normals: Box-Muller on the word pairs
//    (0, 1) and (2, 3) with the libm-free fastmath.h functions, so CPU and CUDA agree to float
//    rounding);
//  * p is projected off mu a second time (p -= (p^T mu) mu): in float32 the first projection
//    leaves a component along mu of about eps |g|, large next to |p| when g is nearly parallel
//    to mu (at d = 2, ~0.1% of rows were off the sphere by up to 1e-3);
//  * q = s / |p| (s including the second pass's correction) is kept per row for the backward
//    formula (dfzsl_fast/autograd/vmf.py).
// As on the CPU, |p|^2 is computed by the exact two-pass sum of (g_k - s mu_k)^2, not as
// |g|^2 - s^2, and |p| = 0 (probability zero) is replaced by 1 to keep a degenerate row finite.
// Row i uses the Philox streams of global row offset + i, so output does not depend on the launch
// configuration, and chunked calls with matching offsets reproduce one big call.
//
// Layouts (all contiguous): mu (C, d) scalar_t, unit rows; labels (N,) int64 in [0, C);
// consts (C,) detail::WoodConstants (built on the host by detail::wood_constants); x (N, d)
// scalar_t; w (N,) float64; q (N,) float64. Index math is 64-bit throughout.
//
// Thread mapping.
//  Phase 1, vmf_wood_w_kernel: one thread per row runs the Wood loop (float64, a variable number
//    of proposals; about 1.4 at most on average) and writes w[i] and rho[i]. The rho array is
//    scratch: the launcher passes q's storage, which phase 2 overwrites with s / |p| (see below).
//    Keeping the rejection loop out of the direction kernel keeps that kernel's lanes convergent
//    (docs/performance.md section 4.1: drawing w on lane 0 nearly doubles the instruction count).
//  Phase 2, vmf_direction_kernel<scalar_t, LANES, NB>: a group of LANES lanes (a power of two,
//    at most a warp) owns one row; a warp holds 32 / LANES groups, a block kDirWarps warps.
//    Lane l of a group takes the Philox blocks j = l, l + LANES, l + 2 LANES, ... (each gives 4
//    consecutive normals, so a warp's stores of one block index are one contiguous run of 4 * 32
//    elements, written with 16-byte stores where d % 4 == 0 and the pointers are aligned).
//    NB > 0: the row has at most LANES * NB blocks; a lane keeps its NB * 4 normals and mu
//      values in registers: generate once, reduce s = g^T mu (shuffles), reduce |p|^2, write.
//    NB == 0 (d > 32 * 8 * 4 = 1024; d > 512 for float64): registers would not hold the row; the lane regenerates its
//      normals in each of the three passes (Philox is counter-based: regenerating costs only the
//      arithmetic, and the three passes see bitwise the same g), re-reading mu from L1/L2.
//    Group reductions are __shfl_xor_sync butterflies of width LANES. The loop over rows is
//    warp-uniform (a group past the last row runs the shuffles on zeros and stores nothing), so
//    every full-mask shuffle is reached by all 32 lanes. The group's lane 0 loads w[i] and
//    rho[i] and broadcasts them, and it alone later stores q[i]: since rho aliases q, the load
//    and the store of that address are then in one thread, in program order.
//  direction_normals_kernel: one thread per (row, block), writing the raw float32 normals
//    (n, 4 * ceil(d / 4)) for the CPU/CUDA stream-equality tests.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstring>

// philox.h's host-only `#pragma GCC unroll` is unknown to nvcc's front end (warning 1675).
#if defined(__NVCC__)
#pragma nv_diag_suppress 1675
#endif
#include "dfzsl/vmf.h"
#if defined(__NVCC__)
#pragma nv_diag_default 1675
#endif

namespace dfzsl_fast {
namespace cuda {

constexpr int kWarpSize = 32;
constexpr int kWoodThreads = 128;  // phase 1 block size (one thread per row)
constexpr int kDirWarps = 4;       // phase 2 warps per block
constexpr int kDirThreads = kDirWarps * kWarpSize;
constexpr int kNormalsThreads = 256;
constexpr int64_t kMaxGrid = (int64_t{1} << 31) - 1;

// ------------------------------------------------------------------ scalar types and vector I/O
// Arithmetic type per storage type: float and double compute in themselves (as the CPU kernel
// does); half and bfloat16 compute in float.
template <typename T>
struct OpMath {
  using type = T;
};
template <>
struct OpMath<__half> {
  using type = float;
};
template <>
struct OpMath<__nv_bfloat16> {
  using type = float;
};

__device__ __forceinline__ float to_acc(float v) { return v; }
__device__ __forceinline__ double to_acc(double v) { return v; }
__device__ __forceinline__ float to_acc(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_acc(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__device__ __forceinline__ T from_acc(typename OpMath<T>::type v);
template <>
__device__ __forceinline__ float from_acc<float>(float v) {
  return v;
}
template <>
__device__ __forceinline__ double from_acc<double>(double v) {
  return v;
}
template <>
__device__ __forceinline__ __half from_acc<__half>(float v) {
  return __float2half_rn(v);
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

// NB of the largest register-resident variant: a lane holds 4 NB normals (float) and 4 NB mu
// values (acc_t). 8 for float math (128 registers on sm_90), 4 for double (8 would take ~200
// registers and halve occupancy; the three-pass path takes over above d = 512).
template <typename scalar_t>
constexpr int max_register_blocks() {
  return sizeof(typename OpMath<scalar_t>::type) == 8 ? 4 : 8;
}

// Byte alignment that the 4-element vector loads and stores of T need.
template <typename T>
constexpr int vec4_align() {
  return sizeof(T) >= 4 ? 16 : 8;  // float4; 2 x double2; uint2 for 4 x 16-bit
}

// out[e] <- p[e], e < 4, from 4 aligned elements (read-only path).
__device__ __forceinline__ void load4_vec(const float* p, float (&out)[4]) {
  const float4 v = __ldg(reinterpret_cast<const float4*>(p));
  out[0] = v.x;
  out[1] = v.y;
  out[2] = v.z;
  out[3] = v.w;
}
__device__ __forceinline__ void load4_vec(const double* p, double (&out)[4]) {
  const double2 a = __ldg(reinterpret_cast<const double2*>(p));
  const double2 b = __ldg(reinterpret_cast<const double2*>(p) + 1);
  out[0] = a.x;
  out[1] = a.y;
  out[2] = b.x;
  out[3] = b.y;
}
template <typename T>  // __half, __nv_bfloat16
__device__ __forceinline__ void load4_vec(const T* p, float (&out)[4]) {
  const uint2 v = __ldg(reinterpret_cast<const uint2*>(p));
  T h[4];
  memcpy(h, &v, sizeof(v));
#pragma unroll
  for (int e = 0; e < 4; ++e) out[e] = to_acc(h[e]);
}

// p[e] <- v[e], e < 4, to 4 aligned elements, with streaming stores (x is written once; keep
// the mu table in L2).
__device__ __forceinline__ void store4_vec(float* p, const float (&v)[4]) {
  __stcs(reinterpret_cast<float4*>(p), make_float4(v[0], v[1], v[2], v[3]));
}
__device__ __forceinline__ void store4_vec(double* p, const double (&v)[4]) {
  __stcs(reinterpret_cast<double2*>(p), make_double2(v[0], v[1]));
  __stcs(reinterpret_cast<double2*>(p) + 1, make_double2(v[2], v[3]));
}
template <typename T>  // __half, __nv_bfloat16
__device__ __forceinline__ void store4_vec(T* p, const float (&v)[4]) {
  T h[4];
#pragma unroll
  for (int e = 0; e < 4; ++e) h[e] = from_acc<T>(v[e]);
  uint2 u;
  memcpy(&u, h, sizeof(u));
  __stcs(reinterpret_cast<uint2*>(p), u);
}

// Elements k0 .. k0+3 of a row of length d, zero past the end (vec: d % 4 == 0 and aligned).
template <typename T, typename A>
__device__ __forceinline__ void load4(const T* row, int64_t k0, int64_t d, bool vec,
                                      A (&out)[4]) {
  if (vec) {
    load4_vec(row + k0, out);
  } else {
#pragma unroll
    for (int e = 0; e < 4; ++e) out[e] = k0 + e < d ? to_acc(row[k0 + e]) : A(0);
  }
}

template <typename T, typename A>
__device__ __forceinline__ void store4(T* row, int64_t k0, int64_t d, bool vec, const A (&v)[4]) {
  if (vec) {
    store4_vec(row + k0, v);
  } else {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      if (k0 + e < d) row[k0 + e] = from_acc<T>(v[e]);
    }
  }
}

// Sum over the LANES lanes of each aligned lane group; every lane gets its group's sum.
template <int LANES, typename T>
__device__ __forceinline__ T group_sum(T v) {
#pragma unroll
  for (int o = LANES / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o, LANES);
  return v;
}

// Normals g[4j .. 4j+3] of (seed, row), zero for indices >= d.
__device__ __forceinline__ void block_normals(uint64_t seed, uint64_t row, int64_t j, int64_t d,
                                              float (&g)[4]) {
  detail::direction_normals(seed, row, static_cast<uint32_t>(j), g[0], g[1], g[2], g[3]);
  const int64_t k0 = 4 * j;
#pragma unroll
  for (int e = 0; e < 4; ++e) g[e] = k0 + e < d ? g[e] : 0.0f;
}

// ------------------------------------------------------------------------------------- kernels
// Phase 1: (w, rho) of each row by Wood's rejection loop; one thread per row.
__global__ void __launch_bounds__(kWoodThreads)
    vmf_wood_w_kernel(const detail::WoodConstants* __restrict__ consts,
                      const int64_t* __restrict__ labels, uint64_t seed, uint64_t offset,
                      int64_t n, double* __restrict__ w, double* __restrict__ rho) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += stride) {
    const detail::WoodConstants k = consts[labels[i]];
    const detail::WDraw r = detail::wood_draw_w(k, seed, offset + static_cast<uint64_t>(i));
    w[i] = r.w;
    rho[i] = r.rho;
  }
}

// Phase 2: the direction of each row given (w, rho). `rho` may alias `q` (see the header).
template <typename scalar_t, int LANES, int NB>
__global__ void __launch_bounds__(kDirThreads)
    vmf_direction_kernel(const scalar_t* __restrict__ mu, const int64_t* __restrict__ labels,
                         const double* __restrict__ w, const double* rho, uint64_t seed,
                         uint64_t offset, int64_t n, int64_t d, bool vec,
                         scalar_t* __restrict__ x, double* q) {
  static_assert(LANES >= 1 && LANES <= kWarpSize && (LANES & (LANES - 1)) == 0,
                "LANES must be a power of two <= 32");
  static_assert(NB >= 0 && (NB > 0 || LANES == kWarpSize), "the regenerating path uses warps");
  using acc_t = typename OpMath<scalar_t>::type;
  constexpr int kGroups = kWarpSize / LANES;  // rows per warp
  const int lane = static_cast<int>(threadIdx.x) & (kWarpSize - 1);
  const int sub = lane & (LANES - 1);
  const int grp = lane / LANES;
  const int64_t warp = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / kWarpSize;
  const int64_t nwarps = static_cast<int64_t>(gridDim.x) * blockDim.x / kWarpSize;
  const int64_t nblocks = (d + 3) / 4;

  for (int64_t base = warp * kGroups; base < n; base += nwarps * kGroups) {  // warp-uniform
    const int64_t i = base + grp;
    const bool active = i < n;
    const int64_t c = active ? labels[i] : 0;
    const scalar_t* mrow = mu + c * d;
    scalar_t* xrow = x + (active ? i : 0) * d;
    const uint64_t prow = offset + static_cast<uint64_t>(i);
    double wi = 0.0, rhoi = 0.0;
    if (active && sub == 0) {
      wi = w[i];
      rhoi = rho[i];
    }
    wi = __shfl_sync(0xffffffffu, wi, 0, LANES);
    rhoi = __shfl_sync(0xffffffffu, rhoi, 0, LANES);

    acc_t s = 0, r;
    if constexpr (NB > 0) {
      float g[NB][4];
      acc_t m[NB][4];
#pragma unroll
      for (int t = 0; t < NB; ++t) {
        const int64_t j = sub + static_cast<int64_t>(LANES) * t;
        if (active && j < nblocks) {
          block_normals(seed, prow, j, d, g[t]);
          load4(mrow, 4 * j, d, vec, m[t]);
        } else {
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            g[t][e] = 0.0f;
            m[t][e] = acc_t(0);
          }
        }
#pragma unroll
        for (int e = 0; e < 4; ++e) s += static_cast<acc_t>(g[t][e]) * m[t][e];
      }
      s = group_sum<LANES>(s);
      // p = g - s mu is kept in registers (acc_t), then projected off mu a second time.
      acc_t pv[NB][4];
      acc_t tt = 0;
#pragma unroll
      for (int t = 0; t < NB; ++t) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          pv[t][e] = static_cast<acc_t>(g[t][e]) - s * m[t][e];
          tt += pv[t][e] * m[t][e];
        }
      }
      tt = group_sum<LANES>(tt);
      acc_t r2 = 0;
#pragma unroll
      for (int t = 0; t < NB; ++t) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          pv[t][e] -= tt * m[t][e];
          r2 += pv[t][e] * pv[t][e];
        }
      }
      r2 = group_sum<LANES>(r2);
      s += tt;
      r = r2 > acc_t(0) ? sqrt(r2) : acc_t(1);
      const acc_t sw = static_cast<acc_t>(wi);
      const acc_t scale = static_cast<acc_t>(rhoi) / r;
#pragma unroll
      for (int t = 0; t < NB; ++t) {
        const int64_t j = sub + static_cast<int64_t>(LANES) * t;
        if (active && j < nblocks) {
          acc_t v[4];
#pragma unroll
          for (int e = 0; e < 4; ++e) v[e] = sw * m[t][e] + scale * pv[t][e];
          store4(xrow, 4 * j, d, vec, v);
        }
      }
    } else {
      // Three passes over the row, regenerating the same normals in each.
      if (active) {
        for (int64_t j = sub; j < nblocks; j += LANES) {
          float g[4];
          acc_t m[4];
          block_normals(seed, prow, j, d, g);
          load4(mrow, 4 * j, d, vec, m);
#pragma unroll
          for (int e = 0; e < 4; ++e) s += static_cast<acc_t>(g[e]) * m[e];
        }
      }
      s = group_sum<LANES>(s);
      // Pass 2 sums |p|^2 and t = p^T mu together; the second projection p - t mu then has
      // |p - t mu|^2 = |p|^2 - t^2 (mu unit), and pass 3 applies it. The normals are bitwise the
      // same in every pass and p is the same expression, so each pass sees the same rounded p.
      acc_t r2 = 0, tt = 0;
      if (active) {
        for (int64_t j = sub; j < nblocks; j += LANES) {
          float g[4];
          acc_t m[4];
          block_normals(seed, prow, j, d, g);
          load4(mrow, 4 * j, d, vec, m);
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const acc_t p = static_cast<acc_t>(g[e]) - s * m[e];
            r2 += p * p;
            tt += p * m[e];
          }
        }
      }
      r2 = group_sum<LANES>(r2);
      tt = group_sum<LANES>(tt);
      r2 -= tt * tt;
      r = r2 > acc_t(0) ? sqrt(r2) : acc_t(1);
      const acc_t sw = static_cast<acc_t>(wi);
      const acc_t scale = static_cast<acc_t>(rhoi) / r;
      if (active) {
        for (int64_t j = sub; j < nblocks; j += LANES) {
          float g[4];
          acc_t m[4];
          block_normals(seed, prow, j, d, g);
          load4(mrow, 4 * j, d, vec, m);
          acc_t v[4];
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const acc_t p = static_cast<acc_t>(g[e]) - s * m[e];
            v[e] = sw * m[e] + scale * (p - tt * m[e]);
          }
          store4(xrow, 4 * j, d, vec, v);
        }
      }
      s += tt;
    }
    if (active && sub == 0) q[i] = static_cast<double>(s) / static_cast<double>(r);
  }
}

// Raw direction-stage normals: g (n, 4 * nblocks) float32; one thread per (row, block).
__global__ void __launch_bounds__(kNormalsThreads)
    direction_normals_kernel(uint64_t seed, uint64_t offset, int64_t n, int64_t nblocks,
                             float* __restrict__ g) {
  const int64_t total = n * nblocks;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; t < total;
       t += stride) {
    const int64_t i = t / nblocks;
    const int64_t j = t - i * nblocks;
    float4 v;
    detail::direction_normals(seed, offset + static_cast<uint64_t>(i), static_cast<uint32_t>(j),
                              v.x, v.y, v.z, v.w);
    reinterpret_cast<float4*>(g)[t] = v;  // row i, block j sits at float offset 4 (i nblocks + j)
  }
}

// ----------------------------------------------------------------------- host-side launchers
// Torch-free; the caller checks launch errors (C10_CUDA_KERNEL_LAUNCH_CHECK in the glue).
inline unsigned int grid_for(int64_t work, int64_t per_block) {
  const int64_t b = (work + per_block - 1) / per_block;
  return static_cast<unsigned int>(b < 1 ? 1 : (b > kMaxGrid ? kMaxGrid : b));
}

inline void launch_vmf_wood_w(const detail::WoodConstants* consts, const int64_t* labels,
                              uint64_t seed, uint64_t offset, int64_t n, double* w, double* rho,
                              cudaStream_t stream) {
  if (n <= 0) return;
  vmf_wood_w_kernel<<<grid_for(n, kWoodThreads), kWoodThreads, 0, stream>>>(consts, labels, seed,
                                                                          offset, n, w, rho);
}

template <typename scalar_t, int LANES, int NB>
inline void launch_vmf_direction_impl(const scalar_t* mu, const int64_t* labels, const double* w,
                                      const double* rho, uint64_t seed, uint64_t offset,
                                      int64_t n, int64_t d, bool vec, scalar_t* x, double* q,
                                      cudaStream_t stream) {
  constexpr int64_t rows_per_block = static_cast<int64_t>(kDirWarps) * (kWarpSize / LANES);
  vmf_direction_kernel<scalar_t, LANES, NB><<<grid_for(n, rows_per_block), kDirThreads, 0,
                                              stream>>>(mu, labels, w, rho, seed, offset, n, d,
                                                        vec, x, q);
}

// Whether the 16-byte (8 for 16-bit types) vector path applies to rows of length d.
template <typename scalar_t>
inline bool vmf_vector_io(const scalar_t* mu, const scalar_t* x, int64_t d) {
  constexpr uintptr_t a = static_cast<uintptr_t>(vec4_align<scalar_t>());
  return d % 4 == 0 && reinterpret_cast<uintptr_t>(mu) % a == 0 &&
         reinterpret_cast<uintptr_t>(x) % a == 0;
}

// Phase 2 with the variant for d: register-resident rows up to 32 * max_register_blocks blocks
// (d <= 1024; 512 for float64), with LANES shrunk to the power of two covering the blocks for
// d <= 128 (a warp then holds 32 / LANES rows); three passes beyond.
template <typename scalar_t>
inline void launch_vmf_direction(const scalar_t* mu, const int64_t* labels, const double* w,
                                 const double* rho, uint64_t seed, uint64_t offset, int64_t n,
                                 int64_t d, scalar_t* x, double* q, cudaStream_t stream) {
  if (n <= 0) return;
  const int64_t nb = (d + 3) / 4;
  const bool vec = vmf_vector_io(mu, x, d);
#define DFZSL_VMF_LAUNCH(L, B) \
  launch_vmf_direction_impl<scalar_t, L, B>(mu, labels, w, rho, seed, offset, n, d, vec, x, q, stream)
  if (nb <= 1) {
    DFZSL_VMF_LAUNCH(1, 1);
  } else if (nb <= 2) {
    DFZSL_VMF_LAUNCH(2, 1);
  } else if (nb <= 4) {
    DFZSL_VMF_LAUNCH(4, 1);
  } else if (nb <= 8) {
    DFZSL_VMF_LAUNCH(8, 1);
  } else if (nb <= 16) {
    DFZSL_VMF_LAUNCH(16, 1);
  } else if (nb <= 32) {
    DFZSL_VMF_LAUNCH(32, 1);
  } else if (nb <= 64) {
    DFZSL_VMF_LAUNCH(32, 2);
  } else if (nb <= 128) {
    DFZSL_VMF_LAUNCH(32, 4);
  } else {
    if constexpr (max_register_blocks<scalar_t>() >= 8) {
      if (nb <= 256) {
        DFZSL_VMF_LAUNCH(32, 8);
        return;
      }
    }
    DFZSL_VMF_LAUNCH(32, 0);
  }
#undef DFZSL_VMF_LAUNCH
}

inline void launch_direction_normals(uint64_t seed, uint64_t offset, int64_t n, int64_t nblocks,
                                     float* g, cudaStream_t stream) {
  if (n <= 0 || nblocks <= 0) return;
  direction_normals_kernel<<<grid_for(n * nblocks, kNormalsThreads), kNormalsThreads, 0,
                             stream>>>(seed, offset, n, nblocks, g);
}

// Compile check of every variant, including the 16-bit outputs that the torch glue does not
// dispatch yet (tools/cuda_compile_check.sh defines DFZSL_COMPILE_CHECK).
#if defined(DFZSL_COMPILE_CHECK)
template void launch_vmf_direction<float>(const float*, const int64_t*, const double*,
                                          const double*, uint64_t, uint64_t, int64_t, int64_t,
                                          float*, double*, cudaStream_t);
template void launch_vmf_direction<double>(const double*, const int64_t*, const double*,
                                           const double*, uint64_t, uint64_t, int64_t, int64_t,
                                           double*, double*, cudaStream_t);
template void launch_vmf_direction<__half>(const __half*, const int64_t*, const double*,
                                           const double*, uint64_t, uint64_t, int64_t, int64_t,
                                           __half*, double*, cudaStream_t);
template void launch_vmf_direction<__nv_bfloat16>(const __nv_bfloat16*, const int64_t*,
                                                  const double*, const double*, uint64_t,
                                                  uint64_t, int64_t, int64_t, __nv_bfloat16*,
                                                  double*, cudaStream_t);
#endif

}  // namespace cuda
}  // namespace dfzsl_fast
