// Device-independent pieces of the graph kernels (spmm, lightgcn_propagate, topk_scores), shared by
// csrc/cpu/graph.cpp and csrc/cuda/graph.cu.
#pragma once
#include <cstdint>

#if defined(__CUDACC__)
#define FASTREC_GHD __host__ __device__ __forceinline__
#else
#define FASTREC_GHD inline
#endif

namespace fastrec {
namespace graph {

// Ranking order of full-ranking top-K: a higher score first; equal scores -> the lower item id first.
// Every backend merges partial top-K lists with this rule, so the result does not depend on chunking.
FASTREC_GHD bool ranks_before(float score, int64_t id, float other_score, int64_t other_id) {
  return score > other_score || (score == other_score && id < other_id);
}

// A column index is valid when 0 <= j < ncols; one unsigned compare covers both bounds.
template <typename index_t>
FASTREC_GHD bool in_range(index_t j, int64_t ncols) {
  return static_cast<uint64_t>(static_cast<int64_t>(j)) < static_cast<uint64_t>(ncols);
}

// An indptr entry clamped into [0, nnz], so a malformed indptr cannot make a kernel read outside the
// edge arrays (an inverted range [e0, e1) with e1 < e0 is then simply empty).
FASTREC_GHD int64_t clamp_edge(int64_t p, int64_t nnz) { return p < 0 ? 0 : (p > nnz ? nnz : p); }

// The fused LightGCN epilogue for one element: out = (first ? w0 * x0 : out) + w * acc.
FASTREC_GHD float accumulate(bool first, float out, float x0, float w0, float w, float acc) {
  return (first ? w0 * x0 : out) + w * acc;
}

}  // namespace graph
}  // namespace fastrec
