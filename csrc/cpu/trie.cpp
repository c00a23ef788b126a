// CPU kernel of the trie constraint: trie_mask.
//
// Rows (beams) in parallel: walk the beam's generated tokens down the CSR trie (a handful of binary
// searches), fill the output row with `fill` (a vectorised store stream) and copy the scores of the
// allowed next tokens back in. The state is derived from the tokens on every call, so beam reordering,
// left padding and batching need no bookkeeping.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>

#include "common/trie.h"
#include "common/trie_args.h"

namespace fastrec {
namespace {

void check_trie(const at::Tensor& indptr, const at::Tensor& tokens, const at::Tensor& children) {
  TORCH_CHECK_VALUE(indptr.dim() == 1 && indptr.size(0) >= 2, "indptr must be 1-D with at least 2 entries");
  TORCH_CHECK_VALUE(tokens.dim() == 1 && children.dim() == 1 && tokens.size(0) == children.size(0),
                    "tokens and children must be 1-D of the same length");
  TORCH_CHECK_VALUE(indptr.scalar_type() == at::kLong && tokens.scalar_type() == at::kLong &&
                        children.scalar_type() == at::kLong,
                    "indptr, tokens and children must be int64");
  // O(nodes) and cheap next to one decoding step; it makes every edge range below lie inside `tokens`.
  const int64_t* p = indptr.data_ptr<int64_t>();
  const int64_t S = indptr.size(0) - 1;
  TORCH_CHECK_VALUE(p[0] == 0 && p[S] == tokens.size(0), "indptr must start at 0 and end at len(tokens)");
  for (int64_t s = 0; s < S; ++s) TORCH_CHECK_VALUE(p[s] <= p[s + 1], "indptr must be non-decreasing");
}

template <typename scalar_t, typename id_t>
void trie_mask_impl(const at::Tensor& scores, const at::Tensor& generated, const at::Tensor& indptr,
                    const at::Tensor& tokens, const at::Tensor& children, double fill, at::Tensor& out) {
  const int64_t R = scores.size(0), V = scores.size(1), G = generated.size(1), S = indptr.size(0) - 1;
  const int64_t E = tokens.size(0);
  const scalar_t* sp = scores.data_ptr<scalar_t>();
  const id_t* gp = generated.data_ptr<id_t>();
  const int64_t* ip = indptr.data_ptr<int64_t>();
  const int64_t* tp = tokens.data_ptr<int64_t>();
  const int64_t* cp = children.data_ptr<int64_t>();
  scalar_t* op = out.data_ptr<scalar_t>();
  const scalar_t f = static_cast<scalar_t>(fill);
  const int64_t grain = std::max<int64_t>(1, (1 << 16) / std::max<int64_t>(1, V));
  at::parallel_for(0, R, grain, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t node = trie_walk(gp + r * G, G, ip, tp, cp, S, E);
      scalar_t* o = op + r * V;
      std::fill(o, o + V, f);
      if (node < 0) continue;
      const scalar_t* s = sp + r * V;
      for (int64_t e = ip[node]; e < ip[node + 1]; ++e) {
        const int64_t t = tp[e];
        if (t >= 0 && t < V) o[t] = s[t];
      }
    }
  });
}

at::Tensor trie_mask_cpu(const at::Tensor& scores, const at::Tensor& generated, const at::Tensor& indptr,
                         const at::Tensor& tokens, const at::Tensor& children, double fill) {
  check_trie_mask_rows(scores, generated);
  check_trie(indptr, tokens, children);
  auto sc = scores.contiguous();
  auto gc = generated.contiguous();
  auto ic = indptr.contiguous(), tc = tokens.contiguous(), cc = children.contiguous();
  auto out = at::empty(sc.sizes(), sc.options());
  if (sc.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, sc.scalar_type(), "trie_mask", [&] {
    if (gc.scalar_type() == at::kLong)
      trie_mask_impl<scalar_t, int64_t>(sc, gc, ic, tc, cc, fill, out);
    else
      trie_mask_impl<scalar_t, int32_t>(sc, gc, ic, tc, cc, fill, out);
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastrec, CPU, m) { m.impl("trie_mask", &trie_mask_cpu); }

}  // namespace fastrec
