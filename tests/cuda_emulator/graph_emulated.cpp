// csrc/cuda/graph_kernels.cuh (the CUDA spmm / LightGCN kernels) compiled for the emulator, with a C entry
// point per launch that tests/test_graph_cuda_emulated.py calls through ctypes. Every buffer is copied
// against a PROT_NONE page (after its end, or before its start: `guard_after`), so any out-of-bounds access by
// the kernels faults.
#include "cuda_emulator.h"
// the emulator's definitions first: the kernels' header sees them as CUDA's
#include "cuda/graph_kernels.cuh"

namespace {

using fastrec::graph_kernels::kPlanFields;
using fastrec::graph_kernels::kWarp;
using fastrec::graph_kernels::kWarpsPerBlock;
using fastrec::graph_kernels::PassArgs;

using emu::Buffer;

template <typename index_t>
void partition(const void* indptr, int64_t rows, int64_t nnz, int64_t items, int64_t workers, int64_t* plan,
               bool after) {
  const Buffer ip(indptr, (rows + 1) * sizeof(index_t), after, sizeof(index_t));
  const Buffer out(plan, workers * kPlanFields * sizeof(int64_t), after, sizeof(int64_t));
  const unsigned threads = 128, grid = static_cast<unsigned>((workers + threads - 1) / threads);
  emu::launch(grid, threads, [&] {
    fastrec::graph_kernels::partition_kernel<index_t>(ip.get<index_t>(), rows, nnz, items, workers,
                                                       out.get<int64_t>());
  });
  out.write_back();
}

template <int V, typename index_t>
void pass(const void* indptr, const void* indices, const float* values, const int64_t* plan, int64_t workers,
          const float* x, int64_t rows, int64_t nnz, int64_t ncols, int64_t d, float* next, float* out,
          const float* x0, bool first, float w0, float w, float* carry, bool hint, bool after) {
  const size_t f = sizeof(float), vec = 16;
  const Buffer ip(indptr, (rows + 1) * sizeof(index_t), after, sizeof(index_t));
  const Buffer ix(indices, nnz * sizeof(index_t), after, sizeof(index_t));
  const Buffer vals(values, nnz * f, after, f);
  const Buffer pl(plan, workers * kPlanFields * sizeof(int64_t), after, sizeof(int64_t));
  const Buffer xb(x, ncols * d * f, after, vec);
  const Buffer nb(next, rows * d * f, after, vec), ob(out, rows * d * f, after, vec);
  const Buffer x0b(x0, rows * d * f, after, vec), cb(carry, workers * d * f, after, vec);
  PassArgs<index_t> a{ip.get<index_t>(), ix.get<index_t>(), vals.get<float>(), xb.get<float>(), rows, nnz, ncols, d,
                      nb.get<float>(), ob.get<float>(), x0b.get<float>(), first, w0, w, pl.get<int64_t>(),
                      cb.get<float>(), fastrec::graph_kernels::lanes_per_neighbour(V == 4 ? d / 4 : d)};
  const unsigned threads = kWarpsPerBlock * kWarp;
  const unsigned grid = static_cast<unsigned>((workers + kWarpsPerBlock - 1) / kWarpsPerBlock);
  if (hint) {
    emu::launch(grid, threads, [&] { fastrec::graph_kernels::spmm_carry_kernel<V, true, index_t>(a, workers); });
    emu::launch(grid, threads, [&] { fastrec::graph_kernels::spmm_owned_kernel<V, true, index_t>(a, workers); });
  } else {
    emu::launch(grid, threads, [&] { fastrec::graph_kernels::spmm_carry_kernel<V, false, index_t>(a, workers); });
    emu::launch(grid, threads, [&] { fastrec::graph_kernels::spmm_owned_kernel<V, false, index_t>(a, workers); });
  }
  nb.write_back();
  ob.write_back();
  cb.write_back();
}

}  // namespace

extern "C" {

void emu_partition(int index64, const void* indptr, int64_t rows, int64_t nnz, int64_t items, int64_t workers,
                   int64_t* plan, int guard_after) {
  if (index64) {
    partition<int64_t>(indptr, rows, nnz, items, workers, plan, guard_after);
  } else {
    partition<int32_t>(indptr, rows, nnz, items, workers, plan, guard_after);
  }
}

// One pass (carry kernel, then owner kernel) with V = `vec` floats a lane (4 or 1). Null next / out / x0
// as in graph.cu (spmm: out and x0 null).
void emu_pass(int index64, int vec, const void* indptr, const void* indices, const float* values,
              const int64_t* plan, int64_t workers, const float* x, int64_t rows, int64_t nnz, int64_t ncols,
              int64_t d, float* next, float* out, const float* x0, int first, float w0, float w, float* carry,
              int hint, int guard_after) {
  if (index64 && vec == 4) {
    pass<4, int64_t>(indptr, indices, values, plan, workers, x, rows, nnz, ncols, d, next, out, x0, first, w0, w,
                     carry, hint, guard_after);
  } else if (index64) {
    pass<1, int64_t>(indptr, indices, values, plan, workers, x, rows, nnz, ncols, d, next, out, x0, first, w0, w,
                     carry, hint, guard_after);
  } else if (vec == 4) {
    pass<4, int32_t>(indptr, indices, values, plan, workers, x, rows, nnz, ncols, d, next, out, x0, first, w0, w,
                     carry, hint, guard_after);
  } else {
    pass<1, int32_t>(indptr, indices, values, plan, workers, x, rows, nnz, ncols, d, next, out, x0, first, w0, w,
                     carry, hint, guard_after);
  }
}

}  // extern "C"
