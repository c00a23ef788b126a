// CUDA kernels of the residual-quantization family: nearest_code and residual_encode.
//
// One warp per row: the row's fp32 residual lives in shared memory, lanes split the K codes, each lane
// keeps a running argmin over exact squared distances, and the warp merges the lanes with the same
// tie-breaking rule as the CPU kernel (fastrec::better). All L greedy levels run in one launch.
// Light ATen headers only: this file must compile in seconds under nvcc.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <limits>

#include "common/quantize.h"

namespace fastrec {
namespace {

constexpr int kWarp = 32;
constexpr int64_t kSharedBytes = 48 * 1024;

template <typename T>
__global__ void residual_encode_kernel(const T* __restrict__ x, const T* __restrict__ codebooks, int64_t N,
                                       int64_t K, int64_t D, int64_t L, int64_t* __restrict__ codes,
                                       T* __restrict__ quantized, float* __restrict__ sqdist) {
  extern __shared__ float smem[];
  const int warps = blockDim.x / kWarp;
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * warps + warp;
  if (row >= N) return;  // the whole warp leaves together
  float* res = smem + static_cast<int64_t>(warp) * D;
  const T* xr = x + row * D;
  for (int64_t d = lane; d < D; d += kWarp) res[d] = static_cast<float>(xr[d]);
  __syncwarp();

  for (int64_t l = 0; l < L; ++l) {
    const T* cb = codebooks + l * K * D;
    // start at code 0 (not an out-of-range sentinel): a NaN row, whose distances never compare, keeps it
    float best = INFINITY;
    int64_t best_k = 0;
    bool nan = false;
    for (int64_t d = lane; d < D; d += kWarp) nan |= isnan(res[d]);
    for (int64_t k = lane; k < K; k += kWarp) {
      const T* c = cb + k * D;
      float acc = 0.f;
      for (int64_t d = 0; d < D; ++d) {
        const float diff = res[d] - static_cast<float>(c[d]);
        acc += diff * diff;
      }
      if (better(acc, k, best, best_k)) {
        best = acc;
        best_k = k;
      }
    }
    for (int offset = kWarp / 2; offset > 0; offset /= 2) {
      const float other = __shfl_down_sync(0xffffffffu, best, offset);
      const int64_t other_k = __shfl_down_sync(0xffffffffu, best_k, offset);
      if (better(other, other_k, best, best_k)) {
        best = other;
        best_k = other_k;
      }
    }
    best_k = __shfl_sync(0xffffffffu, best_k, 0);
    best = __shfl_sync(0xffffffffu, best, 0);
    if (__any_sync(0xffffffffu, nan)) best = NAN;  // the distance of a NaN row is NaN, as in every backend
    CUDA_KERNEL_ASSERT(best_k >= 0 && best_k < K);
    if (lane == 0) {
      codes[row * L + l] = best_k;
      if (sqdist != nullptr) sqdist[row] = best;
    }
    const T* c = cb + best_k * D;
    for (int64_t d = lane; d < D; d += kWarp) res[d] -= static_cast<float>(c[d]);
    __syncwarp();
  }
  if (quantized == nullptr) return;
  // quantized = x - final residual would round differently from the sum of codes; sum the codes.
  T* q = quantized + row * D;
  const int64_t* row_codes = codes + row * L;
  __syncwarp();
  for (int64_t d = lane; d < D; d += kWarp) {
    float acc = 0.f;
    for (int64_t l = 0; l < L; ++l) acc += static_cast<float>(codebooks[(l * K + row_codes[l]) * D + d]);
    q[d] = static_cast<T>(acc);
  }
}

void launch(const at::Tensor& x, const at::Tensor& codebooks, at::Tensor& codes, at::Tensor* quantized,
            at::Tensor* sqdist) {
  const int64_t N = x.size(0), D = x.size(1), L = codebooks.size(0), K = codebooks.size(1);
  if (N == 0) return;
  // D = 0 needs no shared memory; one byte per row keeps the warp count arithmetic defined
  const int64_t row_bytes = std::max<int64_t>(1, D * static_cast<int64_t>(sizeof(float)));
  TORCH_CHECK_VALUE(row_bytes <= kSharedBytes, "x has D=", D, "; the CUDA kernel keeps one row in shared ",
                    "memory and supports D <= ", kSharedBytes / sizeof(float));
  const int warps = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(8, kSharedBytes / row_bytes)));
  const int64_t blocks = (N + warps - 1) / warps;
  TORCH_CHECK_VALUE(blocks < std::numeric_limits<int32_t>::max(), "x has too many rows for one launch");
  const c10::cuda::CUDAGuard guard(x.device());
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "residual_encode_cuda", [&] {
    residual_encode_kernel<scalar_t><<<blocks, warps * kWarp, warps * D * sizeof(float), stream>>>(
        x.data_ptr<scalar_t>(), codebooks.data_ptr<scalar_t>(), N, K, D, L, codes.data_ptr<int64_t>(),
        quantized ? quantized->data_ptr<scalar_t>() : nullptr, sqdist ? sqdist->data_ptr<float>() : nullptr);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void check_args(const at::Tensor& x, const at::Tensor& codebooks, int64_t rank, const char* name) {
  TORCH_CHECK_VALUE(x.dim() == 2, "x must be 2-D [N, D], got ", x.dim(), "-D");
  TORCH_CHECK_VALUE(codebooks.dim() == rank, name, " must be ", rank, "-D, got ", codebooks.dim(), "-D");
  TORCH_CHECK_VALUE(x.size(1) == codebooks.size(-1), "x has D=", x.size(1), " but ", name, " has D=",
                    codebooks.size(-1));
  TORCH_CHECK_VALUE(codebooks.size(-2) > 0, name, " has no codes (K = 0)");
  TORCH_CHECK_VALUE(x.scalar_type() == codebooks.scalar_type(), "x and ", name, " differ in dtype");
  TORCH_CHECK_VALUE(x.device() == codebooks.device(), "x and ", name, " are on different devices");
}

std::tuple<at::Tensor, at::Tensor> nearest_code_cuda(const at::Tensor& x, const at::Tensor& codebook) {
  check_args(x, codebook, 2, "codebook");
  auto xc = x.contiguous();
  auto cc = codebook.contiguous().unsqueeze(0);
  auto index = at::empty({x.size(0), 1}, x.options().dtype(at::kLong));
  auto sqdist = at::empty({x.size(0)}, x.options().dtype(at::kFloat));
  launch(xc, cc, index, nullptr, &sqdist);
  return {index.view({x.size(0)}), sqdist};
}

std::tuple<at::Tensor, at::Tensor> residual_encode_cuda(const at::Tensor& x, const at::Tensor& codebooks) {
  check_args(x, codebooks, 3, "codebooks");
  TORCH_CHECK_VALUE(codebooks.size(0) > 0, "codebooks has no levels (L = 0)");
  auto xc = x.contiguous();
  auto cc = codebooks.contiguous();
  auto codes = at::empty({x.size(0), codebooks.size(0)}, x.options().dtype(at::kLong));
  auto quantized = at::empty_like(xc);
  launch(xc, cc, codes, &quantized, nullptr);
  return {codes, quantized};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastrec, CUDA, m) {
  m.impl("nearest_code", &nearest_code_cuda);
  m.impl("residual_encode", &residual_encode_cuda);
}

}  // namespace fastrec
