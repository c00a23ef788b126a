// Host-side argument checks of trie_mask shared by the CPU and CUDA entry points.
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

namespace fastrec {

inline void check_trie_mask_rows(const at::Tensor& scores, const at::Tensor& generated) {
  TORCH_CHECK_VALUE(scores.dim() == 2, "scores must be 2-D [rows, vocab]");
  TORCH_CHECK_VALUE(generated.dim() == 2 && generated.size(0) == scores.size(0),
                    "generated must be 2-D with one row per row of scores");
  TORCH_CHECK_VALUE(generated.scalar_type() == at::kLong || generated.scalar_type() == at::kInt,
                    "generated must be int32 or int64");
}

}  // namespace fastrec
