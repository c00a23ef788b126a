"""Trie-constrained decoding: the allowed-token mask of every beam in one op.

    masked = fastrec.ops.trie_mask(scores, generated, indptr, tokens, children)

`scores` [R, V] are next-token scores of R beams, `generated` [R, G] the tokens each beam generated so
far, and (indptr, tokens, children) the trie in CSR form (build one with `build_trie`). Each beam's
state is derived from its own tokens on every call, so the op is right under beam reordering, left
padding and any batch size. Disallowed tokens get `fill` (-inf by default).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from fastrec import reference
from fastrec.ops import _checks
from fastrec.ops._library import HAS_TRITON, define


def _triton():
    if not HAS_TRITON:
        return None
    from fastrec.kernels import trie as kernels

    return kernels.trie_mask


define("trie_mask", "(Tensor scores, Tensor generated, Tensor indptr, Tensor tokens, Tensor children, "
       "float fill) -> Tensor", reference.trie_mask, _triton())


@torch.library.register_fake("fastrec::trie_mask")
def _(scores, generated, indptr, tokens, children, fill):
    return torch.empty_like(scores, memory_format=torch.contiguous_format)


# The mask is piecewise constant in the scores: the gradient passes where a token is allowed, 0 elsewhere,
# which is the same op applied to the incoming gradient with fill 0.
def _setup(ctx, inputs, output):
    _, generated, indptr, tokens, children, _ = inputs
    ctx.save_for_backward(generated, indptr, tokens, children)


def _backward(ctx, grad):
    generated, indptr, tokens, children = ctx.saved_tensors
    return torch.ops.fastrec.trie_mask(grad, generated, indptr, tokens, children, 0.0), None, None, None, None, None


torch.library.register_autograd("fastrec::trie_mask", _backward, setup_context=_setup)


def check_trie(indptr: torch.Tensor, tokens: torch.Tensor, children: torch.Tensor,
               vocab_size: int | None = None) -> None:
    """Validate a CSR trie: int64, indptr from 0 to len(tokens) non-decreasing, children in range, tokens
    sorted and unique within each node and inside [0, vocab_size)."""
    _checks.tensor("indptr", indptr, 1, (torch.int64,))
    _checks.tensor("tokens", tokens, 1, (torch.int64,))
    _checks.tensor("children", children, 1, (torch.int64,))
    _checks.same_device(indptr=indptr, tokens=tokens, children=children)
    if indptr.numel() < 2:
        raise ValueError("indptr must have at least 2 entries (the root node)")
    if tokens.numel() != children.numel():
        raise ValueError(f"tokens has {tokens.numel()} edges but children has {children.numel()}")
    if not _checks.can_read(indptr):  # torch.compile or CUDA-graph capture: the kernels clamp the ranges
        return
    num_nodes = indptr.numel() - 1
    if int(indptr[0]) != 0 or int(indptr[-1]) != tokens.numel():
        raise ValueError("indptr must start at 0 and end at len(tokens)")
    if bool((indptr[1:] < indptr[:-1]).any()):
        raise ValueError("indptr must be non-decreasing")
    if tokens.numel() == 0:
        return
    if bool((children < 0).any()) or bool((children >= num_nodes).any()):
        raise IndexError(f"children must lie in [0, {num_nodes})")
    if bool((tokens < 0).any()) or (vocab_size is not None and bool((tokens >= vocab_size).any())):
        raise IndexError(f"tokens must lie in [0, {vocab_size})")
    node_of_edge = torch.repeat_interleave(torch.arange(num_nodes, device=indptr.device), indptr.diff())
    same_node = node_of_edge[1:] == node_of_edge[:-1]
    if bool((same_node & (tokens[1:] <= tokens[:-1])).any()):
        raise ValueError("tokens must be sorted and unique within each node")


def trie_mask(scores: torch.Tensor, generated: torch.Tensor, indptr: torch.Tensor, tokens: torch.Tensor,
              children: torch.Tensor, fill: float = float("-inf"), validate: bool = True) -> torch.Tensor:
    """Next-token scores of every beam with the tokens the trie does not allow set to `fill`.

    scores [R, V] (fp32/fp16/bf16), generated [R, G] int32/int64 (G may be 0: every beam at the root).
    A beam whose tokens left the trie allows nothing. `validate=False` skips the O(trie) structure check
    (and its host syncs): only for a trie already checked once by `check_trie` against this vocabulary.
    """
    _checks.tensor("scores", scores, 2, _checks.FLOAT_DTYPES)
    _checks.tensor("generated", generated, 2, _checks.INDEX_DTYPES)
    if generated.shape[0] != scores.shape[0]:
        raise ValueError(f"generated has {generated.shape[0]} rows but scores has {scores.shape[0]}")
    _checks.same_device(scores=scores, generated=generated, indptr=indptr, tokens=tokens, children=children)
    if validate:
        check_trie(indptr, tokens, children, scores.shape[1])
    return torch.ops.fastrec.trie_mask(scores, generated, indptr, tokens, children, float(fill))


def build_trie(sequences: Sequence[Sequence[int]], end_tokens: Sequence[int] = (), pad_tokens: Sequence[int] = (),
               device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """CSR trie of token sequences: (indptr, tokens, children), node 0 the root.

    A node where a sequence ends gets an edge for every token in `end_tokens` (EOS) to one shared end
    node, which loops to itself on `end_tokens` and `pad_tokens`: after an item is complete only EOS may
    follow, and a finished row may go on with EOS/pad for as many steps as generation runs. Duplicate
    sequences share one path. End and pad tokens may not appear inside a sequence.
    """
    edges: list[dict[int, int]] = [{}]
    ends: set[int] = set()
    for seq in sequences:
        node = 0
        for t in seq:
            t = int(t)
            if t < 0:
                raise ValueError(f"sequences contain a negative token id {t}")
            nxt = edges[node].get(t)
            if nxt is None:
                nxt = edges[node][t] = len(edges)
                edges.append({})
            node = nxt
        ends.add(node)
    end_tokens = sorted({int(t) for t in end_tokens})
    loop_tokens = sorted(set(end_tokens) | {int(t) for t in pad_tokens})
    used = {t for e in edges for t in e}
    for t in loop_tokens:
        if t in used:
            raise ValueError(f"end/pad token {t} is also an index token")
    if end_tokens:
        end = len(edges)
        edges.append({t: end for t in loop_tokens})
        for node in ends:
            edges[node].update({t: end for t in end_tokens})
    counts = torch.tensor([len(e) for e in edges], dtype=torch.int64)
    indptr = torch.zeros(len(edges) + 1, dtype=torch.int64)
    indptr[1:] = counts.cumsum(0)
    flat = [(t, c) for e in edges for t, c in sorted(e.items())]
    tokens = torch.tensor([t for t, _ in flat], dtype=torch.int64).reshape(-1)
    children = torch.tensor([c for _, c in flat], dtype=torch.int64).reshape(-1)
    return indptr.to(device), tokens.to(device), children.to(device)
