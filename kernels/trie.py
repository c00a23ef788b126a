"""Triton kernel of the trie constraint (trie_mask).

One program per row (beam): the program walks the beam's generated tokens down the CSR trie with a
fixed-trip binary search per token (scalar loads), then writes the row in BLOCK_V slices: every vocabulary
slot looks itself up among the state's sorted edge tokens (a vectorised binary search) and keeps its score
when found, else takes `fill`. One pass, no barrier between a fill and a scatter.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from fastrec.kernels import device_guard
from fastrec.kernels import interpret as _interpret


@triton.jit
def _find(tokens_ptr, lo, hi, token, STEPS: tl.constexpr):
    """Lower bound of `token` in tokens[lo:hi) (sorted) with a fixed number of halvings; works on vectors."""
    for _ in tl.static_range(STEPS):
        active = lo < hi
        mid = lo + (hi - lo) // 2
        t = tl.load(tokens_ptr + mid, mask=active, other=0)
        go_right = active & (t < token)
        lo = tl.where(go_right, mid + 1, lo)
        hi = tl.where(active & (t >= token), mid, hi)
    return lo


@triton.jit
def _edges(indptr_ptr, node, E):
    """Edge range of `node` clamped into [0, E]: a malformed indptr (unchecked under validate=False or
    torch.compile) gives a shorter or empty range, never an out-of-bounds read."""
    lo = tl.minimum(tl.maximum(tl.load(indptr_ptr + node), 0), E)
    hi = tl.minimum(tl.maximum(tl.load(indptr_ptr + node + 1), lo), E)
    return lo, hi


@triton.jit
def trie_mask_kernel(scores_ptr, gen_ptr, indptr_ptr, tokens_ptr, children_ptr, out_ptr, V, G, S, E, fill,
                     STEPS: tl.constexpr, BLOCK_V: tl.constexpr):
    r = tl.program_id(0).to(tl.int64)
    node = tl.zeros([1], dtype=tl.int64)
    for i in range(0, G):
        tok = tl.load(gen_ptr + r * G + i + tl.zeros([1], dtype=tl.int64)).to(tl.int64)
        alive = node >= 0
        safe = tl.where(alive, node, 0)
        lo, hi = _edges(indptr_ptr, safe, E)
        pos = _find(tokens_ptr, lo, hi, tok, STEPS)
        inside = alive & (pos < hi)
        found = inside & (tl.load(tokens_ptr + pos, mask=inside, other=-1) == tok)
        nxt = tl.load(children_ptr + pos, mask=found, other=-1)
        node = tl.where(found & (nxt >= 0) & (nxt < S), nxt, -1)
    alive = node >= 0
    safe = tl.where(alive, node, 0)
    lo0, hi0 = _edges(indptr_ptr, safe, E)
    lo0 = tl.where(alive, lo0, 0)
    hi0 = tl.where(alive, hi0, 0)
    for v0 in range(0, V, BLOCK_V):
        vs = v0 + tl.arange(0, BLOCK_V).to(tl.int64)
        vmask = vs < V
        lo = lo0 + tl.zeros([BLOCK_V], dtype=tl.int64)
        hi = hi0 + tl.zeros([BLOCK_V], dtype=tl.int64)
        pos = _find(tokens_ptr, lo, hi, vs, STEPS)
        inside = pos < hi
        hit = inside & (tl.load(tokens_ptr + pos, mask=inside & vmask, other=-1) == vs)
        s = tl.load(scores_ptr + r * V + vs, mask=vmask & hit, other=0.0).to(tl.float32)
        out = tl.where(hit, s, fill).to(out_ptr.dtype.element_ty)
        tl.store(out_ptr + r * V + vs, out, mask=vmask)


def trie_mask(scores: torch.Tensor, generated: torch.Tensor, indptr: torch.Tensor, tokens: torch.Tensor,
              children: torch.Tensor, fill: float) -> torch.Tensor:
    """Triton trie constraint (arguments checked by fastrec.ops.trie_mask)."""
    scores = scores.contiguous()
    generated = generated.contiguous()
    out = torch.empty_like(scores)
    R, V = scores.shape
    if out.numel() == 0:
        return out
    steps = max(1, tokens.numel().bit_length())  # enough halvings for any node degree, without a host sync
    block_v = 4096 if _interpret() else 1024
    with device_guard(out):
        trie_mask_kernel[(R,)](scores, generated, indptr, tokens, children, out, V, generated.shape[1],
                               indptr.numel() - 1, tokens.numel(), fill, STEPS=steps, BLOCK_V=block_v)
    return out
