// Device code of the CUDA graph kernels (spmm, lightgcn_propagate), kept apart from the ATen host code of
// csrc/cuda/graph.cu so that tests/cuda_emulator can compile these same kernels as host C++ and run them,
// warp by warp with emulated shuffles, on a machine without a GPU (tests/test_graph_cuda_emulated.py).
// Nothing here may include ATen or CUDA runtime headers; CUDA_KERNEL_ASSERT comes from the includer.
//
// Work split (csrc/common/graph.h, plan_worker): merge path over the CSR items (every edge and one row end
// per row), K = kItemsPerWarp items per warp. partition_kernel writes every warp's plan once per CSR (one
// thread per warp, a binary search over indptr each); the pass kernels read theirs with one load, so
// LightGCN's layers and the two kernels of a pass share one search instead of doing two each per warp (a
// search is ~38 dependent loads, which a warp would otherwise wait through at the start of every kernel).
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
// The edge stream (EdgeStream): the warp reads its edges' columns and values 32 at a time, one coalesced
// load each (lane l: edge base + l), and the next 32 are already in flight while these are used; each lane
// takes the column and value of the edge it gathers by a shuffle. The gathers therefore wait on the
// neighbour row only. Before, each lane loaded its neighbours' columns itself, and the device assert's
// branch on each column held the next column load back (the SASS issued a step's four column loads one
// after another, each waited for, and each value load after its column's check). A bad column is now
// flagged and asserted on once, at the kernel's end. The edges a group sums, and their order, are the same
// as before, so the sums are bit for bit those of the per-edge loads.
//
// L2 residency: the gathered rows (one side of the bipartite graph at a time: 13-23 MB at the Amazon-Book
// shape, within an H200's L2: 60 MB per the device library's record) are read ~40 times a layer each,
// while the edge stream (indices, values) and LightGCN's running sum `out` are touched once a layer. Those
// streams load and store with the evict-first hint (ld/st.global.cs), so they do not push the gathered rows
// out of L2; the layer's output `next` (the next layer's gathered table) and x0 (layer 1's) keep the
// default policy.
//
// The kernels bound-check what they index with user data themselves (the host checks vanish under
// torch.compile and CUDA-graph capture): every edge range is clamped into [0, nnz] (the merge-path search
// keeps its coordinates inside [0, rows] x [0, nnz] whatever indptr holds), the edge stream loads only
// edges inside [0, end) with end <= nnz, and a column outside [0, ncols) is skipped, so nothing is read out
// of bounds; both raise a device-side assert (as ATen's embedding kernels do), so bad input is an error as
// on the CPU, which raises IndexError/ValueError for the same input.
#pragma once

#include <cstdint>
#include <type_traits>

#include "common/graph.h"

namespace fastrec {
namespace graph_kernels {

constexpr int kWarp = 32;
constexpr unsigned kFullMask = 0xffffffffu;
constexpr int kWarpsPerBlock = 8;
constexpr int64_t kItemsPerWarp = 256;  // K: merge-path items (edges + row ends) per warp
constexpr int kUnroll = 4;              // neighbours in flight per lane group
constexpr int kPlanFields = 6;          // a WorkerPlan as int64: row0, row1, lead_begin, chain_begin, carry_*

// G, the lanes that cover one neighbour's row: the next power of two >= d / V, at most 32.
__host__ __device__ inline int lanes_per_neighbour(int64_t vectors_per_row) {
  int group = 1;
  while (group < kWarp && group < vectors_per_row) group <<= 1;
  return group;
}

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
  const int64_t* plan;  // [workers, kPlanFields]: partition_kernel's output for this CSR
  float* carry;         // [workers, d]: the carry rows of split rows
  int group;            // G: lanes per neighbour (a power of two <= 32)
};

// The plan of worker w of a merge-path partition with K items per worker, as partition_kernel wrote it.
__device__ __forceinline__ graph::WorkerPlan load_plan(const int64_t* plan, int64_t w) {
  const int64_t* p = plan + w * kPlanFields;
  graph::WorkerPlan r;
  r.row0 = p[0], r.row1 = p[1], r.lead_begin = p[2], r.chain_begin = p[3], r.carry_begin = p[4],
  r.carry_end = p[5];
  return r;
}

// One edge of the stream for this lane: its column and value, or column -1 (skipped) outside [0, end). No
// check of the column here: a branch on it would wait for the load, and this is the load issued ahead.
template <bool Hint, typename index_t>
__device__ __forceinline__ void load_edge(const PassArgs<index_t>& a, int64_t k, int64_t end, index_t& col,
                                          float& val) {
  const bool in = 0 <= k && k < end;
  col = in ? load_stream<Hint>(a.indices + k) : static_cast<index_t>(-1);
  val = in ? load_stream<Hint>(a.values + k) : 0.f;
}

// A warp's window on its edges: lane l holds edge base + l (col0, val0) and edge base + 32 + l (col1,
// val1). base is warp-uniform; edges at or past `end` are never loaded.
template <typename index_t>
struct EdgeStream {
  int64_t base, end;
  index_t col0, col1;
  float val0, val1;

  template <bool Hint>
  __device__ __forceinline__ void start(const PassArgs<index_t>& a, int64_t k, int64_t stream_end, int lane) {
    base = k;
    end = stream_end;
    load_edge<Hint>(a, base + lane, end, col0, val0);
    load_edge<Hint>(a, base + kWarp + lane, end, col1, val1);
  }

  // Makes edge k (warp-uniform) the window's first half: k in [base, base + 32), so a step of up to 32
  // edges from k lies inside the window. Moving on by one half (the common case) loads the half after it,
  // which is then in flight while the steps over this one run.
  template <bool Hint>
  __device__ __forceinline__ void seek(const PassArgs<index_t>& a, int64_t k, int lane) {
    if (k >= base + kWarp && k < base + 2 * kWarp) {
      col0 = col1, val0 = val1;
      base += kWarp;
      load_edge<Hint>(a, base + kWarp + lane, end, col1, val1);
    } else if (k < base || k >= base + 2 * kWarp) {  // a jump: another column chunk, or a malformed indptr
      start<Hint>(a, k, end, lane);
    }
  }
};

// The kUnroll neighbours of one step for this lane's group: the edges first + t of the window, t = u * groups
// + g (t < left: the step's edges in the row), their columns and values by shuffle from the lanes that
// loaded them, their rows' V columns from `xc` by 16-byte loads, all in flight together. Straddles (a
// template argument, so the common step has no branch per neighbour): some edge is in the window's second
// half, so col1 / val1 are shuffled too (only then does the step wait for that half's load). A column
// outside [0, ncols) is skipped and sets `bad`, which the kernel asserts on once at its end (an assert here
// would be a branch per neighbour that holds the next neighbours' loads back).
template <int V, bool Straddles, typename index_t>
__device__ __forceinline__ void gather_step(const PassArgs<index_t>& a, const EdgeStream<index_t>& s, int first,
                                            int left, int step, const float* xc, bool active, int g, int groups,
                                            Chunk<V> (&xv)[kUnroll], float (&v)[kUnroll], bool& bad) {
#pragma unroll
  for (int u = 0; u < kUnroll; ++u) {
    if (u * groups >= step) break;  // warp-uniform
    const int t = u * groups + g;
    const int off = first + t;  // in [0, 64)
    index_t j = __shfl_sync(kFullMask, s.col0, off & (kWarp - 1));
    float val = __shfl_sync(kFullMask, s.val0, off & (kWarp - 1));
    if constexpr (Straddles) {
      const index_t j1 = __shfl_sync(kFullMask, s.col1, off & (kWarp - 1));
      const float val1 = __shfl_sync(kFullMask, s.val1, off & (kWarp - 1));
      if (off >= kWarp) j = j1, val = val1;
    }
    const bool ok = t < left && graph::in_range(j, a.ncols);
    bad |= t < left && !ok;
    v[u] = ok ? val : 0.f;
    if (ok && active) {
      xv[u].load(xc + static_cast<int64_t>(j) * a.d);
    } else {
      xv[u].zero();
    }
  }
}

// One lane's V columns starting at `col` of sum_{k in [b, e)} values[k] * x[indices[k]], over the
// neighbours of its group (g, g + groups, ...; kUnroll of them in flight). Warp-uniform control flow: every
// lane of the warp must call it with the same b and e (the shuffles take all 32 lanes). Sets `bad` on a
// column outside [0, ncols).
template <int V, bool Hint, typename index_t>
__device__ __forceinline__ Chunk<V> edge_sum(const PassArgs<index_t>& a, EdgeStream<index_t>& s, int64_t b,
                                             int64_t e, int64_t col, bool active, int g, int groups, int lane,
                                             bool& bad) {
  Chunk<V> acc;
  acc.zero();
  const float* xc = a.x + col;
  // a step takes kUnroll neighbours a group, or 32 edges when the groups are many (d <= 4 V): a window half
  const int step = kUnroll * groups < kWarp ? kUnroll * groups : kWarp;
  for (int64_t k0 = b; k0 < e; k0 += step) {
    s.template seek<Hint>(a, k0, lane);
    const int first = static_cast<int>(k0 - s.base);  // in [0, 32)
    const int left = e - k0 < step ? static_cast<int>(e - k0) : step;
    Chunk<V> xv[kUnroll];
    float v[kUnroll];
    if (first + step > kWarp) {
      gather_step<V, true>(a, s, first, left, step, xc, active, g, groups, xv, v, bad);
    } else {
      gather_step<V, false>(a, s, first, left, step, xc, active, g, groups, xv, v, bad);
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      if (u * groups >= step) break;
      acc.fma(v[u], xv[u]);
    }
  }
  return acc;
}

// Adds the groups' partial sums (lanes q, q + G, q + 2G, ...) by a fixed xor butterfly: every lane ends
// with the same, order-fixed total. All 32 lanes take part.
template <int V>
__device__ __forceinline__ void reduce_groups(Chunk<V>& acc, int group) {
  for (int off = group; off < kWarp; off <<= 1) {
#pragma unroll
    for (int i = 0; i < V; ++i) acc.a[i] += __shfl_xor_sync(kFullMask, acc.a[i], off);
  }
}

// First kernel of a pass: each warp whose trailing row is split sums its part of that row into its carry.
template <int V, bool Hint, typename index_t>
__global__ void spmm_carry_kernel(PassArgs<index_t> a, int64_t workers) {
  const int64_t w = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarp;
  if (w >= workers) return;  // the whole warp
  const graph::WorkerPlan p = load_plan(a.plan, w);
  const int64_t cb = p.carry_begin, ce = p.carry_end;
  if (cb >= ce) return;  // the whole warp
  const int lane = threadIdx.x % kWarp, groups = kWarp / a.group, g = lane / a.group, q = lane % a.group;
  const int64_t dv = a.d / V, chunks = (dv + a.group - 1) / a.group;
  EdgeStream<index_t> s;
  s.template start<Hint>(a, cb, ce, lane);
  bool bad = false;
  for (int64_t ch = 0; ch < chunks; ++ch) {
    const int64_t col = (ch * a.group + q) * V;
    const bool active = col < a.d;
    Chunk<V> acc = edge_sum<V, Hint>(a, s, cb, ce, col, active, g, groups, lane, bad);
    reduce_groups<V>(acc, a.group);
    if (g == 0 && active) acc.store(a.carry + w * a.d + col);
  }
  CUDA_KERNEL_ASSERT(!bad && "a column index is outside [0, ncols)");
}

// Second kernel of a pass: each warp sums the rows it owns (a split row0: its part, then the carries of
// workers chain_begin..w-1 in that order) and writes them once, with the fused epilogue. The next row's
// indptr entry and the epilogue's input row are loaded before they are needed, so their latency overlaps
// the edge sums. (The body of spmm_owned_kernel and spmm_owned_kernel_capped, below.)
template <int V, bool Hint, typename index_t>
__device__ __forceinline__ void spmm_owned_rows(const PassArgs<index_t>& a, int64_t workers) {
  const int64_t w = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarp;
  if (w >= workers) return;  // the whole warp
  if (w == 0) {
    CUDA_KERNEL_ASSERT(static_cast<int64_t>(a.indptr[0]) == 0 && static_cast<int64_t>(a.indptr[a.rows]) == a.nnz &&
                       "indptr must start at 0 and end at nnz");
  }
  const graph::WorkerPlan p = load_plan(a.plan, w);
  if (p.row0 >= p.row1) return;  // the whole warp: no row end in its segment
  const int lane = threadIdx.x % kWarp, groups = kWarp / a.group, g = lane / a.group, q = lane % a.group;
  const int64_t dv = a.d / V, chunks = (dv + a.group - 1) / a.group;
  // the owned rows' edges run from row0's first summed edge up to the segment's end edge (carry_end)
  EdgeStream<index_t> s;
  s.template start<Hint>(a, p.lead_begin, p.carry_end, lane);
  bool bad = false;
  int64_t p0 = static_cast<int64_t>(a.indptr[p.row0]), p1 = static_cast<int64_t>(a.indptr[p.row0 + 1]);
  for (int64_t r = p.row0; r < p.row1; ++r) {
    const int64_t p2 = r + 1 < p.row1 ? static_cast<int64_t>(a.indptr[r + 2]) : 0;  // r + 2 <= row1 <= rows
    CUDA_KERNEL_ASSERT(0 <= p0 && p0 <= p1 && p1 <= a.nnz && "indptr must be non-decreasing inside [0, nnz]");
    const int64_t b = r == p.row0 ? p.lead_begin : graph::clamp_edge(p0, a.nnz);
    const int64_t e = graph::clamp_edge(p1, a.nnz);
    for (int64_t ch = 0; ch < chunks; ++ch) {
      const int64_t col = (ch * a.group + q) * V;
      const bool active = col < a.d;
      const bool writer = g == 0 && active;
      const int64_t off = r * a.d + col;
      Chunk<V> prev;  // the epilogue's input (x0 in the first layer, else the running sum), loaded ahead
      prev.zero();
      if (writer && a.out != nullptr) {
        if (a.first) {
          prev.load(a.x0 + off);
        } else {
          prev.template load_stream<Hint>(a.out + off);
        }
      }
      Chunk<V> acc = edge_sum<V, Hint>(a, s, b, e, col, active, g, groups, lane, bad);
      reduce_groups<V>(acc, a.group);
      if (!writer) continue;
      if (r == p.row0) {
#pragma unroll 4
        for (int64_t c = p.chain_begin; c < w; ++c) {
          Chunk<V> part;
          part.load_rw(a.carry + c * a.d + col);
          acc.add(part);
        }
      }
      if (a.next != nullptr) acc.store(a.next + off);
      if (a.out != nullptr) {
#pragma unroll
        for (int i = 0; i < V; ++i) prev.a[i] = graph::accumulate(a.first, prev.a[i], prev.a[i], a.w0, a.w, acc.a[i]);
        prev.template store_stream<Hint>(a.out + off);
      }
    }
    p0 = p1;
    p1 = p2;
  }
  CUDA_KERNEL_ASSERT(!bad && "a column index is outside [0, ncols)");
}

template <int V, bool Hint, typename index_t>
__global__ void spmm_owned_kernel(PassArgs<index_t> a, int64_t workers) {
  spmm_owned_rows<V, Hint, index_t>(a, workers);
}

// The owner kernel compiled for kCappedBlocks blocks (24 warps) a multiprocessor. Uncapped, its float4
// variants take 96-110 registers, so a multiprocessor holds 2 blocks (16 warps) of it; capped, ptxas keeps
// it to 80 and spills 44-56 bytes, all outside the edge loop (nvcc 13.0 for sm_90: ptxas -v and nvdisasm,
// offline). Which one hides the gathers' latency better is a GPU measurement: FASTREC_SPMM_OWNER_MIN_BLOCKS=3
// selects this one for float4 rows with the stream hints (the default path), and the benchmark times both.
constexpr int kCappedBlocks = 3;

template <int V, bool Hint, typename index_t>
__global__ void __launch_bounds__(kWarpsPerBlock * kWarp, kCappedBlocks)
    spmm_owned_kernel_capped(PassArgs<index_t> a, int64_t workers) {
  spmm_owned_rows<V, Hint, index_t>(a, workers);
}

// The partition itself, one thread per worker: the plans the pass kernels read (and fastrec::_graph_partition).
template <typename index_t>
__global__ void partition_kernel(const index_t* indptr, int64_t rows, int64_t nnz, int64_t items, int64_t workers,
                                 int64_t* plan) {
  const int64_t w = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (w >= workers) return;
  const graph::WorkerPlan p = graph::plan_worker(w, items, indptr, rows, nnz);
  int64_t* o = plan + w * kPlanFields;
  o[0] = p.row0, o[1] = p.row1, o[2] = p.lead_begin, o[3] = p.chain_begin, o[4] = p.carry_begin,
  o[5] = p.carry_end;
}

}  // namespace graph_kernels
}  // namespace fastrec
