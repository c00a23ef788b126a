// Device-independent pieces of the semantic-fusion lookup (KIRec), shared by csrc/cpu and the Python
// backends' cost rule (fastrec/reference/fusion.py states the same rule).
#pragma once
#include <cstdint>

namespace fastrec {

enum FusionMode : int { kFuseAdd = 0, kFuseGate = 1, kFuseConcat = 2 };

// Reduce the whole catalogue (a dense [I, D] x [D, d] GEMM, no dedup) or only the unique ids looked up.
// Per-lookup work is N*D*d, whole-table work I*D*d: the table wins when I <= N (items are reused).
// strategy: 0 auto, 1 unique ids, 2 whole table.
inline bool use_table(int64_t strategy, int64_t num_items, int64_t num_lookups) {
  return strategy == 2 || (strategy == 0 && num_items <= num_lookups);
}

}  // namespace fastrec
