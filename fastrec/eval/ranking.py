"""Full-ranking evaluation: every item is ranked for every user (seen items excluded) with the fused
``fastrec.ops.topk_scores``, then HR / NDCG / Recall / MRR are computed on the top-K lists."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .metrics import Targets, evaluate_topk

__all__ = ["full_ranking", "select_rows"]


def select_rows(indptr: torch.Tensor, indices: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows ``rows`` of a CSR ``(indptr, indices)`` as a new CSR (vectorised gather)."""
    rows = rows.long()
    starts, counts = indptr[rows].long(), (indptr[rows + 1] - indptr[rows]).long()
    new_indptr = torch.zeros(rows.numel() + 1, dtype=torch.int64, device=indptr.device)
    torch.cumsum(counts, 0, out=new_indptr[1:])
    total = int(new_indptr[-1])
    seg = torch.repeat_interleave(torch.arange(rows.numel(), device=indptr.device), counts)
    offsets = torch.arange(total, device=indptr.device) - new_indptr[:-1][seg]
    return new_indptr, indices[starts[seg] + offsets]


def full_ranking(
    user_vectors: torch.Tensor,
    item_vectors: torch.Tensor,
    seen: tuple[torch.Tensor, torch.Tensor] | None,
    targets: Targets,
    ks: Sequence[int] = (10, 20),
    users: torch.Tensor | None = None,
    metrics: Sequence[str] = ("HR", "NDCG"),
) -> dict[str, float]:
    """Rank all items for each user by inner product, excluding seen items, and score the top ``max(ks)``.

    Args:
        user_vectors: ``[U, d]`` user vectors.
        item_vectors: ``[I, d]`` item vectors.
        seen: CSR ``(indptr [U+1], indices)`` of items to exclude per user (rows aligned with
            ``user_vectors``), or None.
        targets: the held-out item per evaluated user (int64 ``[Ue]``) or a CSR of target sets.
        ks: cut-offs.
        users: int64 ``[Ue]`` rows of ``user_vectors`` (and ``seen``) to evaluate; default all rows.
        metrics: names among HR, NDCG, Recall, MRR.

    Returns:
        ``{"HR@10": ..., "HR@20": ..., "NDCG@10": ..., ...}`` (floats).
    """
    from fastrec.ops import topk_scores

    if isinstance(ks, int) or not len(ks):
        raise ValueError(f"ks must be a non-empty sequence of ints, got {ks!r}")
    if users is not None:
        users = torch.as_tensor(users, dtype=torch.int64)
        if users.numel() and (int(users.min()) < 0 or int(users.max()) >= user_vectors.shape[0]):
            raise IndexError(f"users must lie in [0, {user_vectors.shape[0]})")
        queries = user_vectors[users]
        if seen is not None:
            seen = select_rows(seen[0], seen[1], users)
    else:
        queries = user_vectors
    k = max(ks)
    if k > item_vectors.shape[0]:
        raise ValueError(f"max(ks)={k} exceeds the item count {item_vectors.shape[0]}")
    with torch.no_grad():
        _, ids = topk_scores(queries.detach(), item_vectors.detach(), k, seen)
    return evaluate_topk(ids, targets, ks, metrics)
