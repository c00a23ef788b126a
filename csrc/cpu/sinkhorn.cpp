// CPU kernel of LC-Rec's uniform semantic mapping: sinkhorn_assign.
//
// LC-Rec rescales the distances to [-1, 1], forms Q = exp(-d / epsilon) and alternately normalises its
// rows and columns in float64, then takes the argmax of each row. Q is always diag(u) E diag(v), and the
// argmax of a row does not depend on u, so the kernel keeps only the scaling vectors: one pass per
// iteration over E computes the row sums with the current v, the new u, and accumulates the column sums
// for the next v. E is stored (float64) when it fits in a memory budget and recomputed row by row
// otherwise, so any number of rows works in bounded memory. Each row of E is shifted by its minimum
// distance before exp (absorbed into u), so nothing overflows even for tiny epsilon.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <omp.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace fastrec {
namespace {

constexpr int64_t kStoreBytes = 256LL << 20;  // keep E in memory up to this size

template <typename scalar_t>
at::Tensor sinkhorn_impl(const at::Tensor& dist, double epsilon, int64_t iters) {
  const int64_t N = dist.size(0), K = dist.size(1);
  auto codes = at::empty({N}, dist.options().dtype(at::kLong));
  if (N == 0) return codes;
  const scalar_t* d = dist.data_ptr<scalar_t>();
  // global rescaling to [-1, 1] as in LC-Rec (center_distance_for_constraint)
  double lo = std::numeric_limits<double>::infinity(), hi = -lo;
  bool finite = true;
  for (int64_t i = 0; i < N * K; ++i) {
    const double v = static_cast<double>(d[i]);
    finite &= std::isfinite(v);
    lo = std::min(lo, v);
    hi = std::max(hi, v);
  }
  TORCH_CHECK_VALUE(finite, "distances contains NaN or Inf");
  const double middle = (hi + lo) / 2, amplitude = hi - middle + 1e-5;
  const double scale = 1.0 / (amplitude * epsilon);
  const bool store = N * K * (int64_t)sizeof(double) <= kStoreBytes;
  std::vector<double> E(store ? N * K : 0);
  // row i of E into out: exp(-(d_ik - min_k d_ik) * scale)
  auto fill_row = [&](int64_t i, double* out) {
    const scalar_t* row = d + i * K;
    double m = std::numeric_limits<double>::infinity();
    for (int64_t k = 0; k < K; ++k) m = std::min(m, static_cast<double>(row[k]));
    for (int64_t k = 0; k < K; ++k) out[k] = std::exp(-(static_cast<double>(row[k]) - m) * scale);
  };
  if (store) at::parallel_for(0, N, 64, [&](int64_t a, int64_t b) {
      for (int64_t i = a; i < b; ++i) fill_row(i, E.data() + i * K);
    });
  std::vector<double> v(K, 1.0);
  // small problems (collision groups) run on one thread: a parallel region per iteration costs more
  const int threads = N * K < (1 << 16) ? 1 : at::get_num_threads();
  std::vector<double> partial(static_cast<size_t>(threads) * K);
  for (int64_t it = 0; it < iters; ++it) {
    std::fill(partial.begin(), partial.end(), 0.0);
#pragma omp parallel num_threads(threads)
    {
      const int t = omp_get_thread_num();
      double* col = partial.data() + static_cast<int64_t>(t) * K;
      std::vector<double> buf(store ? 0 : K);
#pragma omp for schedule(static)
      for (int64_t i = 0; i < N; ++i) {
        const double* e = store ? E.data() + i * K : buf.data();
        if (!store) fill_row(i, buf.data());
        double r = 0;
#pragma omp simd reduction(+ : r)
        for (int64_t k = 0; k < K; ++k) r += e[k] * v[k];
        const double u = 1.0 / (static_cast<double>(N) * r);
#pragma omp simd
        for (int64_t k = 0; k < K; ++k) col[k] += u * e[k];
      }
    }
    for (int64_t k = 0; k < K; ++k) {  // reduce the per-thread column sums in thread order: deterministic
      double c = 0;
      for (int t = 0; t < threads; ++t) c += partial[static_cast<int64_t>(t) * K + k];
      v[k] = 1.0 / (static_cast<double>(K) * c);
      if (!std::isfinite(v[k])) v[k] = 0.0;  // a column no row can reach: never chosen
    }
  }
  int64_t* cp = codes.data_ptr<int64_t>();
  at::parallel_for(0, N, 64, [&](int64_t a, int64_t b) {
    std::vector<double> buf(store ? 0 : K);
    for (int64_t i = a; i < b; ++i) {
      const double* e = store ? E.data() + i * K : buf.data();
      if (!store) fill_row(i, buf.data());
      int64_t best = 0;
      double bv = e[0] * v[0];
      for (int64_t k = 1; k < K; ++k)
        if (e[k] * v[k] > bv) {
          bv = e[k] * v[k];
          best = k;
        }
      cp[i] = best;
    }
  });
  return codes;
}

at::Tensor sinkhorn_assign_cpu(const at::Tensor& distances, double epsilon, int64_t iters) {
  TORCH_CHECK_VALUE(distances.dim() == 2, "distances must be 2-D [N, K]");
  TORCH_CHECK_VALUE(distances.size(1) > 0, "distances has no codes (K = 0)");
  TORCH_CHECK_VALUE(epsilon > 0 && std::isfinite(epsilon), "epsilon must be a positive number");
  TORCH_CHECK_VALUE(iters >= 0, "iters must be >= 0");
  auto dc = distances.contiguous();
  return AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dc.scalar_type(), "sinkhorn_assign", [&] {
    return sinkhorn_impl<scalar_t>(dc, epsilon, iters);
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(fastrec, CPU, m) { m.impl("sinkhorn_assign", &sinkhorn_assign_cpu); }

}  // namespace fastrec
