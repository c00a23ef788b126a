// Device code of the CUDA trie constraint (trie_mask), kept apart from the ATen host code of
// csrc/cuda/trie.cu so that tests/cuda_emulator can compile this same kernel as host C++ and run it, block
// by block with emulated barriers, on a machine without a GPU (tests/test_trie_cuda_emulated.py).
// Nothing here may include ATen or CUDA runtime headers.
//
// One block per row (beam): thread 0 walks the beam's generated tokens down the CSR trie (the walk is
// shared with the CPU kernel, csrc/common/trie.h), the block fills the row with `fill`, synchronises, then
// scatters the allowed tokens' scores back. indptr is not checked on the host (that would sync): every
// edge range is clamped into [0, E] in the kernel, a child outside [0, S) ends the walk, and a token
// outside [0, V) is skipped.
#pragma once

#include <cstdint>

#include "common/trie.h"

namespace fastrec {
namespace trie_kernels {

constexpr int kThreads = 256;

template <typename scalar_t, typename id_t>
__global__ void trie_mask_kernel(const scalar_t* __restrict__ scores, const id_t* __restrict__ generated,
                                 const int64_t* __restrict__ indptr, const int64_t* __restrict__ tokens,
                                 const int64_t* __restrict__ children, int64_t V, int64_t G, int64_t S,
                                 int64_t E, scalar_t fill, scalar_t* __restrict__ out) {
  __shared__ int64_t node;
  const int64_t r = blockIdx.x;
  if (threadIdx.x == 0) node = trie_walk(generated + r * G, G, indptr, tokens, children, S, E);
  scalar_t* o = out + r * V;
  for (int64_t v = threadIdx.x; v < V; v += blockDim.x) o[v] = fill;
  __syncthreads();
  if (node < 0) return;
  const scalar_t* s = scores + r * V;
  int64_t lo, hi;
  trie_edges(indptr, node, E, &lo, &hi);
  for (int64_t e = lo + threadIdx.x; e < hi; e += blockDim.x) {
    const int64_t t = tokens[e];
    if (t >= 0 && t < V) o[t] = s[t];
  }
}

}  // namespace trie_kernels
}  // namespace fastrec
