// CUDA kernels of the graph family: spmm and lightgcn_propagate (row-per-warp SpMM with the fused
// LightGCN epilogue). topk_scores on CUDA runs the chunked reference (torch mm + sort per 1,024 users).
//
// One warp per CSR row: lanes split the d columns (32 at a time), every lane walks the row's neighbours
// (the index and value loads are warp-uniform and broadcast), fp32 accumulation, then the same epilogue
// as the CPU kernel (fastrec::graph::accumulate). The kernel bound-checks what it indexes with user data
// itself (the host checks vanish under torch.compile and CUDA-graph capture): a row's edge range is clamped
// into [0, nnz] and a column outside [0, ncols) is skipped, so nothing is read out of bounds, and both
// raise a device-side assert (as ATen's embedding kernels do), so bad input is an error as on the CPU,
// which raises IndexError/ValueError for the same input.
// Light ATen headers only: this file must compile in seconds under nvcc.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <vector>

#include "common/graph.h"

namespace fastrec {
namespace {

constexpr int kWarp = 32;
constexpr int kWarpsPerBlock = 8;

template <typename index_t>
__global__ void spmm_rows_kernel(const index_t* __restrict__ indptr, const index_t* __restrict__ indices,
                                 const float* __restrict__ values, const float* __restrict__ x, int64_t rows,
                                 int64_t nnz, int64_t ncols, int64_t d, float* __restrict__ next, float* __restrict__ out,
                                 const float* __restrict__ x0, bool first, float w0, float w) {
  const int lane = threadIdx.x % kWarp;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarp;
  if (row >= rows) return;
  const int64_t p0 = static_cast<int64_t>(indptr[row]), p1 = static_cast<int64_t>(indptr[row + 1]);
  CUDA_KERNEL_ASSERT(0 <= p0 && p0 <= p1 && p1 <= nnz && "indptr must be non-decreasing inside [0, nnz]");
  const int64_t e0 = graph::clamp_edge(p0, nnz), e1 = graph::clamp_edge(p1, nnz);
  for (int64_t c0 = 0; c0 < d; c0 += kWarp) {
    const int64_t c = c0 + lane;
    float acc = 0.f;
    for (int64_t e = e0; e < e1; ++e) {
      const index_t j = indices[e];
      CUDA_KERNEL_ASSERT(graph::in_range(j, ncols) && "a column index is outside [0, ncols)");
      if (!graph::in_range(j, ncols)) continue;
      if (c < d) acc += values[e] * x[static_cast<int64_t>(j) * d + c];
    }
    if (c >= d) continue;
    const int64_t off = row * d + c;
    if (next != nullptr) next[off] = acc;
    if (out != nullptr) out[off] = graph::accumulate(first, first ? 0.f : out[off], first ? x0[off] : 0.f, w0, w, acc);
  }
}

template <typename index_t>
void launch_pass(const at::Tensor& indptr, const at::Tensor& indices, const at::Tensor& values, const float* x,
                 int64_t rows, int64_t ncols, int64_t d, float* next, float* out, const float* x0, bool first,
                 float w0, float w) {
  if (rows == 0 || d == 0) return;
  const int64_t blocks = (rows + kWarpsPerBlock - 1) / kWarpsPerBlock;
  TORCH_CHECK_VALUE(blocks < std::numeric_limits<int32_t>::max(), "graph has too many rows for one launch");
  auto stream = c10::cuda::getCurrentCUDAStream();
  spmm_rows_kernel<index_t><<<blocks, kWarpsPerBlock * kWarp, 0, stream>>>(
      indptr.data_ptr<index_t>(), indices.data_ptr<index_t>(), values.data_ptr<float>(), x, rows, indices.numel(),
      ncols, d, next,
      out, x0, first, w0, w);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void check_csr(const at::Tensor& indptr, const at::Tensor& indices, const at::Tensor& values, int64_t rows,
               const char* prefix, const at::Tensor& dense) {
  TORCH_CHECK_VALUE(indptr.device() == dense.device() && indices.device() == dense.device() &&
                        values.device() == dense.device(),
                    prefix, "indptr, ", prefix, "indices and ", prefix, "values must be on ", dense.device());
  TORCH_CHECK_VALUE(indptr.dim() == 1 && indptr.numel() == rows + 1, prefix, "indptr must be 1-D with ", rows + 1,
                    " entries");
  TORCH_CHECK_VALUE(indices.dim() == 1 && values.dim() == 1 && indices.numel() == values.numel(), prefix,
                    "indices and values must be 1-D of equal length");
  TORCH_CHECK_VALUE(indptr.scalar_type() == indices.scalar_type() &&
                        (indices.scalar_type() == at::kInt || indices.scalar_type() == at::kLong),
                    prefix, "indptr and indices must share one dtype (int32 or int64)");
}

at::Tensor spmm_cuda(const at::Tensor& indptr, const at::Tensor& indices, const at::Tensor& values,
                     const at::Tensor& dense) {
  TORCH_CHECK_VALUE(dense.dim() == 2, "dense must be 2-D");
  const int64_t rows = indptr.numel() - 1, ncols = dense.size(0), d = dense.size(1);
  check_csr(indptr, indices, values, rows, "", dense);
  const c10::cuda::CUDAGuard guard(dense.device());
  auto ip = indptr.contiguous(), ix = indices.contiguous();
  auto vals = values.to(at::kFloat).contiguous();
  auto x = dense.to(at::kFloat).contiguous();
  auto out = at::empty({rows, d}, dense.options().dtype(at::kFloat));
  AT_DISPATCH_INDEX_TYPES(ip.scalar_type(), "spmm_cuda", [&] {
    launch_pass<index_t>(ip, ix, vals, x.data_ptr<float>(), rows, ncols, d, out.data_ptr<float>(), nullptr,
                         nullptr, false, 0.f, 0.f);
  });
  return dense.scalar_type() == at::kFloat ? out : out.to(dense.scalar_type());
}

at::Tensor lightgcn_propagate_cuda(const at::Tensor& indptr, const at::Tensor& indices, const at::Tensor& values,
                                   const at::Tensor& t_indptr, const at::Tensor& t_indices,
                                   const at::Tensor& t_values, const at::Tensor& emb,
                                   at::ArrayRef<double> layer_weights) {
  TORCH_CHECK_VALUE(emb.dim() == 2, "emb must be 2-D");
  TORCH_CHECK_VALUE(!layer_weights.empty(), "layer_weights must hold num_layers + 1 weights");
  const int64_t n = emb.size(0), d = emb.size(1), layers = static_cast<int64_t>(layer_weights.size()) - 1;
  check_csr(indptr, indices, values, n, "", emb);
  check_csr(t_indptr, t_indices, t_values, n, "t_", emb);
  const c10::cuda::CUDAGuard guard(emb.device());
  auto ip = indptr.contiguous(), ix = indices.contiguous();
  auto vals = values.to(at::kFloat).contiguous();
  auto x0 = emb.to(at::kFloat).contiguous();
  const float w0 = static_cast<float>(layer_weights[0]);
  if (layers == 0) {
    auto out = x0.mul(layer_weights[0]);
    return out.to(emb.scalar_type());
  }
  auto out = at::empty({n, d}, x0.options());
  auto buf_a = at::empty({layers > 1 ? n * d : 0}, x0.options());
  auto buf_b = at::empty({layers > 2 ? n * d : 0}, x0.options());
  float* bufs[2] = {buf_a.data_ptr<float>(), buf_b.data_ptr<float>()};
  AT_DISPATCH_INDEX_TYPES(ip.scalar_type(), "lightgcn_propagate_cuda", [&] {
    const float* cur = x0.data_ptr<float>();
    for (int64_t l = 1; l <= layers; ++l) {
      float* next = l < layers ? bufs[(l - 1) % 2] : nullptr;
      launch_pass<index_t>(ip, ix, vals, cur, n, n, d, next, out.data_ptr<float>(), x0.data_ptr<float>(), l == 1,
                           w0, static_cast<float>(layer_weights[l]));
      cur = next;
    }
  });
  return emb.scalar_type() == at::kFloat ? out : out.to(emb.scalar_type());
}

}  // namespace

TORCH_LIBRARY_IMPL(fastrec, CUDA, m) {
  m.impl("spmm", &spmm_cuda);
  m.impl("lightgcn_propagate", &lightgcn_propagate_cuda);
}

}  // namespace fastrec
