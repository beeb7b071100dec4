// Portability macros shared by the CPU (g++) and CUDA (nvcc) builds of the torch-free core.
#pragma once

#if defined(__CUDACC__) || defined(__HIPCC__)
#define DFZSL_HD __host__ __device__ __forceinline__
#define DFZSL_DEVICE_COMPILE 1
#else
#define DFZSL_HD inline
#define DFZSL_DEVICE_COMPILE 0
#endif
