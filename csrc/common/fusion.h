// Device-independent pieces of the semantic-fusion lookup (KIRec), shared by csrc/cpu and the Python
// backends' cost rule (fastrec/reference/fusion.py states the same rule).
#pragma once
#include <cstdint>

namespace fastrec {

enum FusionMode : int { kFuseAdd = 0, kFuseGate = 1, kFuseConcat = 2 };

// Reduce the whole catalogue or only the U unique ids looked up. Per-lookup reduction (the eager way)
// costs N*D*d, per-unique U*D*d <= that, the whole table I*D*d. When the batch touches nearly the whole
// catalogue (U >= 7/8 I: many lookups into a small catalogue) the table costs at most 1/7 more and is the
// reusable reduced table (rows = 0..I-1, no inverse indirection); otherwise (few lookups into a huge
// catalogue) only the unique rows are reduced. strategy: 0 auto, 1 unique ids, 2 whole table.
inline bool use_table(int64_t strategy, int64_t num_items, int64_t num_unique) {
  return strategy == 2 || (strategy == 0 && 8 * num_unique >= 7 * num_items);
}

}  // namespace fastrec
