// CUDA host code of the graph family: spmm and lightgcn_propagate (nnz-balanced merge-path SpMM with the
// fused LightGCN epilogue). The kernels themselves are in csrc/cuda/graph_kernels.cuh (how the work is split,
// how a warp streams its edges, L2 policy, bounds checks). topk_scores on CUDA runs the Triton kernel
// (fastrec/ops/graph.py).
//
// Per call: one partition launch writes every warp's plan (shared by all the passes of a CSR), then two
// launches per pass (carry kernel, owner kernel). No host sync, the current stream, scratch from the
// caching allocator: CUDA-graph capturable.
// FASTREC_SPMM_STREAM_HINTS=0 turns the evict-first hints off, FASTREC_SPMM_OWNER_MIN_BLOCKS=3 selects the
// owner kernel capped at 80 registers (24 warps a multiprocessor; graph_kernels.cuh): the benchmark times each.
// Light ATen headers only: this file must compile in seconds under nvcc.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>

#include "common/graph.h"

#include "cuda/graph_kernels.cuh"

namespace fastrec {
namespace {

using namespace graph_kernels;

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// Whether environment variable `name` is set to `value`. The kernel options are read per pass, so the
// benchmark can time each variant in one process: FASTREC_SPMM_STREAM_HINTS=0 turns the evict-first hints
// off; FASTREC_SPMM_OWNER_MIN_BLOCKS=3 selects spmm_owned_kernel_capped for float4 rows with the stream hints
// (only that variant is compiled twice).
bool env_is(const char* name, const char* value) {
  const char* v = std::getenv(name);
  return v != nullptr && std::strcmp(v, value) == 0;
}

// Every worker's plan for a CSR of indptr.numel() - 1 rows and nnz edges: [workers, kPlanFields] int64, one
// launch of one thread per worker. The pass kernels read it; a CSR's passes (LightGCN's layers) share it.
template <typename index_t>
at::Tensor partition(const at::Tensor& indptr, int64_t nnz, int64_t items_per_worker) {
  const int64_t rows = indptr.numel() - 1, workers = graph::merge_path_workers(rows, nnz, items_per_worker);
  auto plan = at::empty({workers, kPlanFields}, indptr.options().dtype(at::kLong));
  if (workers == 0) return plan;
  const int threads = 128;
  const int64_t blocks = (workers + threads - 1) / threads;
  TORCH_CHECK_VALUE(blocks < std::numeric_limits<int32_t>::max(), "graph has too many entries for one launch");
  partition_kernel<index_t><<<blocks, threads, 0, c10::cuda::getCurrentCUDAStream()>>>(
      indptr.data_ptr<index_t>(), rows, nnz, items_per_worker, workers, plan.data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return plan;
}

// The carry kernel, then the owner kernel (`capped`: its 24-warps-a-multiprocessor build, which exists for
// float4 rows with the stream hints only), of one pass.
template <int V, bool Hint, typename index_t>
void launch_kernels(const PassArgs<index_t>& a, int64_t workers, int64_t blocks, cudaStream_t stream, bool capped) {
  const int threads = kWarpsPerBlock * kWarp;
  spmm_carry_kernel<V, Hint, index_t><<<blocks, threads, 0, stream>>>(a, workers);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  if constexpr (V == 4 && Hint) {
    if (capped) {
      spmm_owned_kernel_capped<V, Hint, index_t><<<blocks, threads, 0, stream>>>(a, workers);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      return;
    }
  }
  spmm_owned_kernel<V, Hint, index_t><<<blocks, threads, 0, stream>>>(a, workers);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// One SpMM pass (next = A @ x, out = accumulate(...)): the carry kernel, then the owner kernel.
// `plan` is partition(indptr, nnz, kItemsPerWarp); `carry` holds its workers * d floats.
template <typename index_t>
void launch_pass(const at::Tensor& indptr, const at::Tensor& indices, const at::Tensor& values,
                 const at::Tensor& plan, const float* x, int64_t rows, int64_t ncols, int64_t d, float* next,
                 float* out, const float* x0, bool first, float w0, float w, float* carry) {
  const int64_t nnz = indices.numel();
  const int64_t workers = plan.size(0);
  if (rows == 0 || d == 0 || workers == 0) return;
  const int64_t blocks = (workers + kWarpsPerBlock - 1) / kWarpsPerBlock;
  TORCH_CHECK_VALUE(blocks < std::numeric_limits<int32_t>::max(), "graph has too many entries for one launch");
  // 16-byte loads and stores need d % 4 == 0 and every dense row 16-byte aligned (dense may be a view)
  const bool vec = d % 4 == 0 && aligned16(x) && (x0 == nullptr || aligned16(x0)) &&
                   (next == nullptr || aligned16(next)) && (out == nullptr || aligned16(out)) && aligned16(carry);
  const int group = lanes_per_neighbour(vec ? d / 4 : d);
  PassArgs<index_t> a{indptr.data_ptr<index_t>(), indices.data_ptr<index_t>(), values.data_ptr<float>(), x, rows,
                      nnz, ncols, d, next, out, x0, first, w0, w, plan.data_ptr<int64_t>(), carry, group};
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const bool hints = !env_is("FASTREC_SPMM_STREAM_HINTS", "0");
  const bool capped = env_is("FASTREC_SPMM_OWNER_MIN_BLOCKS", "3");
  if (vec && hints) {
    launch_kernels<4, true>(a, workers, blocks, stream, capped);
  } else if (vec) {
    launch_kernels<4, false>(a, workers, blocks, stream, capped);
  } else if (hints) {
    launch_kernels<1, true>(a, workers, blocks, stream, capped);
  } else {
    launch_kernels<1, false>(a, workers, blocks, stream, capped);
  }
}

// Scratch for the carries of one pass, from the caching allocator (reused by every pass of a call).
at::Tensor carry_buffer(const at::Tensor& plan, int64_t d, const at::Tensor& like) {
  return at::empty({std::max<int64_t>(plan.size(0) * d, 1)}, like.options().dtype(at::kFloat));
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
    const at::Tensor plan = partition<index_t>(ip, ix.numel(), kItemsPerWarp);
    const at::Tensor carry = carry_buffer(plan, d, x);
    launch_pass<index_t>(ip, ix, vals, plan, x.data_ptr<float>(), rows, ncols, d, out.data_ptr<float>(), nullptr,
                         nullptr, false, 0.f, 0.f, carry.data_ptr<float>());
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
    const at::Tensor plan = partition<index_t>(ip, ix.numel(), kItemsPerWarp);  // one for every layer
    const at::Tensor carry = carry_buffer(plan, d, x0);
    const float* cur = x0.data_ptr<float>();
    for (int64_t l = 1; l <= layers; ++l) {
      float* next = l < layers ? bufs[(l - 1) % 2] : nullptr;
      launch_pass<index_t>(ip, ix, vals, plan, cur, n, n, d, next, out.data_ptr<float>(), x0.data_ptr<float>(), l == 1,
                           w0, static_cast<float>(layer_weights[l]), carry.data_ptr<float>());
      cur = next;
    }
  });
  return emb.scalar_type() == at::kFloat ? out : out.to(emb.scalar_type());
}

// fastrec::_graph_partition on CUDA: the plan of every worker, [workers, 6] int64 (tests and benchmarks).
at::Tensor graph_partition_cuda(const at::Tensor& indptr, int64_t nnz, int64_t items_per_worker) {
  TORCH_CHECK_VALUE(indptr.dim() == 1 && indptr.numel() >= 1, "indptr must be 1-D with num_rows + 1 >= 1 entries");
  TORCH_CHECK_VALUE(nnz >= 0 && items_per_worker >= 1, "nnz must be >= 0 and items_per_worker >= 1");
  TORCH_CHECK_VALUE(indptr.scalar_type() == at::kInt || indptr.scalar_type() == at::kLong,
                    "indptr must be int32 or int64");
  const c10::cuda::CUDAGuard guard(indptr.device());
  auto ip = indptr.contiguous();
  at::Tensor plan;
  AT_DISPATCH_INDEX_TYPES(ip.scalar_type(), "graph_partition_cuda",
                          [&] { plan = partition<index_t>(ip, nnz, items_per_worker); });
  return plan;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastrec, CUDA, m) {
  m.impl("_graph_partition", &graph_partition_cuda);
  m.impl("spmm", &spmm_cuda);
  m.impl("lightgcn_propagate", &lightgcn_propagate_cuda);
}

}  // namespace fastrec
