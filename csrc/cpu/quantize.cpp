// CPU kernels of the residual-quantization family: nearest_code and residual_encode.
//
// Both run the same fused search: for a block of rows, the distance ranking ||c||^2 - 2 x.c is computed
// in registers by a register-tiled micro-kernel (8 rows x 32 codes, GCC vector extensions that the
// compiler lowers to AVX-512 / AVX2 FMAs), folded into a running per-lane argmin, and never stored.
// The N x K distance matrix is never materialised; memory per thread is one block of rows.
//
// On a CPU with AMX (Sapphire Rapids and later) the search instead runs the distance GEMM on the tile unit
// in bf16 and re-ranks by exact fp32 distance (search_level_amx): faster, and its codes are those of exact
// fp32 search, near ties included (the bound argument is the CUDA/Triton kernel's, docs/gpu.md).
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
#include <memory>
#include <vector>

#include "common/quantize.h"
#include "cpu/amx.h"
#include "cpu/simd.h"

#if FASTREC_HAVE_AMX
#include <immintrin.h>
#endif

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

// ---------------------------------------------------------------------------------------------- AMX path
// Per level, the tile unit computes s_j = bf16(r) . bf16(c_j) for 32 rows x 32 codes per step (fp32
// accumulation), and A_j = ||c_j||^2 - 2 s_j approximates E_j - ||r||^2 (E_j the exact fp32 distance) within
//   B_j = 2 [2 (2u + u^2) ||r|| ||c_j|| + (2D + 16) 2^-20 (||r|| + ||c_j||)^2 + 4D 2^-126 (||r|| + ||c_j|| + 1)]
// with u = 2^-8 (bf16 operand rounding, by Cauchy-Schwarz), every fp32 rounding with room to spare, the
// tile unit's flush of subnormals, and a safety factor 2. Pass 1 takes U = min_j (A_j + B_j); pass 2 computes
// E_j exactly for every candidate A_j - B_j <= U, the lowest E winning, ties to the lowest index. The exact
// winner w is always a candidate (A_w - B_w <= E_w - ||r||^2 <= E_i - ||r||^2 <= A_i + B_i for every i).
// With ||c_j|| <= the level's largest code norm in the first term and (a + b)^2 <= 2 a^2 + 2 b^2, B_j splits into
// a row term R and a code term C_j, so each pass costs one FMA per score. Rows or codes with a norm >= 2^60
// (where products could overflow) skip the tile unit: such a row is scanned exactly, such a codebook takes the
// fp32 path.
constexpr int kAmxRows = 32;    // rows per tile step (two 16-row A tiles)
constexpr int kAmxCodes = 32;   // codes per tile step (two 16-code B tiles); Kp is a multiple
constexpr int kAmxDepth = 32;   // bf16 values per tile row (64 bytes)
constexpr float kAmxMaxNorm = 0x1p60f;

struct AmxCodebooks {
  int64_t Kp, Dp, KT, DC;  // K and D padded to the tile step, and their counts of 16-code and 32-deep tiles
  int64_t Ks;  // row stride of the dot-product buffer: Kp + 16, so the 16 rows of a tile store do not share cache sets
  float alpha, beta, gamma;
  std::vector<uint16_t> tiles;      // [L][KT][DC][16 pairs][16 codes][2]: bf16 codes in the tile unit's pair layout
  std::vector<float> nh, nl;        // [L][Kp]: ||c_j||^2 + C_j and ||c_j||^2 - C_j (padding: +inf)
  std::vector<float> cmax;          // [L]: the largest code norm

  const uint16_t* level(int64_t l) const { return tiles.data() + l * KT * DC * 512; }
  float row_term(float rn, int64_t l) const { return alpha * rn * cmax[l] + beta * rn * rn + gamma * (rn + 1.f); }
};

// nullptr when a code norm is too large for the tile unit (the call then takes the fp32 path).
std::unique_ptr<AmxCodebooks> pack_amx(const PackedCodebooks& p) {
  auto a = std::make_unique<AmxCodebooks>();
  a->Kp = round_up(p.K, kAmxCodes), a->Dp = round_up(p.D, kAmxDepth);
  a->KT = a->Kp / 16, a->DC = a->Dp / kAmxDepth;
  a->Ks = a->Kp + 16;
  const float u = 0x1p-8f;
  a->alpha = 4.f * (2.f * u + u * u);
  a->beta = 4.f * (2.f * p.D + 16.f) * 0x1p-20f;
  a->gamma = 8.f * p.D * 0x1p-126f;
  const float inf = std::numeric_limits<float>::infinity();
  a->tiles.assign(p.levels * a->KT * a->DC * 512, 0);
  a->nh.assign(p.levels * a->Kp, inf);
  a->nl.assign(p.levels * a->Kp, inf);
  a->cmax.assign(p.levels, 0.f);
  for (int64_t l = 0; l < p.levels; ++l) {
    uint16_t* t = a->tiles.data() + l * a->KT * a->DC * 512;
    for (int64_t k = 0; k < p.K; ++k) {
      const float* c = p.row(l, k);
      const float n = p.norm(l)[k], cn = std::sqrt(n);
      if (!(cn < kAmxMaxNorm)) return nullptr;
      const float ck = a->beta * n + a->gamma * cn;
      a->nh[l * a->Kp + k] = n + ck;
      a->nl[l * a->Kp + k] = n - ck;
      a->cmax[l] = std::max(a->cmax[l], cn);
      for (int64_t d = 0; d < p.D; ++d) {  // tile (k / 16, d / 32), pair row (d % 32) / 2, column k % 16
        const int64_t tile = (k / 16) * a->DC + d / kAmxDepth, pr = (d % kAmxDepth) / 2;
        t[tile * 512 + pr * 32 + (k % 16) * 2 + d % 2] = amx::to_bf16(c[d]);
      }
    }
  }
  return a;
}

// Per-thread scratch of the AMX path.
struct AmxScratch {
  std::vector<uint16_t> a;   // [kBlockRows][Dp] bf16 residual rows (rows past the end are zero)
  std::vector<float> s;      // [kAmxRows][Ks] dot products of one tile step
  std::vector<float> rn;     // [kBlockRows] ||r||
  std::vector<int32_t> cand; // [Kp + 16] candidate codes of one row
  explicit AmxScratch(const AmxCodebooks& ax)
      : a(kBlockRows * ax.Dp, 0), s(kAmxRows * ax.Ks), rn(kBlockRows), cand(ax.Kp + 16) {}
};

#if FASTREC_HAVE_AMX
// GCC 12's AVX-512 headers seed some intrinsics with _mm512_undefined_*() and then warn about it (bug 105593)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

// s[32][Ks] = a[32][Dp] . codes^T for one level: 2 x 2 tiles of 16 x 16 fp32 per step, accumulated over Dp.
FASTREC_AMX_TARGET void amx_dots(const uint16_t* a, const AmxCodebooks& ax, int64_t level, float* s) {
  const uint16_t* b = ax.level(level);
  const int64_t a_stride = ax.Dp * 2, s_stride = ax.Ks * 4, DC = ax.DC;
  for (int64_t t = 0; t < ax.KT; t += 2) {
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
    for (int64_t dc = 0; dc < DC; ++dc) {
      _tile_loadd(4, a + dc * kAmxDepth, a_stride);
      _tile_loadd(5, a + 16 * ax.Dp + dc * kAmxDepth, a_stride);
      _tile_loadd(6, b + (t * DC + dc) * 512, 64);
      _tile_loadd(7, b + ((t + 1) * DC + dc) * 512, 64);
      _tile_dpbf16ps(0, 4, 6);
      _tile_dpbf16ps(1, 4, 7);
      _tile_dpbf16ps(2, 5, 6);
      _tile_dpbf16ps(3, 5, 7);
    }
    _tile_stored(0, s + t * 16, s_stride);
    _tile_stored(1, s + (t + 1) * 16, s_stride);
    _tile_stored(2, s + 16 * ax.Ks + t * 16, s_stride);
    _tile_stored(3, s + 16 * ax.Ks + (t + 1) * 16, s_stride);
  }
}

// Exact fp32 squared distance, 16 lanes then a fixed reduction: the one E of the AMX path.
FASTREC_AMX_TARGET float sqdist_exact(const float* r, const float* c, int64_t D) {
  __m512 acc = _mm512_setzero_ps();
  int64_t d = 0;
  for (; d + 16 <= D; d += 16) {
    const __m512 diff = _mm512_sub_ps(_mm512_loadu_ps(r + d), _mm512_loadu_ps(c + d));
    acc = _mm512_fmadd_ps(diff, diff, acc);
  }
  if (d < D) {
    const __mmask16 m = static_cast<__mmask16>((1u << (D - d)) - 1u);
    const __m512 diff = _mm512_sub_ps(_mm512_maskz_loadu_ps(m, r + d), _mm512_maskz_loadu_ps(m, c + d));
    acc = _mm512_fmadd_ps(diff, diff, acc);
  }
  return _mm512_reduce_add_ps(acc);
}

// Exact search over every code (rows the tile unit cannot bound, and a safety net).
FASTREC_AMX_TARGET int64_t scan_exact(const float* r, const PackedCodebooks& p, int64_t level) {
  int64_t best = 0;
  float best_e = sqdist_exact(r, p.row(level, 0), p.D);
  for (int64_t j = 1; j < p.K; ++j) {
    const float e = sqdist_exact(r, p.row(level, j), p.D);
    if (better(e, j, best_e, best)) best_e = e, best = j;
  }
  return best;
}

// Nearest code of one row from its dot products s[Kp]: pass 1 bounds, pass 2 exact re-rank of candidates.
FASTREC_AMX_TARGET int64_t pick_amx(const float* s, const float* r, float rn, const AmxCodebooks& ax,
                                   const PackedCodebooks& p, int64_t level, int32_t* cand) {
  if (!(rn < kAmxMaxNorm)) return scan_exact(r, p, level);
  const float* nh = ax.nh.data() + level * ax.Kp;
  const float* nl = ax.nl.data() + level * ax.Kp;
  const __m512 m2 = _mm512_set1_ps(-2.f);
  // four independent minima: the min's latency, not its throughput, would bound a single chain
  __m512 u0 = _mm512_set1_ps(std::numeric_limits<float>::infinity()), u1 = u0, u2 = u0, u3 = u0;
  for (int64_t v = 0; v < ax.Kp; v += 32) {  // Kp is a multiple of 32
    u0 = _mm512_min_ps(u0, _mm512_fmadd_ps(_mm512_loadu_ps(s + v), m2, _mm512_loadu_ps(nh + v)));
    u1 = _mm512_min_ps(u1, _mm512_fmadd_ps(_mm512_loadu_ps(s + v + 16), m2, _mm512_loadu_ps(nh + v + 16)));
    std::swap(u0, u2);
    std::swap(u1, u3);
  }
  const __m512 u = _mm512_min_ps(_mm512_min_ps(u0, u1), _mm512_min_ps(u2, u3));
  const float thr = _mm512_reduce_min_ps(u) + 2.f * ax.row_term(rn, level);
  if (!std::isfinite(thr)) return scan_exact(r, p, level);
  // pass 2: the candidates' indices, branch-free (compress-store), then their exact distances
  const __m512 tv = _mm512_set1_ps(thr);
  const __m512i step = _mm512_set1_epi32(16);
  __m512i idx = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  int64_t count = 0;
  for (int64_t v = 0; v < ax.Kp; v += 16) {
    const __m512 lo = _mm512_fmadd_ps(_mm512_loadu_ps(s + v), m2, _mm512_loadu_ps(nl + v));
    const __mmask16 m = _mm512_cmp_ps_mask(lo, tv, _CMP_LE_OQ);
    _mm512_mask_compressstoreu_epi32(cand + count, m, idx);
    count += __builtin_popcount(m);
    idx = _mm512_add_epi32(idx, step);
  }
  if (count == 1 && cand[0] < p.K) return cand[0];  // the exact winner is always a candidate
  int64_t best = -1;
  float best_e = 0.f;
  for (int64_t q = 0; q < count; ++q) {  // in increasing code order
    const int64_t j = cand[q];
    if (j >= p.K) break;
    const float e = sqdist_exact(r, p.row(level, j), p.D);
    if (best < 0 || better(e, j, best_e, best)) best_e = e, best = j;
  }
  return best >= 0 ? best : scan_exact(r, p, level);
}

// bf16 copy (round to nearest even, as amx::to_bf16) and norm of one fp32 row of length D.
FASTREC_AMX_TARGET float to_bf16_row(const float* src, int64_t D, uint16_t* dst) {
  __m512 sq = _mm512_setzero_ps();
  const __m512i bias = _mm512_set1_epi32(0x7fff), one = _mm512_set1_epi32(1);
  for (int64_t d = 0; d < D; d += 16) {
    const __mmask16 m = D - d >= 16 ? static_cast<__mmask16>(0xffff) : static_cast<__mmask16>((1u << (D - d)) - 1u);
    const __m512 v = _mm512_maskz_loadu_ps(m, src + d);
    sq = _mm512_fmadd_ps(v, v, sq);
    __m512i bits = _mm512_castps_si512(v);
    bits = _mm512_add_epi32(bits, _mm512_add_epi32(bias, _mm512_and_si512(_mm512_srli_epi32(bits, 16), one)));
    _mm256_mask_storeu_epi16(dst + d, m, _mm512_cvtepi32_epi16(_mm512_srli_epi32(bits, 16)));
  }
  return std::sqrt(_mm512_reduce_add_ps(sq));
}

// Nearest code of every row of one row block at one level, on the tile unit (see above).
void search_level_amx(RowBlock& blk, int64_t rows, const PackedCodebooks& p, const AmxCodebooks& ax,
                      int64_t level, AmxScratch& sc, int64_t* out) {
  const int64_t D = p.D, Dp = ax.Dp;
  for (int64_t r = 0; r < rows; ++r) sc.rn[r] = to_bf16_row(blk.resid.data() + r * D, D, sc.a.data() + r * Dp);
  const int64_t padded = round_up(rows, kAmxRows);
  std::fill(sc.a.begin() + rows * Dp, sc.a.begin() + padded * Dp, 0);
  for (int64_t r0 = 0; r0 < rows; r0 += kAmxRows) {
    amx_dots(sc.a.data() + r0 * Dp, ax, level, sc.s.data());
    for (int64_t r = r0; r < std::min(rows, r0 + kAmxRows); ++r)
      out[r] = pick_amx(sc.s.data() + (r - r0) * ax.Ks, blk.resid.data() + r * D, sc.rn[r], ax, p, level,
                        sc.cand.data());
  }
}
#pragma GCC diagnostic pop
#else
void search_level_amx(RowBlock&, int64_t, const PackedCodebooks&, const AmxCodebooks&, int64_t, AmxScratch&,
                      int64_t*) {}
#endif

// The AMX codebooks when the tile unit is usable for this call, else nullptr (the fp32 path).
std::unique_ptr<AmxCodebooks> amx_codebooks(const PackedCodebooks& p) {
  if (p.D == 0 || !amx::enabled()) return nullptr;
  return pack_amx(p);
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
  const std::unique_ptr<AmxCodebooks> ax = amx_codebooks(p);
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
    std::unique_ptr<AmxScratch> scratch;
    if (ax) {
      scratch = std::make_unique<AmxScratch>(*ax);
      amx::configure_tiles();
    }
#pragma omp for schedule(static)
    for (int64_t b = 0; b < blocks; ++b) {
      const int64_t n0 = b * kBlockRows, rows = std::min(kBlockRows, N - n0);
      if (!load_rows(blk, xp, n0, rows, D)) finite = false;
      std::fill(blk.quant.begin(), blk.quant.begin() + rows * D, 0.f);
      for (int64_t l = 0; l < p.levels; ++l) {
        if (ax) {
          search_level_amx(blk, rows, p, *ax, l, *scratch, level_codes.data());
        } else {
          search_level(blk, rows, p, l, kb, level_codes.data());
        }
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
    if (ax) amx::release_tiles();
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
