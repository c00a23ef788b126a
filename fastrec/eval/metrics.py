"""Ranking and classification metrics in torch, vectorised (no per-user or per-sample Python loop).

Top-K metrics take ``topk_ids [U, W]`` (item ids ranked best first, rows assumed free of duplicates)
and the targets either as one item per user (``int64 [U]``, the leave-one-out case) or as a CSR
``(indptr [U+1], indices)`` of target sets. They use the first ``k`` columns (``k`` defaults to ``W``).

Definitions per user, with ``rel_j`` = 1 when the ``j``-th ranked id (0-based) is a target and
``T`` the number of distinct targets:

- ``HR@k``     = 1 if any ``rel_j`` in the top ``k``;
- ``Recall@k`` = ``sum_j rel_j / T`` (equals HR@k for a single target);
- ``NDCG@k``   = ``sum_j rel_j / log2(j + 2)`` divided by the ideal ``sum_{j < min(T, k)} 1 / log2(j + 2)``;
- ``MRR@k``    = ``1 / (j + 1)`` for the first relevant ``j`` in the top ``k``, else 0.

``reduction="mean"`` (default) returns a 0-dim float64 tensor: the mean over users having at least one
target (users with an empty CSR row are skipped); with no such user (including ``U == 0``) it is NaN.
``reduction="none"`` returns the float64 ``[U]`` per-user values, NaN for users without a target.

Bad input raises ``ValueError`` naming the argument: non-tensor or wrong rank/dtype, shape mismatch,
``k <= 0`` or ``k > W``, negative ids, a malformed CSR, labels other than 0/1, NaN scores.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import torch

__all__ = ["hit_rate", "recall", "ndcg", "mrr", "auc", "uauc", "evaluate_topk", "Targets"]

Targets = torch.Tensor | tuple[torch.Tensor, torch.Tensor]
_NAMES = {"HR": "hit_rate", "RECALL": "recall", "NDCG": "ndcg", "MRR": "mrr"}


# ----------------------------------------------------------------------------- validation


def _int_tensor(x: object, arg: str, dim: int) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{arg} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype.is_floating_point or x.dtype.is_complex or x.dtype == torch.bool:
        raise ValueError(f"{arg} must have an integer dtype, got {x.dtype}")
    if x.dim() != dim:
        raise ValueError(f"{arg} must be {dim}-D, got shape {tuple(x.shape)}")
    if x.numel() and int(x.min()) < 0:
        raise ValueError(f"{arg} must not contain negative ids")
    return x.long()


def _check_k(k: int | None, width: int) -> int:
    if k is None:
        k = width
    if isinstance(k, bool) or not isinstance(k, int):
        raise ValueError(f"k must be an int, got {type(k).__name__}")
    if k <= 0 or k > width:
        raise ValueError(f"k must satisfy 0 < k <= topk_ids.shape[1]={width}, got {k}")
    return k


def _check_targets(targets: Targets, num_users: int) -> Targets:
    if isinstance(targets, torch.Tensor):
        t = _int_tensor(targets, "targets", 1)
        if t.numel() != num_users:
            raise ValueError(f"targets must have topk_ids.shape[0]={num_users} entries, got {t.numel()}")
        return t
    if not isinstance(targets, (tuple, list)) or len(targets) != 2:
        raise ValueError("targets must be a tensor [U] or a CSR tuple (indptr [U+1], indices)")
    indptr = _int_tensor(targets[0], "targets indptr", 1)
    indices = _int_tensor(targets[1], "targets indices", 1)
    if indptr.numel() != num_users + 1:
        raise ValueError(f"targets indptr must have U+1={num_users + 1} entries, got {indptr.numel()}")
    if int(indptr[0]) != 0 or int(indptr[-1]) != indices.numel() or bool((indptr[1:] < indptr[:-1]).any()):
        raise ValueError("targets indptr must start at 0, be non-decreasing and end at len(indices)")
    return indptr, indices


def _check_reduction(reduction: str) -> None:
    if reduction not in ("mean", "none"):
        raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")


# ----------------------------------------------------------------------------- top-K core


def _relevance(topk: torch.Tensor, targets: Targets) -> tuple[torch.Tensor, torch.Tensor]:
    """``rel [U, W]`` bool and the number of distinct targets per user ``[U]`` (int64)."""
    num_users = topk.shape[0]
    if isinstance(targets, torch.Tensor):
        return topk == targets[:, None], torch.ones(num_users, dtype=torch.int64)
    indptr, indices = targets
    big = max(int(topk.max()) if topk.numel() else 0, int(indices.max()) if indices.numel() else 0) + 1
    rows = torch.repeat_interleave(torch.arange(num_users), indptr[1:] - indptr[:-1])
    keys = torch.unique(rows * big + indices)  # sorted, de-duplicated
    count = torch.bincount(keys // big, minlength=num_users)
    query = torch.arange(num_users)[:, None] * big + topk
    if keys.numel() == 0:
        return torch.zeros_like(topk, dtype=torch.bool), count
    pos = torch.searchsorted(keys, query.reshape(-1)).clamp(max=keys.numel() - 1).view_as(query)
    return keys[pos] == query, count


def _prepare(topk_ids: torch.Tensor, targets: Targets, k: int | None) -> tuple[torch.Tensor, torch.Tensor, int]:
    topk = _int_tensor(topk_ids, "topk_ids", 2)
    k = _check_k(k, topk.shape[1])
    targets = _check_targets(targets, topk.shape[0])
    rel, count = _relevance(topk[:, :k], targets)
    return rel, count, k


def _reduce(values: torch.Tensor, count: torch.Tensor, reduction: str) -> torch.Tensor:
    values = torch.where(count > 0, values, torch.full_like(values, math.nan))
    if reduction == "none":
        return values
    valid = values[count > 0]
    return valid.mean() if valid.numel() else torch.tensor(math.nan, dtype=torch.float64)


def _discounts(k: int) -> torch.Tensor:
    return 1.0 / torch.log2(torch.arange(k, dtype=torch.float64) + 2.0)


def _hr(rel: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    return rel.any(dim=1).to(torch.float64)


def _recall(rel: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    return rel.sum(dim=1).to(torch.float64) / count.clamp(min=1)


def _ndcg(rel: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    disc = _discounts(rel.shape[1])
    dcg = (rel.to(torch.float64) * disc).sum(dim=1)
    ideal = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(disc, 0)])
    idcg = ideal[count.clamp(max=rel.shape[1])]
    return dcg / idcg.clamp(min=1e-12)


def _mrr(rel: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    first = torch.argmax(rel.to(torch.int8), dim=1).to(torch.float64)
    return torch.where(rel.any(dim=1), 1.0 / (first + 1.0), torch.zeros_like(first))


_CORE = {"hit_rate": _hr, "recall": _recall, "ndcg": _ndcg, "mrr": _mrr}


def hit_rate(topk_ids: torch.Tensor, targets: Targets, k: int | None = None, reduction: str = "mean") -> torch.Tensor:
    """HR@k: fraction of users with a target among their top ``k`` ids (see the module docstring)."""
    _check_reduction(reduction)
    rel, count, _ = _prepare(topk_ids, targets, k)
    return _reduce(_hr(rel, count), count, reduction)


def recall(topk_ids: torch.Tensor, targets: Targets, k: int | None = None, reduction: str = "mean") -> torch.Tensor:
    """Recall@k: found targets in the top ``k`` over the number of distinct targets, averaged over users."""
    _check_reduction(reduction)
    rel, count, _ = _prepare(topk_ids, targets, k)
    return _reduce(_recall(rel, count), count, reduction)


def ndcg(topk_ids: torch.Tensor, targets: Targets, k: int | None = None, reduction: str = "mean") -> torch.Tensor:
    """NDCG@k with binary relevance and ``log2(rank + 1)`` discount, ideal DCG over ``min(T, k)`` targets."""
    _check_reduction(reduction)
    rel, count, _ = _prepare(topk_ids, targets, k)
    return _reduce(_ndcg(rel, count), count, reduction)


def mrr(topk_ids: torch.Tensor, targets: Targets, k: int | None = None, reduction: str = "mean") -> torch.Tensor:
    """MRR@k: reciprocal 1-based rank of the first target in the top ``k`` (0 when none), averaged."""
    _check_reduction(reduction)
    rel, count, _ = _prepare(topk_ids, targets, k)
    return _reduce(_mrr(rel, count), count, reduction)


def evaluate_topk(
    topk_ids: torch.Tensor,
    targets: Targets,
    ks: Sequence[int] = (10, 20),
    metrics: Sequence[str] = ("HR", "NDCG"),
) -> dict[str, float]:
    """Several top-K metrics at several cut-offs in one pass, e.g. ``{"HR@10": .., "NDCG@10": .., ...}``.

    Args:
        topk_ids: int ``[U, W]`` ranked ids, ``W >= max(ks)``.
        targets: int64 ``[U]`` or CSR ``(indptr, indices)``.
        ks: cut-offs, each in ``1..W``.
        metrics: names among ``HR``, ``NDCG``, ``Recall``, ``MRR`` (case-insensitive);
            the keys use the given spelling.

    Returns:
        ``{f"{metric}@{k}": float}`` ordered by metric then ``k``; NaN when no user has a target.
    """
    if isinstance(ks, int) or not len(ks):
        raise ValueError(f"ks must be a non-empty sequence of ints, got {ks!r}")
    if isinstance(metrics, str) or not len(metrics):
        raise ValueError(f"metrics must be a non-empty sequence of names, got {metrics!r}")
    unknown = [m for m in metrics if m.upper() not in _NAMES]
    if unknown:
        raise ValueError(f"metrics: unknown {unknown}, choose from HR, NDCG, Recall, MRR")
    topk = _int_tensor(topk_ids, "topk_ids", 2)
    ks = [_check_k(k, topk.shape[1]) for k in ks]
    rel, count = _relevance(topk[:, : max(ks)], _check_targets(targets, topk.shape[0]))
    out: dict[str, float] = {}
    for m in metrics:
        fn = _CORE[_NAMES[m.upper()]]
        for k in ks:
            out[f"{m}@{k}"] = float(_reduce(fn(rel[:, :k], count), count, "mean"))
    return out


# ----------------------------------------------------------------------------- AUC


def _check_scores_labels(scores: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(scores, torch.Tensor):
        raise ValueError(f"scores must be a torch.Tensor, got {type(scores).__name__}")
    if not isinstance(labels, torch.Tensor):
        raise ValueError(f"labels must be a torch.Tensor, got {type(labels).__name__}")
    if scores.dim() != 1:
        raise ValueError(f"scores must be 1-D, got shape {tuple(scores.shape)}")
    if labels.shape != scores.shape:
        raise ValueError(f"labels must have the shape of scores {tuple(scores.shape)}, got {tuple(labels.shape)}")
    if scores.dtype.is_complex or scores.dtype == torch.bool:
        raise ValueError(f"scores must be real numbers, got {scores.dtype}")
    s = scores.detach().to(torch.float64)
    if bool(torch.isnan(s).any()):
        raise ValueError("scores must not contain NaN")
    y = labels.detach()
    if y.numel() and not bool(((y == 0) | (y == 1)).all()):
        raise ValueError("labels must contain only 0 and 1")
    return s, y.to(torch.float64)


def _grouped_auc(s: torch.Tensor, y: torch.Tensor, g: torch.Tensor, groups: int) -> tuple[torch.Tensor, ...]:
    """Per-group rank AUC (ties get their average rank): ``(auc [G], positives [G], negatives [G])``."""
    order = torch.argsort(s, stable=True)
    order = order[torch.argsort(g[order], stable=True)]
    s, y, g = s[order], y[order], g[order]
    n = s.numel()
    size = torch.bincount(g, minlength=groups)
    gstart = torch.cumsum(size, 0) - size
    new = torch.ones(n, dtype=torch.bool)
    new[1:] = (g[1:] != g[:-1]) | (s[1:] != s[:-1])
    starts = torch.nonzero(new).flatten()
    ends = torch.cat([starts[1:], torch.tensor([n])]) - 1
    avg = (starts + ends).to(torch.float64) / 2.0 - gstart[g[starts]] + 1.0  # 1-based rank within group
    rank = avg[torch.cumsum(new.long(), 0) - 1]
    rank_sum = torch.zeros(groups, dtype=torch.float64).index_add_(0, g, rank * y)
    pos = torch.zeros(groups, dtype=torch.float64).index_add_(0, g, y)
    neg = size.to(torch.float64) - pos
    auc_g = (rank_sum - pos * (pos + 1) / 2) / (pos * neg)
    return auc_g, pos, neg


def auc(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """ROC AUC from ranks (Mann-Whitney U), ties averaged: equals ``sklearn.metrics.roc_auc_score``.

    Args:
        scores: real ``[N]`` (higher = more positive).
        labels: ``[N]`` of 0/1 (bool, int or float).

    Returns:
        0-dim float64 tensor; NaN when ``N == 0`` or only one class is present (sklearn raises there).
    """
    s, y = _check_scores_labels(scores, labels)
    if s.numel() == 0:
        return torch.tensor(math.nan, dtype=torch.float64)
    auc_g, _, _ = _grouped_auc(s, y, torch.zeros(s.numel(), dtype=torch.int64), 1)
    return auc_g[0]


def uauc(scores: torch.Tensor, labels: torch.Tensor, user_ids: torch.Tensor, weighted: bool = False) -> torch.Tensor:
    """User AUC: the AUC of each user's samples, averaged over users having both classes.

    Computed for all users at once (one sort by (user, score)). Users with only positives or only
    negatives are skipped, as in CoLLM/SeLLa-Rec. When no user has both (e.g. every user has a single
    test row), UAUC is undefined: the result is NaN and a RuntimeWarning says why.

    Args:
        scores: real ``[N]``.
        labels: ``[N]`` of 0/1.
        user_ids: non-negative int ``[N]`` (any values; they only group samples).
        weighted: weight each user by its number of samples instead of equally.

    Returns:
        0-dim float64 tensor; NaN when no user has both classes (including ``N == 0``).
    """
    s, y = _check_scores_labels(scores, labels)
    users = _int_tensor(user_ids, "user_ids", 1)
    if users.shape != s.shape:
        raise ValueError(f"user_ids must have the shape of scores {tuple(s.shape)}, got {tuple(users.shape)}")
    if s.numel() == 0:
        return torch.tensor(math.nan, dtype=torch.float64)
    uniq, g = torch.unique(users, return_inverse=True)
    auc_g, pos, neg = _grouped_auc(s, y, g, uniq.numel())
    both = (pos > 0) & (neg > 0)
    if not bool(both.any()):
        warnings.warn(f"uauc: none of the {uniq.numel()} users has both a positive and a negative sample; "
                      "UAUC is undefined (NaN)", RuntimeWarning, stacklevel=2)
        return torch.tensor(math.nan, dtype=torch.float64)
    w = (pos + neg)[both] if weighted else torch.ones(int(both.sum()), dtype=torch.float64)
    return (auc_g[both] * w).sum() / w.sum()
