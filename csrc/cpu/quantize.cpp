// CPU kernels of the residual-quantization family: nearest_code and residual_encode.
//
// Both run the same fused search: for a block of rows, the distance ranking ||c||^2 - 2 x.c is computed
// in registers by a register-tiled micro-kernel (8 rows x 32 codes, GCC vector extensions that the
// compiler lowers to AVX-512 / AVX2 FMAs), folded into a running per-lane argmin, and never stored.
// The N x K distance matrix is never materialised; memory per thread is one block of rows.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <omp.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "common/quantize.h"
#include "cpu/simd.h"

namespace fastrec {
namespace {

using simd::kLanes;
using simd::kTileRows;
using simd::load;
using simd::round_up;
using simd::vf;
using simd::vi;
constexpr int kTileCodes = simd::kTileCols;  // codes per micro-tile (two vectors)
constexpr int64_t kBlockRows = 64;  // rows per OpenMP work item
constexpr int64_t kL1Bytes = 32 * 1024;

// Codebooks laid out for the micro-kernel: per level, the transposed codes [D][Kp] (Kp = K rounded up to
// the tile width, padding columns zero) and their squared norms [Kp] (padding +inf, so never chosen),
// plus the plain fp32 rows [K][D] for the residual update and the exact distance.
struct PackedCodebooks {
  int64_t levels, K, Kp, D;
  std::vector<float> codes_t, norms, rows;

  const float* t(int64_t l) const { return codes_t.data() + l * D * Kp; }
  const float* norm(int64_t l) const { return norms.data() + l * Kp; }
  const float* row(int64_t l, int64_t k) const { return rows.data() + (l * K + k) * D; }
};

template <typename scalar_t>
PackedCodebooks pack(const at::Tensor& codebooks) {  // [L, K, D], contiguous
  PackedCodebooks p;
  p.levels = codebooks.size(0);
  p.K = codebooks.size(1);
  p.D = codebooks.size(2);
  p.Kp = round_up(p.K, kTileCodes);
  p.codes_t.assign(p.levels * p.D * p.Kp, 0.f);
  p.norms.assign(p.levels * p.Kp, std::numeric_limits<float>::infinity());
  p.rows.resize(p.levels * p.K * p.D);
  const scalar_t* src = codebooks.data_ptr<scalar_t>();
  for (int64_t l = 0; l < p.levels; ++l) {
    for (int64_t k = 0; k < p.K; ++k) {
      float norm = 0.f;
      for (int64_t d = 0; d < p.D; ++d) {
        float v = static_cast<float>(src[(l * p.K + k) * p.D + d]);
        p.rows[(l * p.K + k) * p.D + d] = v;
        p.codes_t[(l * p.D + d) * p.Kp + k] = v;
        norm += v * v;
      }
      p.norms[l * p.Kp + k] = norm;
    }
  }
  return p;
}

// Codes per cache block: the transposed block [D][kb] stays in L1 while every row tile of the
// row block streams past it.
inline int64_t codes_per_block(const PackedCodebooks& p) {
  if (p.D == 0) return p.Kp;  // D = 0: every distance is 0, one block holds every code
  int64_t kb = kL1Bytes / (p.D * (int64_t)sizeof(float));
  kb = std::max<int64_t>(kTileCodes, kb / kTileCodes * kTileCodes);
  return std::min(kb, p.Kp);
}

// Per-thread scratch for one block of rows.
struct RowBlock {
  std::vector<float> resid;    // [kBlockRows][D], fp32 residual (rows past the end are zero)
  std::vector<float> quant;    // [kBlockRows][D], sum of the chosen codes
  std::vector<vf> best_dist;   // [kBlockRows] per-lane running minimum
  std::vector<vi> best_idx;    // [kBlockRows]
  explicit RowBlock(int64_t D)
      : resid(kBlockRows * D), quant(kBlockRows * D), best_dist(kBlockRows), best_idx(kBlockRows) {}
};

// The micro-kernel: 8 rows x 32 codes of x.c accumulated over D in 16 vector registers, then folded into
// the per-lane running argmin. Lane j of a row only ever sees codes k = j (mod 16) in increasing order,
// so keeping strict '<' per lane leaves the lowest index among equal distances.
inline void tile_argmin(const float* xr, int64_t D, const float* ct, int64_t Kp, const float* norms,
                        int32_t k0, vf* best_dist, vi* best_idx) {
  vf acc0[kTileRows], acc1[kTileRows];
  simd::tile_8x32(xr, D, ct, Kp, acc0, acc1);
  const vf n0 = load(norms);
  const vf n1 = load(norms + kLanes);
  vi idx0, idx1;
  for (int j = 0; j < kLanes; ++j) {
    idx0[j] = k0 + j;
    idx1[j] = k0 + kLanes + j;
  }
  for (int r = 0; r < kTileRows; ++r) {
    const vf d0 = n0 - 2.f * acc0[r];
    const vf d1 = n1 - 2.f * acc1[r];
    vi m = d0 < best_dist[r];
    best_dist[r] = m ? d0 : best_dist[r];
    best_idx[r] = m ? idx0 : best_idx[r];
    m = d1 < best_dist[r];
    best_dist[r] = m ? d1 : best_dist[r];
    best_idx[r] = m ? idx1 : best_idx[r];
  }
}

inline int64_t reduce_lanes(const vf& dist, const vi& idx) {
  float bd = dist[0];
  int64_t bi = idx[0];
  for (int j = 1; j < kLanes; ++j)
    if (better(dist[j], idx[j], bd, bi)) {
      bd = dist[j];
      bi = idx[j];
    }
  return bi;
}

// Nearest code of every row of one row block at one level; writes the chosen index per row into `out`.
void search_level(RowBlock& blk, int64_t rows, const PackedCodebooks& p, int64_t level, int64_t kb,
                  int64_t* out) {
  const int64_t tiles = round_up(rows, kTileRows);
  const vf inf = vf{} + std::numeric_limits<float>::infinity();
  for (int64_t r = 0; r < tiles; ++r) {
    blk.best_dist[r] = inf;
    blk.best_idx[r] = vi{};
  }
  const float* ct = p.t(level);
  const float* norms = p.norm(level);
  for (int64_t k_start = 0; k_start < p.Kp; k_start += kb) {
    const int64_t k_end = std::min(p.Kp, k_start + kb);
    for (int64_t r0 = 0; r0 < tiles; r0 += kTileRows) {
      for (int64_t k = k_start; k < k_end; k += kTileCodes) {
        tile_argmin(blk.resid.data() + r0 * p.D, p.D, ct + k, p.Kp, norms + k, (int32_t)k,
                    blk.best_dist.data() + r0, blk.best_idx.data() + r0);
      }
    }
  }
  for (int64_t r = 0; r < rows; ++r) out[r] = reduce_lanes(blk.best_dist[r], blk.best_idx[r]);
}

// Loads rows [n0, n0 + rows) of x into the fp32 residual buffer; returns false on a non-finite value.
template <typename scalar_t>
bool load_rows(RowBlock& blk, const scalar_t* x, int64_t n0, int64_t rows, int64_t D) {
  bool finite = true;
  for (int64_t r = 0; r < rows; ++r) {
    const scalar_t* src = x + (n0 + r) * D;
    float* dst = blk.resid.data() + r * D;
    for (int64_t d = 0; d < D; ++d) {
      dst[d] = static_cast<float>(src[d]);
      finite &= std::isfinite(dst[d]);
    }
  }
  const int64_t tiles = round_up(rows, kTileRows);
  std::fill(blk.resid.begin() + rows * D, blk.resid.begin() + tiles * D, 0.f);
  return finite;
}

// Shared driver: greedy residual search over all levels, one row block at a time, OpenMP over blocks.
// `visit(blk, n0, rows, codes)` receives the block after the last level with the codes of its rows.
template <typename scalar_t, typename Visit>
void encode_blocks(const at::Tensor& x, const PackedCodebooks& p, Visit visit) {
  const int64_t N = x.size(0), D = p.D;
  const scalar_t* xp = x.data_ptr<scalar_t>();
  const int64_t kb = codes_per_block(p);
  const int64_t blocks = (N + kBlockRows - 1) / kBlockRows;
  std::atomic<bool> finite{true};
#pragma omp parallel num_threads(at::get_num_threads())
  {
    RowBlock blk(D);
    std::vector<int64_t> codes(kBlockRows * p.levels);
    std::vector<int64_t> level_codes(kBlockRows);
#pragma omp for schedule(static)
    for (int64_t b = 0; b < blocks; ++b) {
      const int64_t n0 = b * kBlockRows, rows = std::min(kBlockRows, N - n0);
      if (!load_rows(blk, xp, n0, rows, D)) finite = false;
      std::fill(blk.quant.begin(), blk.quant.begin() + rows * D, 0.f);
      for (int64_t l = 0; l < p.levels; ++l) {
        search_level(blk, rows, p, l, kb, level_codes.data());
        for (int64_t r = 0; r < rows; ++r) {
          const int64_t k = level_codes[r];
          codes[r * p.levels + l] = k;
          if (l + 1 == p.levels) continue;  // the last residual is not needed
          const float* c = p.row(l, k);
          float* res = blk.resid.data() + r * D;
          float* q = blk.quant.data() + r * D;
#pragma omp simd
          for (int64_t d = 0; d < D; ++d) {
            res[d] -= c[d];
            q[d] += c[d];
          }
        }
      }
      visit(blk, n0, rows, codes.data());
    }
  }
  TORCH_CHECK_VALUE(finite.load(), "x contains NaN or Inf; nearest-code search needs finite rows");
}

template <typename scalar_t>
std::tuple<at::Tensor, at::Tensor> nearest_code_impl(const at::Tensor& x, const at::Tensor& codebook) {
  const int64_t N = x.size(0), D = x.size(1);
  auto index = at::empty({N}, x.options().dtype(at::kLong));
  auto sqdist = at::empty({N}, x.options().dtype(at::kFloat));
  if (N == 0) return {index, sqdist};
  const PackedCodebooks p = pack<scalar_t>(codebook.unsqueeze(0));
  int64_t* ip = index.data_ptr<int64_t>();
  float* dp = sqdist.data_ptr<float>();
  encode_blocks<scalar_t>(x, p, [&](RowBlock& blk, int64_t n0, int64_t rows, const int64_t* codes) {
    for (int64_t r = 0; r < rows; ++r) {
      ip[n0 + r] = codes[r];
      dp[n0 + r] = exact_sqdist(blk.resid.data() + r * D, p.row(0, codes[r]), D, [](float v) { return v; });
    }
  });
  return {index, sqdist};
}

template <typename scalar_t>
std::tuple<at::Tensor, at::Tensor> residual_encode_impl(const at::Tensor& x, const at::Tensor& codebooks) {
  const int64_t N = x.size(0), D = x.size(1), L = codebooks.size(0);
  auto codes = at::empty({N, L}, x.options().dtype(at::kLong));
  auto quantized = at::empty({N, D}, x.options());
  if (N == 0) return {codes, quantized};
  const PackedCodebooks p = pack<scalar_t>(codebooks);
  int64_t* cp = codes.data_ptr<int64_t>();
  scalar_t* qp = quantized.data_ptr<scalar_t>();
  encode_blocks<scalar_t>(x, p, [&](RowBlock& blk, int64_t n0, int64_t rows, const int64_t* c) {
    std::memcpy(cp + n0 * L, c, rows * L * sizeof(int64_t));
    for (int64_t r = 0; r < rows; ++r) {
      const float* last = p.row(L - 1, c[r * L + L - 1]);
      const float* q = blk.quant.data() + r * D;
      scalar_t* dst = qp + (n0 + r) * D;
      for (int64_t d = 0; d < D; ++d) dst[d] = static_cast<scalar_t>(q[d] + last[d]);
    }
  });
  return {codes, quantized};
}

void check_args(const at::Tensor& x, const at::Tensor& codebooks, int64_t codebook_rank, const char* name) {
  TORCH_CHECK_VALUE(x.dim() == 2, "x must be 2-D [N, D], got ", x.dim(), "-D");
  TORCH_CHECK_VALUE(codebooks.dim() == codebook_rank, name, " must be ", codebook_rank, "-D, got ",
                    codebooks.dim(), "-D");
  TORCH_CHECK_VALUE(x.size(1) == codebooks.size(-1), "x has D=", x.size(1), " but ", name, " has D=",
                    codebooks.size(-1));
  TORCH_CHECK_VALUE(codebooks.size(-2) > 0, name, " has no codes (K = 0)");
  TORCH_CHECK_VALUE(codebooks.size(-2) < std::numeric_limits<int32_t>::max(), name, " has too many codes");
  TORCH_CHECK_VALUE(x.scalar_type() == codebooks.scalar_type(), "x is ", x.scalar_type(), " but ", name,
                    " is ", codebooks.scalar_type());
}

std::tuple<at::Tensor, at::Tensor> nearest_code_cpu(const at::Tensor& x, const at::Tensor& codebook) {
  check_args(x, codebook, 2, "codebook");
  auto xc = x.contiguous();
  auto cc = codebook.contiguous();
  return AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "nearest_code", [&] {
    return nearest_code_impl<scalar_t>(xc, cc);
  });
}

std::tuple<at::Tensor, at::Tensor> residual_encode_cpu(const at::Tensor& x, const at::Tensor& codebooks) {
  check_args(x, codebooks, 3, "codebooks");
  TORCH_CHECK_VALUE(codebooks.size(0) > 0, "codebooks has no levels (L = 0)");
  auto xc = x.contiguous();
  auto cc = codebooks.contiguous();
  return AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "residual_encode", [&] {
    return residual_encode_impl<scalar_t>(xc, cc);
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(fastrec, CPU, m) {
  m.impl("nearest_code", &nearest_code_cpu);
  m.impl("residual_encode", &residual_encode_cpu);
}

}  // namespace fastrec
