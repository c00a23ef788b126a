// CUDA host code of the trie constraint: trie_mask. The kernel (one block per beam) is in
// csrc/cuda/trie_kernels.cuh. Light ATen headers only.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cstdint>
#include <limits>

#include "common/trie_args.h"
#include "cuda/trie_kernels.cuh"

namespace fastrec {
namespace {

using namespace trie_kernels;

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
