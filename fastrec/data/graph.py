"""The user-item bipartite graph, symmetric-normalised for LightGCN-style propagation."""

from __future__ import annotations

import warnings

import torch

from .interactions import Interactions, LeaveOneOutSplit, seen_csr

__all__ = ["InteractionGraph"]


class InteractionGraph:
    """Symmetric-normalised bipartite adjacency ``A_hat = D^-1/2 A D^-1/2`` as CSR tensors.

    Nodes are the users ``0..U-1`` followed by the items ``U..U+I-1`` (``n = U + I``). ``A`` is the
    binary adjacency of the de-duplicated train (user, item) pairs and its transpose (no self loops);
    ``D`` its degree. Nodes of degree zero have empty rows (no division by zero). The CSR is built once
    in the constructor with vectorised torch ops and cached: ``indptr`` int64 ``[n+1]``, ``indices``
    int64 ``[nnz]`` (sorted within each row), ``values`` float32 ``[nnz]``.

    Also holds the per-user seen-items CSR (``seen_indptr [U+1]``, ``seen_indices``: sorted unique
    item ids, ``0..I-1``) used to exclude train items at evaluation.

    Args:
        users: int64 ``[E]`` user ids in ``[0, num_users)``.
        items: int64 ``[E]`` item ids in ``[0, num_items)``.
        num_users, num_items: graph sizes (isolated users/items allowed).
    """

    def __init__(self, users: torch.Tensor, items: torch.Tensor, num_users: int, num_items: int) -> None:
        if num_users < 0 or num_items < 0:
            raise ValueError(f"num_users and num_items must be >= 0, got {num_users}, {num_items}")
        users = torch.as_tensor(users)
        items = torch.as_tensor(items)
        for arg, v in (("users", users), ("items", items)):
            if v.dtype.is_floating_point or v.dtype == torch.bool or v.dim() != 1:
                raise ValueError(f"{arg} must be a 1-D integer tensor, got {v.dtype} {tuple(v.shape)}")
        self._num_users = int(num_users)
        self._num_items = int(num_items)
        self._seen_indptr, self._seen_indices = seen_csr(users.long(), items.long(), num_users, num_items)
        self._indptr, self._indices, self._values = self._build()
        self._sparse: torch.Tensor | None = None

    @classmethod
    def from_interactions(cls, data: Interactions) -> InteractionGraph:
        """Graph over every interaction of ``data``."""
        users, items = data.pairs()
        return cls(users, items, data.num_users, data.num_items)

    @classmethod
    def from_split(cls, split: LeaveOneOutSplit) -> InteractionGraph:
        """Graph over the train part of a leave-one-out split (no valid/test leakage)."""
        return cls.from_interactions(split.train)

    def _build(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        nu, n = self._num_users, self.num_nodes
        counts = self._seen_indptr[1:] - self._seen_indptr[:-1]
        u = torch.repeat_interleave(torch.arange(nu), counts)
        i = self._seen_indices + nu
        rows = torch.cat([u, i])
        cols = torch.cat([i, u])
        order = torch.argsort(rows * max(n, 1) + cols)  # unique keys, so the order is total
        rows, cols = rows[order], cols[order]
        deg = torch.bincount(rows, minlength=n).to(torch.float64)
        inv_sqrt = torch.where(deg > 0, deg.clamp(min=1).rsqrt(), torch.zeros_like(deg))
        values = (inv_sqrt[rows] * inv_sqrt[cols]).to(torch.float32)
        indptr = torch.zeros(n + 1, dtype=torch.int64)
        torch.cumsum(torch.bincount(rows, minlength=n), 0, out=indptr[1:])
        return indptr, cols, values

    @property
    def indptr(self) -> torch.Tensor:
        """int64 ``[num_nodes + 1]`` row pointers."""
        return self._indptr

    @property
    def indices(self) -> torch.Tensor:
        """int64 ``[nnz]`` column (node) ids, sorted within each row."""
        return self._indices

    @property
    def values(self) -> torch.Tensor:
        """float32 ``[nnz]`` entries ``1 / sqrt(deg_row * deg_col)``."""
        return self._values

    @property
    def num_users(self) -> int:
        """Number of user nodes (ids ``0..U-1``)."""
        return self._num_users

    @property
    def num_items(self) -> int:
        """Number of item nodes (node ids ``U..U+I-1``)."""
        return self._num_items

    @property
    def num_nodes(self) -> int:
        """``num_users + num_items``."""
        return self._num_users + self._num_items

    @property
    def nnz(self) -> int:
        """Stored entries (twice the number of distinct user-item edges)."""
        return self._indices.numel()

    @property
    def is_symmetric(self) -> bool:
        """Always True: every edge is stored in both directions with the same value."""
        return True

    @property
    def seen_indptr(self) -> torch.Tensor:
        """int64 ``[num_users + 1]`` row pointers of the per-user seen items."""
        return self._seen_indptr

    @property
    def seen_indices(self) -> torch.Tensor:
        """int64 item ids (``0..I-1``) each user interacted with, sorted and unique within each row."""
        return self._seen_indices

    def degree(self) -> torch.Tensor:
        """int64 ``[num_nodes]`` node degrees in the binary adjacency."""
        return self._indptr[1:] - self._indptr[:-1]

    def to_sparse_csr(self) -> torch.Tensor:
        """The normalised adjacency as a ``torch.sparse_csr_tensor`` of shape ``[n, n]`` (cached)."""
        if self._sparse is None:
            n = self.num_nodes
            with warnings.catch_warnings():  # "sparse CSR support is in beta"
                warnings.filterwarnings("ignore", message=".*[Ss]parse CSR tensor support is in beta.*")
                self._sparse = torch.sparse_csr_tensor(
                    self._indptr, self._indices, self._values, size=(n, n), check_invariants=False
                )
        return self._sparse

    def to_dense(self) -> torch.Tensor:
        """Dense ``[n, n]`` float32 copy, for tests and tiny graphs only."""
        return self.to_sparse_csr().to_dense()

    def __repr__(self) -> str:
        return f"InteractionGraph(num_users={self.num_users}, num_items={self.num_items}, nnz={self.nnz})"
