// CPU kernels of the semantic-fusion family (KIRec): semantic_fusion_lookup and its weight gradient.
//
// The eager composition gathers [B, L, D] semantic rows (39 MB at B*L = 12,800, D = 768) and multiplies
// all of them. Here every output row depends on its item id only, so the work is done once per item:
//   1. one pass over the ids checks the range and builds the sorted unique ids and the inverse map
//      (a mark array over the catalogue, or a sort when the catalogue is much larger than the batch);
//      the whole catalogue is used instead when the batch touches nearly all of it (common/fusion.h);
//   2. the reduction is a gather-GEMM micro-kernel (8 rows x 32 outputs in registers) that reads the
//      semantic rows in place through their row pointers: no [N, D] or [U, D] buffer exists;
//   3. the fusion (add, gate, concat+project) runs on the U reduced rows;
//   4. one OpenMP pass writes every output row (a copy of its item's fused row, zero for padding).
// The backward (fastrec/ops/fusion.py) sums the output gradient per unique item and calls the weight
// gradient kernel below: grad_W = sum_blocks G_b^T S_b over gathered blocks of at most 16 MB, fed to the
// BLAS GEMM (one call when the rows are the whole fp32 table).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <string>
#include <type_traits>
#include <vector>

#include "common/fusion.h"
#include "cpu/simd.h"

namespace fastrec {
namespace {


int parse_mode(const std::string& mode) {
  if (mode == "add") return kFuseAdd;
  if (mode == "gate") return kFuseGate;
  if (mode == "concat") return kFuseConcat;
  TORCH_CHECK_VALUE(false, "mode must be one of ('add', 'gate', 'concat'), got '", mode, "'");
  return -1;
}

// Range check. Throws IndexError naming a bad id.
void check_ids(const int64_t* ids, int64_t n, int64_t num_items, int64_t padding_idx) {
  std::atomic<int64_t> bad{-1};
  at::parallel_for(0, n, 4096, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i)
      if (ids[i] < 0 || ids[i] >= num_items) bad = i;
  });
  const int64_t at_pos = bad.load();
  TORCH_CHECK_INDEX(at_pos < 0, "item_ids out of range: item_ids[", at_pos, "] = ", ids[at_pos],
                    " is not in [0, ", num_items, ")");
}

// Sorted unique non-padding ids and, per lookup, the position of its id among them (-1 for padding).
at::Tensor unique_rows(const int64_t* ids, int64_t n, int64_t num_items, int64_t padding_idx, int64_t* inverse,
                       const at::TensorOptions& opt) {
  if (num_items <= 16 * n + 4096) {  // mark array: O(N + I), no sort
    std::vector<int64_t> pos(num_items, 0);
    for (int64_t i = 0; i < n; ++i)
      if (ids[i] != padding_idx) pos[ids[i]] = 1;
    int64_t u = 0;
    for (int64_t k = 0; k < num_items; ++k) pos[k] = pos[k] ? u++ : -1;
    auto rows = at::empty({u}, opt);
    int64_t* rp = rows.data_ptr<int64_t>();
    for (int64_t k = 0; k < num_items; ++k)
      if (pos[k] >= 0) rp[pos[k]] = k;
    at::parallel_for(0, n, 4096, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) inverse[i] = ids[i] == padding_idx ? -1 : pos[ids[i]];
    });
    return rows;
  }
  // huge catalogue, few lookups: sort (id, position) pairs
  std::vector<std::pair<int64_t, int64_t>> order;
  order.reserve(n);
  for (int64_t i = 0; i < n; ++i)
    if (ids[i] != padding_idx) order.emplace_back(ids[i], i);
  else inverse[i] = -1;
  std::sort(order.begin(), order.end());
  std::vector<int64_t> uniq;
  for (const auto& [id, i] : order) {
    if (uniq.empty() || uniq.back() != id) uniq.push_back(id);
    inverse[i] = static_cast<int64_t>(uniq.size()) - 1;
  }
  auto rows = at::empty({static_cast<int64_t>(uniq.size())}, opt);
  if (!uniq.empty()) std::memcpy(rows.data_ptr<int64_t>(), uniq.data(), uniq.size() * sizeof(int64_t));
  return rows;
}

using simd::kLanes;
using simd::kTileCols;  // output columns per micro-tile
using simd::kTileRows;  // gathered rows per micro-tile
constexpr int64_t kRowsPerTask = 64;       // unique rows per OpenMP work item
constexpr int64_t kScratchBytes = 16 << 20;  // bound of the weight-gradient gather buffer

using simd::round_up;
using simd::vf;
using simd::load;

// W [d, D] transposed and padded: wt[k * dp + j] = W[j, k], dp = d rounded up to the tile width.
at::Tensor pack_weight(const at::Tensor& w32, int64_t dp) {
  auto wt = at::zeros({w32.size(1), dp}, w32.options());
  wt.narrow(1, 0, w32.size(0)).copy_(w32.t());
  return wt;
}

// reduced [U, d] = semantic_table[rows] @ W^T (+ bias), fp32. OpenMP over blocks of unique rows; fp32
// tables are read in place, other dtypes are converted one 8-row tile at a time into thread scratch.
template <typename scalar_t>
void reduce_rows_impl(const scalar_t* sem, int64_t D, const int64_t* rows, int64_t U, const float* wt, int64_t d,
                      int64_t dp, const float* bias, float* out) {
  const int64_t tasks = (U + kRowsPerTask - 1) / kRowsPerTask;
  const std::vector<float> zero_row(D, 0.f);
#pragma omp parallel num_threads(at::get_num_threads())
  {
    std::vector<float> conv(std::is_same<scalar_t, float>::value ? 0 : kTileRows * D);
    vf acc0[kTileRows], acc1[kTileRows];
    const float* x[kTileRows];
    float tmp[kTileCols];
#pragma omp for schedule(static)
    for (int64_t t = 0; t < tasks; ++t) {
      const int64_t end = std::min(U, (t + 1) * kRowsPerTask);
      for (int64_t r0 = t * kRowsPerTask; r0 < end; r0 += kTileRows) {
        const int64_t m = std::min<int64_t>(kTileRows, end - r0);
        for (int r = 0; r < kTileRows; ++r) {
          if (r >= m) {
            x[r] = zero_row.data();
          } else if constexpr (std::is_same<scalar_t, float>::value) {
            x[r] = sem + rows[r0 + r] * D;
          } else {
            const scalar_t* src = sem + rows[r0 + r] * D;
            float* dst = conv.data() + r * D;
            for (int64_t k = 0; k < D; ++k) dst[k] = static_cast<float>(src[k]);
            x[r] = dst;
          }
        }
        for (int64_t j0 = 0; j0 < dp; j0 += kTileCols) {
          simd::tile_8x32_rows([x](int r) { return x[r]; }, D, wt + j0, dp, acc0, acc1);  // gathered rows
          const int64_t cols = std::min<int64_t>(kTileCols, d - j0);
          for (int64_t r = 0; r < m; ++r) {
            float* dst = out + (r0 + r) * d + j0;
            for (int l = 0; l < kLanes; ++l) {
              tmp[l] = acc0[r][l];
              tmp[kLanes + l] = acc1[r][l];
            }
            for (int64_t c = 0; c < cols; ++c) dst[c] = tmp[c] + (bias ? bias[j0 + c] : 0.f);
          }
        }
      }
    }
  }
}

at::Tensor reduce_rows(const at::Tensor& sem, const at::Tensor& rows, const at::Tensor& w32,
                       const c10::optional<at::Tensor>& bias) {
  const int64_t U = rows.numel(), D = sem.size(1), d = w32.size(0);
  auto reduced = at::empty({U, d}, sem.options().dtype(at::kFloat));
  if (U == 0) return reduced;
  const int64_t dp = round_up(d, kTileCols);
  auto wt = pack_weight(w32, dp);
  at::Tensor b32 = bias.has_value() ? bias->to(at::kFloat).contiguous() : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, sem.scalar_type(), "sfl_reduce", [&] {
    reduce_rows_impl<scalar_t>(sem.data_ptr<scalar_t>(), D, rows.data_ptr<int64_t>(), U, wt.data_ptr<float>(), d,
                               dp, b32.defined() ? b32.data_ptr<float>() : nullptr, reduced.data_ptr<float>());
  });
  return reduced;
}

// Gather rows [r0, r0 + m) of table[rows] into an fp32 block [m, D] (parallel over rows).
template <typename scalar_t>
void gather_block(const scalar_t* table, int64_t D, const int64_t* rows, int64_t r0, int64_t m, float* dst) {
  at::parallel_for(0, m, 16, [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      const scalar_t* src = table + rows[r0 + r] * D;
      float* out = dst + r * D;
#pragma omp simd
      for (int64_t k = 0; k < D; ++k) out[k] = static_cast<float>(src[k]);
    }
  });
}

// Fused rows [U, d] fp32 from the ID rows e and the reduced semantic rows s.
at::Tensor fuse_rows(const at::Tensor& e, const at::Tensor& s, int mode, const c10::optional<at::Tensor>& fw,
                     const c10::optional<at::Tensor>& fb) {
  if (mode == kFuseAdd) return e + s;
  auto z = at::mm(at::cat({e, s}, 1), fw->to(at::kFloat).t());
  if (fb.has_value()) z.add_(fb->to(at::kFloat));
  if (mode == kFuseConcat) return z;
  auto g = z.sigmoid_();
  return s + g * (e - s);  // g * e + (1 - g) * s
}

// out[n] = fused[inverse[n]] in the output dtype, zero for padding: one pass over the output rows.
template <typename scalar_t>
void scatter_out(const float* fused, const int64_t* inverse, int64_t n, int64_t d, scalar_t* out) {
  at::parallel_for(0, n, 64, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      scalar_t* dst = out + i * d;
      const int64_t r = inverse[i];
      if (r < 0) {
        std::fill(dst, dst + d, static_cast<scalar_t>(0.f));
        continue;
      }
      const float* src = fused + r * d;
#pragma omp simd
      for (int64_t k = 0; k < d; ++k) dst[k] = static_cast<scalar_t>(src[k]);
    }
  });
}

void check_tables(const at::Tensor& ids, const at::Tensor& id_table, const at::Tensor& sem, const at::Tensor& w) {
  TORCH_CHECK_VALUE(ids.scalar_type() == at::kLong || ids.scalar_type() == at::kInt,
                    "item_ids must be int32 or int64, got ", ids.scalar_type());
  TORCH_CHECK_VALUE(id_table.dim() == 2, "id_table must be 2-D [I, d]");
  TORCH_CHECK_VALUE(sem.dim() == 2, "semantic_table must be 2-D [I, D]");
  TORCH_CHECK_VALUE(w.dim() == 2, "weight must be 2-D [d, D]");
  TORCH_CHECK_VALUE(sem.size(0) == id_table.size(0), "semantic_table has ", sem.size(0), " rows but id_table has ",
                    id_table.size(0));
  TORCH_CHECK_VALUE(w.size(1) == sem.size(1), "weight has D=", w.size(1), " but semantic_table has D=", sem.size(1));
  TORCH_CHECK_VALUE(w.size(0) == id_table.size(1), "weight has d=", w.size(0), " but id_table has d=",
                    id_table.size(1));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> semantic_fusion_lookup_cpu(
    const at::Tensor& item_ids, const at::Tensor& id_table, const at::Tensor& semantic_table,
    const at::Tensor& weight, const c10::optional<at::Tensor>& bias, const c10::optional<at::Tensor>& fuse_weight,
    const c10::optional<at::Tensor>& fuse_bias, c10::string_view mode_name, int64_t padding_idx, int64_t strategy) {
  check_tables(item_ids, id_table, semantic_table, weight);
  const int mode = parse_mode(std::string(mode_name));
  TORCH_CHECK_VALUE(mode == kFuseAdd || fuse_weight.has_value(), "fuse_weight is required for mode '",
                    std::string(mode_name), "'");
  const int64_t I = id_table.size(0), d = id_table.size(1);
  auto ids = item_ids.to(at::kLong).contiguous();
  const int64_t n = ids.numel();
  const int64_t* ip = ids.data_ptr<int64_t>();
  check_ids(ip, n, I, padding_idx);
  auto inverse = at::empty(ids.sizes(), ids.options());
  int64_t* invp = inverse.data_ptr<int64_t>();
  at::Tensor rows;
  if (strategy != 2) rows = unique_rows(ip, n, I, padding_idx, invp, ids.options());
  const bool whole = use_table(strategy, I, strategy == 2 ? I : rows.numel());
  if (whole) {
    rows = at::arange(I, ids.options());
    at::parallel_for(0, n, 4096, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) invp[i] = ip[i] == padding_idx ? -1 : ip[i];
    });
  }
  auto sem = semantic_table.contiguous();
  auto reduced = reduce_rows(sem, rows, weight.to(at::kFloat).contiguous(), bias);
  auto e = (whole ? id_table : id_table.index_select(0, rows)).to(at::kFloat);
  auto fused = fuse_rows(e, reduced, mode, fuse_weight, fuse_bias).contiguous();
  std::vector<int64_t> shape(ids.sizes().begin(), ids.sizes().end());
  shape.push_back(d);
  auto out = at::empty(shape, id_table.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "sfl_out", [&] {
    scatter_out<scalar_t>(fused.data_ptr<float>(), invp, n, d, out.data_ptr<scalar_t>());
  });
  return {out, rows, inverse, reduced};
}

at::Tensor semantic_fusion_weight_grad_cpu(const at::Tensor& rows_in, const at::Tensor& grad_reduced,
                                           const at::Tensor& semantic_table) {
  TORCH_CHECK_VALUE(semantic_table.dim() == 2 && grad_reduced.dim() == 2 && rows_in.dim() == 1,
                    "expected rows [U], grad_reduced [U, d], semantic_table [I, D]");
  TORCH_CHECK_VALUE(rows_in.numel() == grad_reduced.size(0), "rows and grad_reduced disagree on U");
  const int64_t U = rows_in.numel(), D = semantic_table.size(1), I = semantic_table.size(0);
  auto rows = rows_in.to(at::kLong).contiguous();
  auto g = grad_reduced.to(at::kFloat).contiguous();
  auto sem = semantic_table.contiguous();
  auto grad = at::zeros({g.size(1), D}, g.options());
  if (U == 0) return grad;
  const int64_t* rp = rows.data_ptr<int64_t>();
  for (int64_t i = 0; i < U; ++i)
    TORCH_CHECK_INDEX(rp[i] >= 0 && rp[i] < I, "rows[", i, "] = ", rp[i], " is not in [0, ", I, ")");
  if (D == 0) return grad;
  // the whole table in order: one GEMM on the table itself. Every row is compared (O(U) next to the
  // O(U d D) GEMM): sorted, unique rows are not guaranteed here (e.g. rows [0, 2, 1, 3])
  bool identity = U == I && sem.scalar_type() == at::kFloat;
  for (int64_t i = 0; identity && i < U; ++i) identity = rp[i] == i;
  if (identity) return at::mm(g.t(), sem);
  const int64_t block_rows = std::max<int64_t>(256, kScratchBytes / (D * (int64_t)sizeof(float)));
  auto block = at::empty({std::min(block_rows, U), D}, g.options());
  for (int64_t r0 = 0; r0 < U; r0 += block_rows) {
    const int64_t m = std::min(block_rows, U - r0);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, sem.scalar_type(), "sfl_wgrad", [&] {
      gather_block<scalar_t>(sem.data_ptr<scalar_t>(), D, rp, r0, m, block.data_ptr<float>());
    });
    grad.addmm_(g.narrow(0, r0, m).t(), block.narrow(0, 0, m));
  }
  return grad;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastrec, CPU, m) {
  m.impl("semantic_fusion_lookup", &semantic_fusion_lookup_cpu);
  m.impl("semantic_fusion_weight_grad", &semantic_fusion_weight_grad_cpu);
}

}  // namespace fastrec
