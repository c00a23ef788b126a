"""Reference trie constraint: walk each beam's generated tokens down the CSR trie, keep the allowed scores."""

from __future__ import annotations

import torch


def trie_mask(scores: torch.Tensor, generated: torch.Tensor, indptr: torch.Tensor, tokens: torch.Tensor,
              children: torch.Tensor, fill: float) -> torch.Tensor:
    """scores [R, V], generated [R, G] -> scores where the next token is allowed by the trie, else `fill`.

    Node 0 is the root; node s has edges [indptr[s], indptr[s+1]) reading tokens[e] and leading to
    children[e]. A token without an edge (or an edge to a missing node) leaves the trie: nothing is allowed.
    """
    out = torch.full_like(scores, fill)
    ptr, tok, child = indptr.tolist(), tokens.tolist(), children.tolist()
    num_nodes = len(ptr) - 1
    for r, row in enumerate(generated.tolist()):
        node = 0
        for t in row:
            edges = {tok[e]: child[e] for e in range(ptr[node], ptr[node + 1])}
            node = edges.get(t, -1)
            if not 0 <= node < num_nodes:
                node = -1
                break
        if node < 0:
            continue
        allowed = torch.tensor([t for t in tok[ptr[node]:ptr[node + 1]] if 0 <= t < scores.shape[1]],
                               dtype=torch.int64, device=scores.device)
        out[r, allowed] = scores[r, allowed]
    return out
