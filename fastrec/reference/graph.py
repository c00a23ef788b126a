"""Reference graph ops: CSR x dense by gather + index_add, LightGCN as repeated SpMM, top-K by full sort."""

from __future__ import annotations

import torch


def _rows(indptr: torch.Tensor, nnz: int) -> torch.Tensor:
    """The row of each of the nnz entries (searchsorted: its shape is known, so no host sync on CUDA)."""
    return torch.searchsorted(indptr.long(), torch.arange(nnz, device=indptr.device), right=True) - 1


def spmm(indptr: torch.Tensor, indices: torch.Tensor, values: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
    """``A @ dense`` for the CSR matrix ``A`` (rows = ``len(indptr) - 1``), accumulated in fp32."""
    rows = indptr.numel() - 1
    contrib = values.float()[:, None] * dense.float()[indices.long()]
    out = torch.zeros(rows, dense.shape[1], dtype=torch.float32, device=dense.device)
    return out.index_add(0, _rows(indptr, indices.numel()), contrib).to(dense.dtype)


def graph_partition(indptr: torch.Tensor, nnz: int, items_per_worker: int) -> torch.Tensor:
    """The merge-path plan of the CUDA SpMM (a plain-Python mirror of graph::plan_worker in
    csrc/common/graph.h): ``[workers, 6]`` int64 rows ``(row0, row1, lead_begin, chain_begin, carry_begin,
    carry_end)``. Items are every edge and one row end per row; worker ``w`` takes items
    ``[w K, (w + 1) K)``, owns the rows whose end it holds, sums a short row whole and a long (> K edges)
    split row from its segment start plus the carries of workers ``[chain_begin, w)``, and writes a carry
    for the part of its trailing long row it holds."""
    k = items_per_worker
    ptr = [min(max(int(v), 0), nnz) for v in indptr.tolist()]
    rows = len(ptr) - 1
    total = rows + nnz
    workers = (total + k - 1) // k

    def row_at(diag: int) -> int:  # the first row whose end item is at or after diag
        lo, hi = max(diag - nnz, 0), min(diag, rows)
        while lo < hi:
            mid = (lo + hi) // 2
            lo, hi = (mid + 1, hi) if ptr[mid + 1] + mid < diag else (lo, mid)
        return lo

    plan = []
    for w in range(workers):
        d0 = min(w * k, total)
        d1 = min(d0 + k, total)
        r0, r1 = row_at(d0), row_at(d1)
        e0, e1 = d0 - r0, d1 - r1
        lead, chain = ptr[r0], w
        if r0 < r1 and ptr[r0 + 1] - ptr[r0] > k and (r0 + ptr[r0]) // k < w:
            lead, chain = e0, (r0 + ptr[r0]) // k
        carry = (e1, e1)
        if r1 < rows and ptr[r1 + 1] - ptr[r1] > k and max(ptr[r1], e0) < e1:
            carry = (max(ptr[r1], e0), e1)
        plan.append([r0, r1, lead, chain, *carry])
    return torch.tensor(plan, dtype=torch.int64, device=indptr.device).reshape(workers, 6)


def lightgcn_propagate(
    indptr: torch.Tensor,
    indices: torch.Tensor,
    values: torch.Tensor,
    t_indptr: torch.Tensor,
    t_indices: torch.Tensor,
    t_values: torch.Tensor,
    emb: torch.Tensor,
    layer_weights: list[float],
) -> torch.Tensor:
    """``sum_l w_l A^l emb`` for ``l = 0..len(layer_weights) - 1`` (the transpose is used by autograd only)."""
    layer = emb.float()
    out = layer_weights[0] * layer
    for w in layer_weights[1:]:
        layer = spmm(indptr, indices, values, layer)
        out = out + w * layer
    return out.to(emb.dtype)


def topk_scores(
    queries: torch.Tensor,
    items: torch.Tensor,
    k: int,
    exclude_indptr: torch.Tensor | None = None,
    exclude_indices: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` items of ``queries @ items.T`` per row, excluded items scored ``-inf``.

    Order: higher score first, equal scores by lower item id (a stable descending sort). Rows are
    processed 1024 at a time so memory stays at 1024 x I.
    """
    num_users = queries.shape[0]
    scores_out = torch.empty(num_users, k, dtype=torch.float32, device=queries.device)
    ids_out = torch.empty(num_users, k, dtype=torch.int64, device=queries.device)
    rows = _rows(exclude_indptr, exclude_indices.numel()) if exclude_indptr is not None else None
    for start in range(0, num_users, 1024):
        stop = min(start + 1024, num_users)
        scores = queries[start:stop].float() @ items.float().t()
        if rows is not None:
            sel = (rows >= start) & (rows < stop)
            scores[rows[sel] - start, exclude_indices[sel].long()] = float("-inf")
        order = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :k]
        scores_out[start:stop] = scores.gather(1, order)
        ids_out[start:stop] = order
    return scores_out, ids_out
