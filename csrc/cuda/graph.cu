// CUDA kernels of the graph family: spmm and lightgcn_propagate (nnz-balanced merge-path SpMM with the
// fused LightGCN epilogue). topk_scores on CUDA runs the Triton kernel (fastrec/ops/graph.py).
//
// Work split (csrc/common/graph.h, plan_worker): merge path over the CSR items (every edge and one row end
// per row), K = kItemsPerWarp items per warp, each warp finding its start by a binary search over indptr.
// A row of 50,000 neighbours is shared by ~200 warps and an empty row costs one item, so power-law degrees
// leave no tail. Each output row is written by exactly one warp (the owner of its row end), after its full
// sum: rows of <= K edges are summed by their owner alone; longer rows that start in an earlier warp are
// summed in parts, each earlier warp writing its part to a carry row of a scratch buffer (first kernel,
// spmm_carry_kernel) and the owner adding its own part, then the carries in worker order (second kernel,
// spmm_owned_kernel). No atomics, and the partition depends only on (indptr, K): the result is the same bit
// for bit on every run.
//
// Inside a warp: lanes cover d in vectors of V floats (V = 4: 16-byte loads, when d % 4 == 0 and every
// dense pointer is 16-byte aligned; V = 1 otherwise). A group of G lanes (G = the next power of two >= d / V,
// at most 32) covers one neighbour's row, 32 / G groups take consecutive neighbours at a time (d = 64:
// 16 lanes x float4 per row, two neighbours per warp step, each lane with four loads in flight), and a
// fixed xor-butterfly adds the groups' sums. d / V > 32 loops over column chunks of 32 lanes. fp32
// accumulation, int64 offsets.
//
// L2 residency: the gathered rows (one side of the bipartite graph at a time: 13-23 MB at the Amazon-Book
// shape, within an H200's L2: 60 MB per the device library's record) are read ~40 times a layer each,
// while the edge stream (indices, values) and LightGCN's running sum `out` are touched once a layer. Those
// streams load and store with the evict-first hint (ld/st.global.cs), so they do not push the gathered rows
// out of L2; the layer's output `next` (the next layer's gathered table) and x0 (layer 1's) keep the
// default policy.
// FASTREC_SPMM_STREAM_HINTS=0 turns the hints off (the benchmark times both).
//
// The kernels bound-check what they index with user data themselves (the host checks vanish under
// torch.compile and CUDA-graph capture): every edge range is clamped into [0, nnz] (the merge-path search
// keeps its coordinates inside [0, rows] x [0, nnz] whatever indptr holds) and a column outside [0, ncols)
// is skipped, so nothing is read out of bounds, and both raise a device-side assert (as ATen's embedding
// kernels do), so bad input is an error as on the CPU, which raises IndexError/ValueError for the same input.
// No host sync, the current stream, scratch from the caching allocator: CUDA-graph capturable.
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
#include <type_traits>
#include <vector>

#include "common/graph.h"

namespace fastrec {
namespace {

constexpr int kWarp = 32;
constexpr int kWarpsPerBlock = 8;
constexpr int64_t kItemsPerWarp = 256;  // K: merge-path items (edges + row ends) per warp
constexpr int kUnroll = 4;              // neighbours in flight per lane group

// A value read once per pass (the edge stream, the running sum): evict-first when Hint (ld.global.cs).
template <bool Hint, typename T>
__device__ __forceinline__ T load_stream(const T* p) {
  if constexpr (!Hint) {
    return *p;
  } else if constexpr (std::is_same_v<T, int64_t>) {
    return static_cast<T>(__ldcs(reinterpret_cast<const long long*>(p)));
  } else if constexpr (std::is_same_v<T, float>) {
    return __ldcs(p);
  } else {
    static_assert(std::is_same_v<T, int32_t>, "int32, int64 or float");
    return __ldcs(p);
  }
}

// V consecutive floats of one row held by one lane: a float4 (one 16-byte load) or a float.
template <int V>
struct Chunk {
  float a[V];

  __device__ __forceinline__ void zero() {
#pragma unroll
    for (int i = 0; i < V; ++i) a[i] = 0.f;
  }
  __device__ __forceinline__ void load(const float* p) {  // p is 16-byte aligned when V == 4
    if constexpr (V == 4) {
      const float4 t = __ldg(reinterpret_cast<const float4*>(p));
      a[0] = t.x, a[1] = t.y, a[2] = t.z, a[3] = t.w;
    } else {
      a[0] = __ldg(p);
    }
  }
  __device__ __forceinline__ void load_rw(const float* p) {  // a buffer this kernel also writes: no __ldg
    if constexpr (V == 4) {
      const float4 t = *reinterpret_cast<const float4*>(p);
      a[0] = t.x, a[1] = t.y, a[2] = t.z, a[3] = t.w;
    } else {
      a[0] = *p;
    }
  }
  template <bool Hint>
  __device__ __forceinline__ void load_stream(const float* p) {  // read once a pass (see top)
    if constexpr (!Hint) {
      load_rw(p);
    } else if constexpr (V == 4) {
      const float4 t = __ldcs(reinterpret_cast<const float4*>(p));
      a[0] = t.x, a[1] = t.y, a[2] = t.z, a[3] = t.w;
    } else {
      a[0] = __ldcs(p);
    }
  }
  __device__ __forceinline__ void store(float* p) const {
    if constexpr (V == 4) {
      *reinterpret_cast<float4*>(p) = make_float4(a[0], a[1], a[2], a[3]);
    } else {
      *p = a[0];
    }
  }
  template <bool Hint>
  __device__ __forceinline__ void store_stream(float* p) const {  // written once a pass
    if constexpr (!Hint) {
      store(p);
    } else if constexpr (V == 4) {
      __stcs(reinterpret_cast<float4*>(p), make_float4(a[0], a[1], a[2], a[3]));
    } else {
      __stcs(p, a[0]);
    }
  }
  __device__ __forceinline__ void add(const Chunk& o) {
#pragma unroll
    for (int i = 0; i < V; ++i) a[i] += o.a[i];
  }
  __device__ __forceinline__ void fma(float w, const Chunk& x) {
#pragma unroll
    for (int i = 0; i < V; ++i) a[i] += w * x.a[i];
  }
};

template <typename index_t>
struct PassArgs {
  const index_t* indptr;
  const index_t* indices;
  const float* values;
  const float* x;  // the dense input [ncols, d]
  int64_t rows, nnz, ncols, d;
  float* next;      // where the plain product goes (spmm's output, or LightGCN's next layer); may be null
  float* out;       // LightGCN's running weighted sum; null for spmm
  const float* x0;  // LightGCN's layer 0 (read when first)
  bool first;
  float w0, w;
  float* carry;  // [workers, d]: the carry rows of split rows
  int group;     // G: lanes per neighbour (a power of two <= 32)
};

// One lane's V columns starting at `col` of sum_{k in [b, e)} values[k] * x[indices[k]], over the
// neighbours of its group (g, g + groups, ...; kUnroll of them in flight). Warp-uniform control flow.
template <int V, bool Hint, typename index_t>
__device__ __forceinline__ Chunk<V> edge_sum(const PassArgs<index_t>& a, int64_t b, int64_t e, int64_t col,
                                             bool active, int g, int groups) {
  Chunk<V> acc;
  acc.zero();
  int64_t k = b + g;
  for (; k + (kUnroll - 1) * groups < e; k += kUnroll * groups) {
    Chunk<V> xv[kUnroll];
    float v[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t kk = k + u * groups;
      const index_t j = load_stream<Hint>(a.indices + kk);
      CUDA_KERNEL_ASSERT(graph::in_range(j, a.ncols) && "a column index is outside [0, ncols)");
      const bool ok = graph::in_range(j, a.ncols);
      v[u] = ok ? load_stream<Hint>(a.values + kk) : 0.f;
      if (ok && active) {
        xv[u].load(a.x + static_cast<int64_t>(j) * a.d + col);
      } else {
        xv[u].zero();
      }
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) acc.fma(v[u], xv[u]);
  }
  for (; k < e; k += groups) {
    const index_t j = load_stream<Hint>(a.indices + k);
    CUDA_KERNEL_ASSERT(graph::in_range(j, a.ncols) && "a column index is outside [0, ncols)");
    if (!graph::in_range(j, a.ncols) || !active) continue;
    Chunk<V> xv;
    xv.load(a.x + static_cast<int64_t>(j) * a.d + col);
    acc.fma(load_stream<Hint>(a.values + k), xv);
  }
  return acc;
}

// Adds the groups' partial sums (lanes q, q + G, q + 2G, ...) by a fixed xor butterfly: every lane ends
// with the same, order-fixed total. All 32 lanes take part.
template <int V>
__device__ __forceinline__ void reduce_groups(Chunk<V>& acc, int group) {
  for (int off = group; off < kWarp; off <<= 1) {
#pragma unroll
    for (int i = 0; i < V; ++i) acc.a[i] += __shfl_xor_sync(0xffffffffu, acc.a[i], off);
  }
}

// First kernel of a pass: each warp whose trailing row is split sums its part of that row into its carry.
template <int V, bool Hint, typename index_t>
__global__ void spmm_carry_kernel(PassArgs<index_t> a, int64_t workers) {
  const int64_t w = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarp;
  if (w >= workers) return;  // the whole warp
  const graph::WorkerPlan p = graph::plan_worker(w, kItemsPerWarp, a.indptr, a.rows, a.nnz);
  if (p.carry_begin >= p.carry_end) return;  // the whole warp
  const int lane = threadIdx.x % kWarp, groups = kWarp / a.group, g = lane / a.group, q = lane % a.group;
  const int64_t dv = a.d / V, chunks = (dv + a.group - 1) / a.group;
  for (int64_t ch = 0; ch < chunks; ++ch) {
    const int64_t col = (ch * a.group + q) * V;
    const bool active = col < a.d;
    Chunk<V> acc = edge_sum<V, Hint>(a, p.carry_begin, p.carry_end, col, active, g, groups);
    reduce_groups<V>(acc, a.group);
    if (g == 0 && active) acc.store(a.carry + w * a.d + col);
  }
}

// Second kernel of a pass: each warp sums the rows it owns (a split row0: its part, then the carries of
// workers chain_begin..w-1 in that order) and writes them once, with the fused epilogue.
template <int V, bool Hint, typename index_t>
__global__ void spmm_owned_kernel(PassArgs<index_t> a, int64_t workers) {
  const int64_t w = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarp;
  if (w >= workers) return;  // the whole warp
  const graph::WorkerPlan p = graph::plan_worker(w, kItemsPerWarp, a.indptr, a.rows, a.nnz);
  if (w == 0) {
    CUDA_KERNEL_ASSERT(static_cast<int64_t>(a.indptr[0]) == 0 && static_cast<int64_t>(a.indptr[a.rows]) == a.nnz &&
                       "indptr must start at 0 and end at nnz");
  }
  const int lane = threadIdx.x % kWarp, groups = kWarp / a.group, g = lane / a.group, q = lane % a.group;
  const int64_t dv = a.d / V, chunks = (dv + a.group - 1) / a.group;
  for (int64_t r = p.row0; r < p.row1; ++r) {
    const int64_t p0 = static_cast<int64_t>(a.indptr[r]), p1 = static_cast<int64_t>(a.indptr[r + 1]);
    CUDA_KERNEL_ASSERT(0 <= p0 && p0 <= p1 && p1 <= a.nnz && "indptr must be non-decreasing inside [0, nnz]");
    const int64_t b = r == p.row0 ? p.lead_begin : graph::clamp_edge(p0, a.nnz);
    const int64_t e = graph::clamp_edge(p1, a.nnz);
    for (int64_t ch = 0; ch < chunks; ++ch) {
      const int64_t col = (ch * a.group + q) * V;
      const bool active = col < a.d;
      Chunk<V> acc = edge_sum<V, Hint>(a, b, e, col, active, g, groups);
      reduce_groups<V>(acc, a.group);
      if (g != 0 || !active) continue;
      if (r == p.row0) {
#pragma unroll 4
        for (int64_t c = p.chain_begin; c < w; ++c) {
          Chunk<V> part;
          part.load_rw(a.carry + c * a.d + col);
          acc.add(part);
        }
      }
      const int64_t off = r * a.d + col;
      if (a.next != nullptr) acc.store(a.next + off);
      if (a.out != nullptr) {
        Chunk<V> prev, base;
        if (a.first) {
          base.load(a.x0 + off);
          prev.zero();
        } else {
          prev.template load_stream<Hint>(a.out + off);
          base.zero();
        }
#pragma unroll
        for (int i = 0; i < V; ++i) prev.a[i] = graph::accumulate(a.first, prev.a[i], base.a[i], a.w0, a.w, acc.a[i]);
        prev.template store_stream<Hint>(a.out + off);
      }
    }
  }
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// FASTREC_SPMM_STREAM_HINTS=0 turns the evict-first hints off (read per call: the benchmark times both).
bool stream_hints() {
  const char* v = std::getenv("FASTREC_SPMM_STREAM_HINTS");
  return v == nullptr || std::strcmp(v, "0") != 0;
}

// The carry kernel, then the owner kernel, of one pass.
template <int V, bool Hint, typename index_t>
void launch_kernels(const PassArgs<index_t>& a, int64_t workers, int64_t blocks, cudaStream_t stream) {
  const int threads = kWarpsPerBlock * kWarp;
  spmm_carry_kernel<V, Hint, index_t><<<blocks, threads, 0, stream>>>(a, workers);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  spmm_owned_kernel<V, Hint, index_t><<<blocks, threads, 0, stream>>>(a, workers);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// One SpMM pass (next = A @ x, out = accumulate(...)): the carry kernel, then the owner kernel.
// `carry` holds merge_path_workers(rows, nnz, K) * d floats.
template <typename index_t>
void launch_pass(const at::Tensor& indptr, const at::Tensor& indices, const at::Tensor& values, const float* x,
                 int64_t rows, int64_t ncols, int64_t d, float* next, float* out, const float* x0, bool first,
                 float w0, float w, float* carry) {
  const int64_t nnz = indices.numel();
  const int64_t workers = graph::merge_path_workers(rows, nnz, kItemsPerWarp);
  if (rows == 0 || d == 0 || workers == 0) return;
  const int64_t blocks = (workers + kWarpsPerBlock - 1) / kWarpsPerBlock;
  TORCH_CHECK_VALUE(blocks < std::numeric_limits<int32_t>::max(), "graph has too many entries for one launch");
  // 16-byte loads and stores need d % 4 == 0 and every dense row 16-byte aligned (dense may be a view)
  const bool vec = d % 4 == 0 && aligned16(x) && (x0 == nullptr || aligned16(x0)) &&
                   (next == nullptr || aligned16(next)) && (out == nullptr || aligned16(out)) && aligned16(carry);
  const int64_t dv = vec ? d / 4 : d;
  int group = 1;
  while (group < 32 && group < dv) group <<= 1;
  PassArgs<index_t> a{indptr.data_ptr<index_t>(), indices.data_ptr<index_t>(), values.data_ptr<float>(), x, rows,
                      nnz, ncols, d, next, out, x0, first, w0, w, carry, group};
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const bool hints = stream_hints();
  if (vec && hints) {
    launch_kernels<4, true>(a, workers, blocks, stream);
  } else if (vec) {
    launch_kernels<4, false>(a, workers, blocks, stream);
  } else if (hints) {
    launch_kernels<1, true>(a, workers, blocks, stream);
  } else {
    launch_kernels<1, false>(a, workers, blocks, stream);
  }
}

// Scratch for the carries of one pass, from the caching allocator (reused by every pass of a call).
at::Tensor carry_buffer(int64_t rows, int64_t nnz, int64_t d, const at::Tensor& like) {
  return at::empty({std::max<int64_t>(graph::merge_path_workers(rows, nnz, kItemsPerWarp) * d, 1)},
                   like.options().dtype(at::kFloat));
}

// The partition itself, one thread per worker (the test op fastrec::_graph_partition on CUDA).
template <typename index_t>
__global__ void partition_kernel(const index_t* indptr, int64_t rows, int64_t nnz, int64_t items, int64_t workers,
                                 int64_t* plan) {
  const int64_t w = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (w >= workers) return;
  const graph::WorkerPlan p = graph::plan_worker(w, items, indptr, rows, nnz);
  int64_t* o = plan + w * 6;
  o[0] = p.row0, o[1] = p.row1, o[2] = p.lead_begin, o[3] = p.chain_begin, o[4] = p.carry_begin,
  o[5] = p.carry_end;
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
  auto carry = carry_buffer(rows, ix.numel(), d, x);
  AT_DISPATCH_INDEX_TYPES(ip.scalar_type(), "spmm_cuda", [&] {
    launch_pass<index_t>(ip, ix, vals, x.data_ptr<float>(), rows, ncols, d, out.data_ptr<float>(), nullptr,
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
  auto carry = carry_buffer(n, ix.numel(), d, x0);
  AT_DISPATCH_INDEX_TYPES(ip.scalar_type(), "lightgcn_propagate_cuda", [&] {
    const float* cur = x0.data_ptr<float>();
    for (int64_t l = 1; l <= layers; ++l) {
      float* next = l < layers ? bufs[(l - 1) % 2] : nullptr;
      launch_pass<index_t>(ip, ix, vals, cur, n, n, d, next, out.data_ptr<float>(), x0.data_ptr<float>(), l == 1,
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
  const c10::cuda::CUDAGuard guard(indptr.device());
  auto ip = indptr.contiguous();
  const int64_t rows = ip.numel() - 1, workers = graph::merge_path_workers(rows, nnz, items_per_worker);
  auto plan = at::empty({workers, 6}, ip.options().dtype(at::kLong));
  if (workers == 0) return plan;
  AT_DISPATCH_INDEX_TYPES(ip.scalar_type(), "graph_partition_cuda", [&] {
    const int threads = 128;
    partition_kernel<index_t><<<(workers + threads - 1) / threads, threads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        ip.data_ptr<index_t>(), rows, nnz, items_per_worker, workers, plan.data_ptr<int64_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return plan;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastrec, CUDA, m) {
  m.impl("_graph_partition", &graph_partition_cuda);
  m.impl("spmm", &spmm_cuda);
  m.impl("lightgcn_propagate", &lightgcn_propagate_cuda);
}

}  // namespace fastrec
