// Vector types and the register-tiled GEMM micro-kernel shared by the CPU kernels.
//
// GCC vector extensions: 16-float vectors that the compiler lowers to AVX-512 (one register) or AVX2
// (two) depending on -march, with no intrinsics in the kernels themselves.
#pragma once
#include <cstdint>

namespace fastrec::simd {

constexpr int kLanes = 16;              // floats per vector
constexpr int kTileRows = 8;            // rows per micro-tile
constexpr int kTileCols = 2 * kLanes;   // columns per micro-tile (two vectors)

typedef float vf __attribute__((vector_size(kLanes * sizeof(float))));
typedef int32_t vi __attribute__((vector_size(kLanes * sizeof(int32_t))));
typedef float vf_unaligned __attribute__((vector_size(kLanes * sizeof(float)), aligned(4)));

inline vf load(const float* p) { return *reinterpret_cast<const vf_unaligned*>(p); }
inline void store(float* p, vf v) { *reinterpret_cast<vf_unaligned*>(p) = v; }
inline int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

// acc0[r], acc1[r] = row(r) . c[:, 0:16], c[:, 16:32] for 8 rows of length D against a 32-column slice of
// a transposed matrix c (row d at c + d * stride). `row(r)` returns the r-th row's pointer: contiguous rows
// (x + r * D) or gathered ones (ptrs[r], the gather fused into the GEMM). 16 accumulators stay in
// registers; each step is 2 vector loads, 8 broadcasts and 16 FMAs.
template <typename Row>
inline void tile_8x32_rows(Row row, int64_t D, const float* c, int64_t stride, vf* acc0, vf* acc1) {
  for (int r = 0; r < kTileRows; ++r) acc0[r] = acc1[r] = vf{};
  for (int64_t d = 0; d < D; ++d) {
    const vf c0 = load(c + d * stride);
    const vf c1 = load(c + d * stride + kLanes);
#pragma GCC unroll 8
    for (int r = 0; r < kTileRows; ++r) {
      const float xv = row(r)[d];
      acc0[r] += xv * c0;
      acc1[r] += xv * c1;
    }
  }
}

// The contiguous case: 8 rows of x, row-major, D wide.
inline void tile_8x32(const float* x, int64_t D, const float* c, int64_t stride, vf* acc0, vf* acc1) {
  tile_8x32_rows([x, D](int r) { return x + r * D; }, D, c, stride, acc0, acc1);
}

}  // namespace fastrec::simd
