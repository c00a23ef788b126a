"""Vectorised uniform negative sampling that never returns a seen item."""

from __future__ import annotations

import torch

__all__ = ["sample_negatives"]


def _check_csr(indptr: torch.Tensor, indices: torch.Tensor, num_items: int) -> None:
    if indptr.dim() != 1 or indptr.numel() < 1:
        raise ValueError("seen_indptr must be a 1-D tensor with num_users + 1 entries")
    if indices.dim() != 1:
        raise ValueError("seen_indices must be a 1-D tensor")
    if int(indptr[0]) != 0 or int(indptr[-1]) != indices.numel() or bool((indptr[1:] < indptr[:-1]).any()):
        raise ValueError("seen_indptr must start at 0, be non-decreasing and end at len(seen_indices)")
    if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= num_items):
        raise ValueError(f"seen_indices must lie in [0, num_items={num_items})")


def _seen_keys(indptr: torch.Tensor, indices: torch.Tensor, num_items: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sorted unique keys ``user * num_items + item`` and the per-user count of distinct seen items."""
    rows = torch.repeat_interleave(torch.arange(indptr.numel() - 1), indptr[1:] - indptr[:-1])
    keys = rows * num_items + indices
    if keys.numel() > 1 and bool((keys[1:] <= keys[:-1]).any()):
        keys = torch.unique(keys)
    counts = torch.bincount(keys // num_items, minlength=indptr.numel() - 1)
    return keys, counts


def _is_seen(keys: torch.Tensor, users: torch.Tensor, cand: torch.Tensor, num_items: int) -> torch.Tensor:
    q = users * num_items + cand
    if keys.numel() == 0:
        return torch.zeros_like(q, dtype=torch.bool)
    pos = torch.searchsorted(keys, q).clamp(max=keys.numel() - 1)
    return keys[pos] == q


def _exact(
    keys: torch.Tensor,
    counts: torch.Tensor,
    indptr: torch.Tensor,
    users: torch.Tensor,
    num_items: int,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """Draw uniformly from each user's unseen items without rejection.

    With sorted seen items ``s_0 < s_1 < ...`` of a user, ``t_j = s_j - j`` counts the unseen items
    below ``s_j``; the ``r``-th unseen item is ``r + #{j : t_j <= r}``.
    """
    free = (num_items - counts[users]).to(torch.float64)
    r = (torch.rand(users.shape, generator=generator, dtype=torch.float64) * free).long()
    r = torch.minimum(r, (free - 1).long())
    rows = keys // num_items
    local = torch.arange(keys.numel()) - indptr[rows]
    t_keys = rows * (num_items + 1) + (keys % num_items) - local  # sorted: t is non-decreasing per row
    below = torch.searchsorted(t_keys, users * (num_items + 1) + r, right=True) - indptr[users]
    return r + below


def sample_negatives(
    user_ids: torch.Tensor,
    seen_indptr: torch.Tensor,
    seen_indices: torch.Tensor,
    num_items: int,
    num_neg: int = 1,
    generator: torch.Generator | None = None,
    max_retries: int = 8,
) -> torch.Tensor:
    """Uniform negatives for each user, never an item in the user's seen row.

    Draws ``num_neg`` items per user independently (with replacement across the ``num_neg``
    draws) uniformly from the items the user has not seen. Collisions are found with one
    ``searchsorted`` over sorted ``user * num_items + item`` keys and only they are redrawn, at most
    ``max_retries`` times; whatever still collides then (users who have seen almost every item) is
    drawn exactly from the complement, so the result is always valid.

    Args:
        user_ids: int64 ``[B]`` users in ``[0, len(seen_indptr) - 1)``.
        seen_indptr: int64 ``[U + 1]`` CSR row pointers (e.g. ``InteractionGraph.seen_indptr``).
        seen_indices: int64 item ids of each row (duplicates and any order within a row allowed).
        num_items: item universe size.
        num_neg: negatives per user (``>= 0``).
        generator: optional ``torch.Generator`` for reproducibility.
        max_retries: rejection rounds before the exact fallback.

    Returns:
        int64 ``[B, num_neg]``. ``B == 0`` or ``num_neg == 0`` gives an empty tensor.

    Raises:
        ValueError: bad arguments, or a user in ``user_ids`` has seen every item (names the user).
    """
    user_ids = torch.as_tensor(user_ids)
    if user_ids.dtype.is_floating_point or user_ids.dtype == torch.bool or user_ids.dim() != 1:
        raise ValueError(f"user_ids must be a 1-D integer tensor, got {user_ids.dtype} {tuple(user_ids.shape)}")
    if num_items <= 0:
        raise ValueError(f"num_items must be > 0, got {num_items}")
    if num_neg < 0:
        raise ValueError(f"num_neg must be >= 0, got {num_neg}")
    if max_retries < 0:
        raise ValueError(f"max_retries must be >= 0, got {max_retries}")
    seen_indptr = torch.as_tensor(seen_indptr, dtype=torch.int64)
    seen_indices = torch.as_tensor(seen_indices, dtype=torch.int64)
    _check_csr(seen_indptr, seen_indices, num_items)
    user_ids = user_ids.long()
    num_users = seen_indptr.numel() - 1
    if user_ids.numel() and (int(user_ids.min()) < 0 or int(user_ids.max()) >= num_users):
        raise ValueError(f"user_ids must lie in [0, {num_users})")
    if user_ids.numel() == 0 or num_neg == 0:
        return torch.empty((user_ids.numel(), num_neg), dtype=torch.int64)
    keys, counts = _seen_keys(seen_indptr, seen_indices, num_items)
    full = counts[user_ids] >= num_items
    if bool(full.any()):
        bad = int(user_ids[full][0])
        raise ValueError(f"user_ids: user {bad} has seen all {num_items} items, no negative exists")
    users = user_ids.repeat_interleave(num_neg)
    out = torch.randint(num_items, users.shape, generator=generator)
    todo = torch.nonzero(_is_seen(keys, users, out, num_items)).flatten()
    for _ in range(max_retries):
        if todo.numel() == 0:
            break
        out[todo] = torch.randint(num_items, todo.shape, generator=generator)
        todo = todo[_is_seen(keys, users[todo], out[todo], num_items)]
    if todo.numel():
        rows = keys // num_items
        local_indptr = torch.zeros(num_users + 1, dtype=torch.int64)
        torch.cumsum(torch.bincount(rows, minlength=num_users), 0, out=local_indptr[1:])
        out[todo] = _exact(keys, counts, local_indptr, users[todo], num_items, generator)
    return out.view(-1, num_neg)
