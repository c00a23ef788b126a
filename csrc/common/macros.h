// Shared by csrc/cpu and csrc/cuda: FASTREC_HD marks helpers that compile for host and device.
#pragma once

#if defined(__CUDACC__)
#define FASTREC_HD __host__ __device__ __forceinline__
#else
#define FASTREC_HD inline
#endif
