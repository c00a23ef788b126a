// Device-independent pieces of the trie-constraint kernels (trie_mask), shared by csrc/cpu and csrc/cuda.
//
// The trie is an automaton in CSR form: node s has the outgoing edges [indptr[s], indptr[s + 1]), edge e
// reads token tokens[e] (sorted ascending within a node) and leads to node children[e]. Node 0 is the
// root. A beam's state is found by walking its generated tokens from the root; a token without an edge
// leads to the dead state (-1), which allows nothing.
#pragma once
#include <cstdint>

#include "common/macros.h"

namespace fastrec {

// Edge range [lo, hi) of `node`, clamped into [0, num_edges]: a malformed indptr (unchecked under
// validate=False, torch.compile or CUDA-graph capture) gives a shorter or empty range, never an
// out-of-bounds read. `node` must lie in [0, num_nodes), which trie_walk guarantees.
FASTREC_HD void trie_edges(const int64_t* indptr, int64_t node, int64_t num_edges, int64_t* lo, int64_t* hi) {
  int64_t a = indptr[node], b = indptr[node + 1];
  a = a < 0 ? 0 : (a > num_edges ? num_edges : a);
  b = b < a ? a : (b > num_edges ? num_edges : b);
  *lo = a;
  *hi = b;
}

// Edge of `node` that reads `token`, or -1. Binary search over the node's sorted tokens.
template <typename TokT>
FASTREC_HD int64_t trie_find_edge(const int64_t* indptr, const TokT* tokens, int64_t node, int64_t token,
                                  int64_t num_edges) {
  int64_t lo, hi;
  trie_edges(indptr, node, num_edges, &lo, &hi);
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo) / 2;
    const int64_t t = static_cast<int64_t>(tokens[mid]);
    if (t == token) return mid;
    if (t < token) lo = mid + 1; else hi = mid;
  }
  return -1;
}

// State after reading `len` tokens of one beam (stride 1) from the root; -1 when it left the trie.
// Child ids outside [0, num_nodes) (negative ones too) also give -1, so a malformed trie cannot make a kernel read out of bounds.
template <typename IdT>
FASTREC_HD int64_t trie_walk(const IdT* seq, int64_t len, const int64_t* indptr, const int64_t* tokens,
                             const int64_t* children, int64_t num_nodes, int64_t num_edges) {
  int64_t node = 0;
  for (int64_t i = 0; i < len && node >= 0; ++i) {
    const int64_t e = trie_find_edge(indptr, tokens, node, static_cast<int64_t>(seq[i]), num_edges);
    node = e < 0 ? -1 : children[e];
    if (node >= num_nodes) node = -1;
  }
  return node;
}

}  // namespace fastrec
