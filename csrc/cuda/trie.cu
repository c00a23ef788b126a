// CUDA kernel of the trie constraint: trie_mask. One block per row (beam): thread 0 walks the beam's
// generated tokens down the CSR trie (the walk is shared with the CPU kernel, csrc/common/trie.h), the
// block fills the row with `fill`, synchronises, then scatters the allowed tokens' scores back. indptr is
// not checked on the host here (that would sync): every edge range is clamped into [0, E] in the kernel.
// Light ATen headers only.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cstdint>
#include <limits>

#include "common/trie.h"
#include "common/trie_args.h"

namespace fastrec {
namespace {

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

at::Tensor trie_mask_cuda(const at::Tensor& scores, const at::Tensor& generated, const at::Tensor& indptr,
                          const at::Tensor& tokens, const at::Tensor& children, double fill) {
  check_trie_mask_rows(scores, generated);
  TORCH_CHECK_VALUE(indptr.dim() == 1 && indptr.size(0) >= 2 && tokens.size(0) == children.size(0),
                    "malformed trie (indptr, tokens, children)");
  TORCH_CHECK_VALUE(scores.size(0) < std::numeric_limits<int32_t>::max(), "too many rows for one launch");
  for (const at::Tensor* t : {&generated, &indptr, &tokens, &children})
    TORCH_CHECK_VALUE(t->device() == scores.device(), "generated, indptr, tokens and children must be on ",
                      scores.device());
  TORCH_CHECK_VALUE(indptr.scalar_type() == at::kLong && tokens.scalar_type() == at::kLong &&
                        children.scalar_type() == at::kLong,
                    "indptr, tokens and children must be int64");
  auto sc = scores.contiguous();
  auto gc = generated.contiguous();
  auto ic = indptr.contiguous(), tc = tokens.contiguous(), cc = children.contiguous();
  auto out = at::empty(sc.sizes(), sc.options());
  if (sc.numel() == 0) return out;
  const c10::cuda::CUDAGuard guard(sc.device());
  auto stream = c10::cuda::getCurrentCUDAStream();
  const int64_t R = sc.size(0), V = sc.size(1), G = gc.size(1), S = ic.size(0) - 1, E = tc.size(0);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, sc.scalar_type(), "trie_mask_cuda", [&] {
    const scalar_t f = static_cast<scalar_t>(fill);
    if (gc.scalar_type() == at::kLong) {
      trie_mask_kernel<scalar_t, int64_t><<<R, kThreads, 0, stream>>>(
          sc.data_ptr<scalar_t>(), gc.data_ptr<int64_t>(), ic.data_ptr<int64_t>(), tc.data_ptr<int64_t>(),
          cc.data_ptr<int64_t>(), V, G, S, E, f, out.data_ptr<scalar_t>());
    } else {
      trie_mask_kernel<scalar_t, int32_t><<<R, kThreads, 0, stream>>>(
          sc.data_ptr<scalar_t>(), gc.data_ptr<int32_t>(), ic.data_ptr<int64_t>(), tc.data_ptr<int64_t>(),
          cc.data_ptr<int64_t>(), V, G, S, E, f, out.data_ptr<scalar_t>());
    }
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastrec, CUDA, m) { m.impl("trie_mask", &trie_mask_cuda); }

}  // namespace fastrec
