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

// ------------------------------------------------------------------ nnz-balanced partition (CUDA SpMM)
//
// The CUDA SpMM splits the work of A @ x by merge path (Merrill & Garland, "Merge-based parallel sparse
// matrix-vector multiplication", SC'16): the items of the CSR matrix are its edges and one "row end" per
// row, in the order row 0's edges, row 0's end, row 1's edges, row 1's end, ...; so row r's k-th edge is
// item r + indptr[r] + k and row r's end is item r + indptr[r + 1]. Worker w takes the items
// [w * K, min((w + 1) * K, rows + nnz)): every worker gets at most K items, whatever the degrees (an empty
// row is one item, a row of 50,000 neighbours spans about 50,000 / K workers). A worker's start is a
// binary search over indptr (merge_path_row); the CUDA code runs plan_worker for every worker in one
// launch per CSR (partition_kernel, on the device: the host never waits) and its pass kernels read the plans.
//
// Who sums what (plan_worker), so that every row is written once, by one worker, with a fixed summation
// order (deterministic run to run, no atomics):
//   - a row is owned by the worker that holds its row-end item; the owner writes the row's output (and the
//     fused LightGCN epilogue) once, after the row's full sum;
//   - a short row (<= K edges) is summed entirely by its owner, even the edges that lie before the owner's
//     segment (at most K of them, so no worker does more than 2K items of work);
//   - a long row (> K edges) whose edges start in an earlier worker is "split": each earlier worker f..w-1
//     that holds some of its edges sums them into its carry (a [workers, d] scratch row, written by a first
//     kernel), and the owner w adds its own edges, then the carries of workers f, f+1, ..., w-1 in that
//     order (a second kernel). f = (r + indptr[r]) / K, the worker of the row's first edge. Every worker in
//     [f, w) holds at least one edge of r and has r as its trailing row, so each writes exactly the carry
//     the owner reads; the partition depends only on (indptr, K), so the order is the same on every run.
// All indices are kept inside [0, rows] and [0, nnz] whatever indptr holds (a malformed indptr makes
// wrong sums, never an out-of-bounds read; the kernels also assert on it).

// The merge-path row at item `diag` (0 <= diag <= rows + nnz): how many row-end items come before it,
// i.e. the first row r with r + indptr[r + 1] >= diag. The edge there is diag - r. Result in
// [max(diag - nnz, 0), min(diag, rows)], so the edge is in [0, nnz].
template <typename index_t>
FASTREC_GHD int64_t merge_path_row(int64_t diag, const index_t* indptr, int64_t rows, int64_t nnz) {
  int64_t lo = diag > nnz ? diag - nnz : 0, hi = diag < rows ? diag : rows;
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (clamp_edge(static_cast<int64_t>(indptr[mid + 1]), nnz) + mid < diag) {
      lo = mid + 1;  // row mid's end item lies before diag
    } else {
      hi = mid;
    }
  }
  return lo;
}

// Number of merge-path workers of K items each over a CSR matrix of `rows` rows and `nnz` edges.
FASTREC_GHD int64_t merge_path_workers(int64_t rows, int64_t nnz, int64_t items) {
  return (rows + nnz + items - 1) / items;
}

// What worker w of a merge-path partition with K = `items` items per worker sums and writes.
struct WorkerPlan {
  int64_t row0, row1;   // the rows it owns (their row ends are in its segment): [row0, row1)
  int64_t lead_begin;   // row0's sum here starts at this edge: indptr[row0], or the segment start if split
  int64_t chain_begin;  // a split row0 adds the carries of workers [chain_begin, w); == w when not split
  int64_t carry_begin, carry_end;  // its carry: the edges of the trailing row row1 it sums (empty: none)
};

template <typename index_t>
FASTREC_GHD WorkerPlan plan_worker(int64_t w, int64_t items, const index_t* indptr, int64_t rows, int64_t nnz) {
  const int64_t total = rows + nnz;
  const int64_t d0 = w * items < total ? w * items : total;
  const int64_t d1 = d0 + items < total ? d0 + items : total;
  const int64_t r0 = merge_path_row(d0, indptr, rows, nnz), e0 = d0 - r0;
  const int64_t r1 = merge_path_row(d1, indptr, rows, nnz), e1 = d1 - r1;
  WorkerPlan p;
  p.row0 = r0;
  p.row1 = r1;
  p.lead_begin = clamp_edge(static_cast<int64_t>(indptr[r0]), nnz);
  p.chain_begin = w;
  if (r0 < r1) {
    const int64_t len = clamp_edge(static_cast<int64_t>(indptr[r0 + 1]), nnz) - p.lead_begin;
    const int64_t first = (r0 + p.lead_begin) / items;  // the worker of row r0's first edge
    if (len > items && first < w) {
      p.lead_begin = e0;
      p.chain_begin = first;
    }
  }
  p.carry_begin = p.carry_end = e1;
  if (r1 < rows) {
    const int64_t b = clamp_edge(static_cast<int64_t>(indptr[r1]), nnz);
    const int64_t len = clamp_edge(static_cast<int64_t>(indptr[r1 + 1]), nnz) - b;
    const int64_t cb = b > e0 ? b : e0;
    if (len > items && cb < e1) p.carry_begin = cb;
  }
  return p;
}

}  // namespace graph
}  // namespace fastrec
