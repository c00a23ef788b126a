// CPU kernels of the graph family: spmm (CSR x dense), lightgcn_propagate (the LightGCN layer mean with
// the accumulation fused into every SpMM pass) and topk_scores (chunked GEMM + seen mask + running top-K).
//
// SpMM: OpenMP over row ranges balanced by nnz (item degrees follow a power law, so equal row counts
// would leave one thread with the popular items); each row keeps its output slice of up to 64 floats in
// four AVX-512 registers (GCC vector extensions) while it streams the row's neighbours, then the fused
// epilogue writes the next layer and adds w_l * layer into the running mean in the same pass.
// Column indices are checked inside the pass (one unsigned compare), so nothing is read out of bounds.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <omp.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>
#include <utility>
#include <vector>

#include "common/graph.h"
#include "cpu/simd.h"

namespace fastrec {
namespace {

using simd::kLanes;
using simd::load;
using simd::store;
using simd::vf;

// ----------------------------------------------------------------------------------------------- CSR

// indptr must start at 0, never decrease and end at nnz; O(rows), before any kernel touches the data.
template <typename index_t>
void check_indptr(const at::Tensor& indptr, int64_t nnz, const char* name) {
  const index_t* p = indptr.data_ptr<index_t>();
  const int64_t n = indptr.numel() - 1;
  TORCH_CHECK_VALUE(p[0] == 0, name, "[0] must be 0, got ", static_cast<int64_t>(p[0]));
  TORCH_CHECK_VALUE(static_cast<int64_t>(p[n]) == nnz, name, "[-1] must equal the number of entries (", nnz,
                    "), got ", static_cast<int64_t>(p[n]));
  for (int64_t i = 0; i < n; ++i)
    TORCH_CHECK_VALUE(p[i + 1] >= p[i], name, " must be non-decreasing (row ", i, ")");
}

void check_csr_shapes(const at::Tensor& indptr, const at::Tensor& indices, const at::Tensor& values,
                      int64_t rows, const char* prefix) {
  TORCH_CHECK_VALUE(indptr.dim() == 1 && indptr.numel() == rows + 1, prefix, "indptr must be 1-D with ",
                    rows + 1, " entries, got shape ", indptr.sizes());
  TORCH_CHECK_VALUE(indices.dim() == 1 && values.dim() == 1 && indices.numel() == values.numel(), prefix,
                    "indices and ", prefix, "values must be 1-D of equal length");
  TORCH_CHECK_VALUE(indptr.scalar_type() == indices.scalar_type(), prefix, "indptr and ", prefix,
                    "indices must share one dtype (int32 or int64)");
  TORCH_CHECK_VALUE(indices.scalar_type() == at::kInt || indices.scalar_type() == at::kLong, prefix,
                    "indices must be int32 or int64");
  TORCH_CHECK_VALUE(at::isFloatingType(values.scalar_type()), prefix, "values must be floating point");
}

// Row boundaries of ~equal nnz (plus rows, so empty rows still split): chunk c is [b[c], b[c+1]).
template <typename index_t>
std::vector<int64_t> balanced_rows(const index_t* indptr, int64_t rows, int64_t chunks) {
  std::vector<int64_t> b(chunks + 1, rows);
  b[0] = 0;
  const int64_t total = static_cast<int64_t>(indptr[rows]) + rows;
  int64_t r = 0;
  for (int64_t c = 1; c < chunks; ++c) {
    const int64_t target = total * c / chunks;
    while (r < rows && static_cast<int64_t>(indptr[r]) + r < target) ++r;
    b[c] = r;
  }
  return b;
}

// ------------------------------------------------------------------------------------------ SpMM core

// One SpMM pass over all rows with the fused epilogue. x is [ncols, d] fp32 contiguous.
//   next != nullptr: next[i] = acc (the next layer)
//   out  != nullptr: out[i] = (first ? w0 * x0[i] : out[i]) + w * acc
// Returns false when a column index is out of range (that entry is skipped).
struct Pass {
  const float* x;
  int64_t ncols, d;
  float* next;
  float* out;
  const float* x0;
  bool first;
  float w0, w;
};

template <int NV>
inline void epilogue(const Pass& p, int64_t i, int64_t c0, const vf* acc) {
  for (int t = 0; t < NV; ++t) {
    const int64_t off = i * p.d + c0 + t * kLanes;
    if (p.next) store(p.next + off, acc[t]);
    if (p.out) {
      const vf base = p.first ? p.w0 * load(p.x0 + off) : load(p.out + off);
      store(p.out + off, base + p.w * acc[t]);
    }
  }
}

// A slice of NV vectors (NV * 16 columns starting at c0) of row i, kept in registers over the row.
template <int NV, typename index_t>
inline bool row_slice(const Pass& p, const index_t* indptr, const index_t* indices, const float* values,
                      int64_t i, int64_t c0) {
  vf acc[NV];
  for (int t = 0; t < NV; ++t) acc[t] = vf{};
  bool ok = true;
  const int64_t e1 = indptr[i + 1];
  for (int64_t e = indptr[i]; e < e1; ++e) {
    const index_t j = indices[e];
    if (!graph::in_range(j, p.ncols)) {
      ok = false;
      continue;
    }
    const float v = values[e];
    const float* src = p.x + static_cast<int64_t>(j) * p.d + c0;
    for (int t = 0; t < NV; ++t) acc[t] += v * load(src + t * kLanes);
  }
  epilogue<NV>(p, i, c0, acc);
  return ok;
}

// Columns past the last multiple of 16: plain fp32 loop (the compiler vectorises the inner d loop).
template <typename index_t>
inline bool row_tail(const Pass& p, const index_t* indptr, const index_t* indices, const float* values,
                     int64_t i, int64_t c0) {
  float acc[kLanes] = {};
  const int64_t w = p.d - c0;
  bool ok = true;
  for (int64_t e = indptr[i]; e < indptr[i + 1]; ++e) {
    const index_t j = indices[e];
    if (!graph::in_range(j, p.ncols)) {
      ok = false;
      continue;
    }
    const float v = values[e];
    const float* src = p.x + static_cast<int64_t>(j) * p.d + c0;
    for (int64_t c = 0; c < w; ++c) acc[c] += v * src[c];
  }
  for (int64_t c = 0; c < w; ++c) {
    const int64_t off = i * p.d + c0 + c;
    if (p.next) p.next[off] = acc[c];
    if (p.out) p.out[off] = graph::accumulate(p.first, p.out[off], p.first ? p.x0[off] : 0.f, p.w0, p.w, acc[c]);
  }
  return ok;
}

template <typename index_t>
bool spmm_pass(const Pass& p, const index_t* indptr, const index_t* indices, const float* values, int64_t rows) {
  if (rows == 0) return true;
  const int64_t threads = at::get_num_threads();
  const std::vector<int64_t> bounds = balanced_rows(indptr, rows, std::max<int64_t>(1, threads * 16));
  const int64_t chunks = static_cast<int64_t>(bounds.size()) - 1;
  std::atomic<bool> ok{true};
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
  for (int64_t c = 0; c < chunks; ++c) {
    bool local = true;
    for (int64_t i = bounds[c]; i < bounds[c + 1]; ++i) {
      int64_t c0 = 0;
      for (; c0 + 4 * kLanes <= p.d; c0 += 4 * kLanes) local &= row_slice<4>(p, indptr, indices, values, i, c0);
      if (p.d - c0 >= 2 * kLanes) {
        local &= row_slice<2>(p, indptr, indices, values, i, c0);
        c0 += 2 * kLanes;
      }
      if (p.d - c0 >= kLanes) {
        local &= row_slice<1>(p, indptr, indices, values, i, c0);
        c0 += kLanes;
      }
      if (c0 < p.d) local &= row_tail(p, indptr, indices, values, i, c0);
    }
    if (!local) ok = false;
  }
  return ok.load();
}

// fp32 contiguous view of a dense operand (no copy when it already is).
at::Tensor as_f32(const at::Tensor& t) { return t.to(at::kFloat).contiguous(); }

template <typename index_t>
void check_indices_result(bool ok, const char* name, int64_t ncols) {
  TORCH_CHECK_INDEX(ok, name, " holds a column index outside [0, ", ncols, ")");
}

// ------------------------------------------------------------------------------------------------ ops

at::Tensor spmm_cpu(const at::Tensor& indptr, const at::Tensor& indices, const at::Tensor& values,
                    const at::Tensor& dense) {
  TORCH_CHECK_VALUE(dense.dim() == 2, "dense must be 2-D [ncols, d], got ", dense.dim(), "-D");
  const int64_t rows = indptr.numel() - 1;
  TORCH_CHECK_VALUE(rows >= 0, "indptr must have at least one entry");
  check_csr_shapes(indptr, indices, values, rows, "");
  const int64_t ncols = dense.size(0), d = dense.size(1);
  auto out = at::empty({rows, d}, dense.options().dtype(at::kFloat));
  auto ip = indptr.contiguous(), ix = indices.contiguous();
  auto vals = as_f32(values);
  auto x = as_f32(dense);
  AT_DISPATCH_INDEX_TYPES(ip.scalar_type(), "spmm_cpu", [&] {
    check_indptr<index_t>(ip, ix.numel(), "indptr");
    if (d == 0) return;
    Pass p{x.data_ptr<float>(), ncols, d, out.data_ptr<float>(), nullptr, nullptr, false, 0.f, 0.f};
    const bool ok = spmm_pass(p, ip.data_ptr<index_t>(), ix.data_ptr<index_t>(), vals.data_ptr<float>(), rows);
    check_indices_result<index_t>(ok, "indices", ncols);
  });
  return dense.scalar_type() == at::kFloat ? out : out.to(dense.scalar_type());
}

at::Tensor lightgcn_propagate_cpu(const at::Tensor& indptr, const at::Tensor& indices, const at::Tensor& values,
                                  const at::Tensor& t_indptr, const at::Tensor& t_indices,
                                  const at::Tensor& t_values, const at::Tensor& emb,
                                  at::ArrayRef<double> layer_weights) {
  TORCH_CHECK_VALUE(emb.dim() == 2, "emb must be 2-D [num_nodes, d], got ", emb.dim(), "-D");
  TORCH_CHECK_VALUE(!layer_weights.empty(), "layer_weights must hold num_layers + 1 weights");
  const int64_t n = emb.size(0), d = emb.size(1);
  check_csr_shapes(indptr, indices, values, n, "");
  check_csr_shapes(t_indptr, t_indices, t_values, n, "t_");
  const int64_t layers = static_cast<int64_t>(layer_weights.size()) - 1;
  auto ip = indptr.contiguous(), ix = indices.contiguous();
  auto vals = as_f32(values);
  auto x0 = as_f32(emb);
  auto out = at::empty({n, d}, emb.options().dtype(at::kFloat));
  AT_DISPATCH_INDEX_TYPES(ip.scalar_type(), "lightgcn_propagate_cpu", [&] {
    check_indptr<index_t>(ip, ix.numel(), "indptr");
    float* o = out.data_ptr<float>();
    const float* x = x0.data_ptr<float>();
    const float w0 = static_cast<float>(layer_weights[0]);
    if (layers == 0 || n == 0 || d == 0) {
      at::parallel_for(0, n * d, 1 << 14, [&](int64_t b, int64_t e) {
        for (int64_t k = b; k < e; ++k) o[k] = w0 * x[k];
      });
      return;
    }
    // two layer buffers, ping-pong; the last pass writes only the running mean
    auto opts = emb.options().dtype(at::kFloat);
    auto buf_a = at::empty({layers > 1 ? n * d : 0}, opts), buf_b = at::empty({layers > 2 ? n * d : 0}, opts);
    const float* cur = x;
    float* bufs[2] = {buf_a.data_ptr<float>(), buf_b.data_ptr<float>()};
    for (int64_t l = 1; l <= layers; ++l) {
      float* next = l < layers ? bufs[(l - 1) % 2] : nullptr;
      Pass p{cur, n, d, next, o, x, l == 1, w0, static_cast<float>(layer_weights[l])};
      const bool ok = spmm_pass(p, ip.data_ptr<index_t>(), ix.data_ptr<index_t>(), vals.data_ptr<float>(), n);
      check_indices_result<index_t>(ok, "indices", n);
      cur = next;
    }
  });
  return emb.scalar_type() == at::kFloat ? out : out.to(emb.scalar_type());
}

// ------------------------------------------------------------------------------------- topk_scores
//
// A register-tiled micro-kernel (8 users x 32 items, 16 accumulators) computes scores that never leave
// the registers unless one beats the user's current k-th score: the threshold test is one compare per
// vector, and only the rare winners are checked against the user's (sorted) seen list and pushed into a
// running top-k heap. Items are packed once per call into 32-wide transposed panels; a block of 128
// items (32 KB) stays in L1 while every 8-user row group of the block passes over it.

using simd::kTileRows;
constexpr int kTileItems = simd::kTileCols;
constexpr int64_t kPanelsPerBlock = 4;

struct Entry {
  float score;
  int64_t id;
};
// std heap with this comparator keeps the entry that ranks last on top (the one to evict).
inline bool entry_before(const Entry& a, const Entry& b) { return graph::ranks_before(a.score, a.id, b.score, b.id); }

using simd::round_up;

// items [I, D] -> panels [P][D][32] (P = ceil(I / 32)), padding columns zero.
std::vector<float> pack_items(const float* it, int64_t I, int64_t D) {
  const int64_t P = (I + kTileItems - 1) / kTileItems;
  std::vector<float> packed(P * D * kTileItems);
  at::parallel_for(0, P, 64, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      float* dst = packed.data() + p * D * kTileItems;
      for (int64_t j = 0; j < kTileItems; ++j) {
        const int64_t i = p * kTileItems + j;
        for (int64_t d = 0; d < D; ++d) dst[d * kTileItems + j] = i < I ? it[i * D + d] : 0.f;
      }
    }
  });
  return packed;
}

struct UserTopK {
  Entry* heap;
  int64_t size;
  float thr;  // the k-th score once full; -inf while filling (so every item is offered)
  const int64_t* seen;  // sorted
  int64_t num_seen;
};

inline bool is_seen(const UserTopK& u, int64_t id) { return std::binary_search(u.seen, u.seen + u.num_seen, id); }

// Offer the 32 scores of one tile row (items id0..id0+31, increasing) to a user's running top-k.
inline void offer(UserTopK& u, const float* s, int64_t id0, int64_t I, int64_t k) {
  for (int j = 0; j < kTileItems; ++j) {
    const int64_t id = id0 + j;
    if (id >= I) break;
    if (u.size < k) {
      u.heap[u.size++] = Entry{is_seen(u, id) ? -std::numeric_limits<float>::infinity() : s[j], id};
      std::push_heap(u.heap, u.heap + u.size, entry_before);
      if (u.size == k) u.thr = u.heap[0].score;
    } else if (s[j] > u.thr && !is_seen(u, id)) {  // ids only grow: a tie never displaces the holder
      std::pop_heap(u.heap, u.heap + k, entry_before);
      u.heap[k - 1] = Entry{s[j], id};
      std::push_heap(u.heap, u.heap + k, entry_before);
      u.thr = u.heap[0].score;
    }
  }
}

template <typename index_t>
void topk_impl(const at::Tensor& q, const at::Tensor& items, int64_t k, const index_t* ex_ptr, const index_t* ex_idx,
               float* out_s, int64_t* out_i) {
  const int64_t U = q.size(0), I = items.size(0), D = q.size(1);
  const int64_t threads = at::get_num_threads();
  const std::vector<float> packed = pack_items(items.data_ptr<float>(), I, D);
  const int64_t P = (I + kTileItems - 1) / kTileItems;
  int64_t ub = 256;  // users per block: the block's queries (64 KB at d=64) stay in L2
  while (ub > kTileRows && (U + ub - 1) / ub < 2 * threads) ub /= 2;
  // large k: the per-thread heaps (ub x k entries) stay under 64 MB
  while (ub > kTileRows && ub * k * static_cast<int64_t>(sizeof(Entry)) > (int64_t{64} << 20)) ub /= 2;
  const int64_t blocks = (U + ub - 1) / ub;
  const float* qp = q.data_ptr<float>();
  const float inf = std::numeric_limits<float>::infinity();
  std::atomic<bool> ok{true};
#pragma omp parallel num_threads(threads)
  {
    std::vector<float> qbuf(round_up(ub, kTileRows) * D);
    std::vector<Entry> heaps(ub * k);
    std::vector<UserTopK> users(ub);
    std::vector<int64_t> seen;
    std::vector<int64_t> seen_off(ub + 1);
    alignas(64) float row[kTileItems];
#pragma omp for schedule(dynamic, 1)
    for (int64_t b = 0; b < blocks; ++b) {
      const int64_t u0 = b * ub, nu = std::min(ub, U - u0), rows = round_up(nu, kTileRows);
      std::memcpy(qbuf.data(), qp + u0 * D, nu * D * sizeof(float));
      std::fill(qbuf.begin() + nu * D, qbuf.begin() + rows * D, 0.f);
      // the block's seen lists, sorted per user (any order and duplicates are accepted on input)
      seen.clear();
      for (int64_t r = 0; r < nu; ++r) {
        seen_off[r] = static_cast<int64_t>(seen.size());
        if (ex_ptr) {
          for (int64_t e = ex_ptr[u0 + r]; e < static_cast<int64_t>(ex_ptr[u0 + r + 1]); ++e) {
            const int64_t j = static_cast<int64_t>(ex_idx[e]);
            if (j < 0 || j >= I) ok = false;
            else seen.push_back(j);
          }
        }
        std::sort(seen.begin() + seen_off[r], seen.end());
      }
      seen_off[nu] = static_cast<int64_t>(seen.size());
      for (int64_t r = 0; r < nu; ++r)
        users[r] = UserTopK{heaps.data() + r * k, 0, -inf, seen.data() + seen_off[r], seen_off[r + 1] - seen_off[r]};
      for (int64_t p0 = 0; p0 < P; p0 += kPanelsPerBlock) {
        const int64_t p1 = std::min(P, p0 + kPanelsPerBlock);
        for (int64_t r0 = 0; r0 < rows; r0 += kTileRows) {
          const int64_t live = std::min<int64_t>(kTileRows, nu - r0);
          for (int64_t p = p0; p < p1; ++p) {
            vf acc0[kTileRows], acc1[kTileRows];
            simd::tile_8x32(qbuf.data() + r0 * D, D, packed.data() + p * D * kTileItems, kTileItems, acc0, acc1);
            for (int64_t r = 0; r < live; ++r) {
              UserTopK& u = users[r0 + r];
              const vf t = vf{} + u.thr;
              const auto hit = (acc0[r] > t) | (acc1[r] > t);
              bool any = false;
              for (int j = 0; j < kLanes; ++j) any |= hit[j] != 0;
              if (!any && u.size == k) continue;
              store(row, acc0[r]);
              store(row + kLanes, acc1[r]);
              offer(u, row, p * kTileItems, I, k);
            }
          }
        }
      }
      for (int64_t r = 0; r < nu; ++r) {
        Entry* h = users[r].heap;
        std::sort_heap(h, h + k, entry_before);
        for (int64_t j = 0; j < k; ++j) {
          out_s[(u0 + r) * k + j] = h[j].score;
          out_i[(u0 + r) * k + j] = h[j].id;
        }
      }
    }
  }
  TORCH_CHECK_INDEX(ok.load(), "exclude_indices holds an item id outside [0, ", I, ")");
}

std::tuple<at::Tensor, at::Tensor> topk_scores_cpu(const at::Tensor& queries, const at::Tensor& items, int64_t k,
                                                   const std::optional<at::Tensor>& exclude_indptr,
                                                   const std::optional<at::Tensor>& exclude_indices) {
  TORCH_CHECK_VALUE(queries.dim() == 2, "queries must be 2-D [U, d], got ", queries.dim(), "-D");
  TORCH_CHECK_VALUE(items.dim() == 2, "items must be 2-D [I, d], got ", items.dim(), "-D");
  TORCH_CHECK_VALUE(queries.size(1) == items.size(1), "queries has d=", queries.size(1), " but items has d=",
                    items.size(1));
  const int64_t U = queries.size(0), I = items.size(0);
  TORCH_CHECK_VALUE(k >= 0 && k <= I, "k must lie in [0, ", I, "] (the item count), got ", k);
  TORCH_CHECK_VALUE(exclude_indptr.has_value() == exclude_indices.has_value(),
                    "exclude_indptr and exclude_indices go together");
  auto scores = at::empty({U, k}, queries.options().dtype(at::kFloat));
  auto ids = at::empty({U, k}, queries.options().dtype(at::kLong));
  if (U == 0 || k == 0) return {scores, ids};
  auto q = queries.detach().to(at::kFloat).contiguous();
  auto it = items.detach().to(at::kFloat).contiguous();
  if (!exclude_indptr.has_value()) {
    topk_impl<int64_t>(q, it, k, nullptr, nullptr, scores.data_ptr<float>(), ids.data_ptr<int64_t>());
    return {scores, ids};
  }
  auto ep = exclude_indptr->contiguous(), ei = exclude_indices->contiguous();
  TORCH_CHECK_VALUE(ep.dim() == 1 && ep.numel() == U + 1, "exclude_indptr must be 1-D with U + 1 = ", U + 1,
                    " entries, got shape ", ep.sizes());
  TORCH_CHECK_VALUE(ei.dim() == 1, "exclude_indices must be 1-D");
  TORCH_CHECK_VALUE(ep.scalar_type() == ei.scalar_type() &&
                        (ep.scalar_type() == at::kInt || ep.scalar_type() == at::kLong),
                    "exclude_indptr and exclude_indices must share one dtype (int32 or int64)");
  AT_DISPATCH_INDEX_TYPES(ep.scalar_type(), "topk_scores_cpu", [&] {
    check_indptr<index_t>(ep, ei.numel(), "exclude_indptr");
    topk_impl<index_t>(q, it, k, ep.data_ptr<index_t>(), ei.data_ptr<index_t>(), scores.data_ptr<float>(),
                       ids.data_ptr<int64_t>());
  });
  return {scores, ids};
}

// fastrec::_graph_partition: the merge-path plan of the CUDA SpMM (graph::plan_worker) for every worker,
// [workers, 6] int64 (row0, row1, lead_begin, chain_begin, carry_begin, carry_end); tests check its invariants.
at::Tensor graph_partition_cpu(const at::Tensor& indptr, int64_t nnz, int64_t items_per_worker) {
  TORCH_CHECK_VALUE(indptr.dim() == 1 && indptr.numel() >= 1, "indptr must be 1-D with num_rows + 1 >= 1 entries");
  TORCH_CHECK_VALUE(indptr.scalar_type() == at::kInt || indptr.scalar_type() == at::kLong,
                    "indptr must be int32 or int64");
  TORCH_CHECK_VALUE(nnz >= 0 && items_per_worker >= 1, "nnz must be >= 0 and items_per_worker >= 1");
  auto ip = indptr.contiguous();
  const int64_t rows = ip.numel() - 1, workers = graph::merge_path_workers(rows, nnz, items_per_worker);
  auto plan = at::empty({workers, 6}, ip.options().dtype(at::kLong));
  int64_t* o = plan.data_ptr<int64_t>();
  AT_DISPATCH_INDEX_TYPES(ip.scalar_type(), "graph_partition_cpu", [&] {
    const index_t* p = ip.data_ptr<index_t>();
    for (int64_t w = 0; w < workers; ++w) {
      const graph::WorkerPlan wp = graph::plan_worker(w, items_per_worker, p, rows, nnz);
      const int64_t row[6] = {wp.row0, wp.row1, wp.lead_begin, wp.chain_begin, wp.carry_begin, wp.carry_end};
      std::copy(row, row + 6, o + w * 6);
    }
  });
  return plan;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastrec, CPU, m) {
  m.impl("_graph_partition", &graph_partition_cpu);
  m.impl("spmm", &spmm_cpu);
  m.impl("lightgcn_propagate", &lightgcn_propagate_cpu);
  m.impl("topk_scores", &topk_scores_cpu);
}

}  // namespace fastrec
