"""Collaborative models: matrix factorisation and LightGCN on the fused propagation op, BPR/BCE losses,
safetensors checkpoints.

    model = fastrec.nn.LightGCN(num_users, num_items, dim=64, num_layers=3, graph=InteractionGraph(...))
    users, items = model()                       # final vectors of every user and item
    loss = bpr_loss(model.score(u, pos), model.score(u, neg))

Both models expose the same interface (``model() -> (user_vectors, item_vectors)``,
``model.ego(users, items)`` for the L2 term), so the trainer in ``fastrec.recipes.collab`` takes either.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fastrec.ops import lightgcn_propagate

__all__ = ["MF", "LightGCN", "bpr_loss", "bce_loss", "save_checkpoint", "load_checkpoint"]


def bpr_loss(pos_scores: torch.Tensor, neg_scores: torch.Tensor) -> torch.Tensor:
    """Bayesian personalised ranking: ``mean(-log sigmoid(pos - neg))``; neg may be ``[B]`` or ``[B, n]``."""
    if neg_scores.dim() == pos_scores.dim() + 1:
        pos_scores = pos_scores.unsqueeze(-1)
    return F.softplus(neg_scores - pos_scores).mean()


def bce_loss(pos_scores: torch.Tensor, neg_scores: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy on logits: positives labelled 1, negatives 0, each side averaged then summed."""
    return F.softplus(-pos_scores).mean() + F.softplus(neg_scores).mean()


class _Collab(nn.Module):
    """Shared parts: one embedding table of users then items, scoring by inner product."""

    def __init__(self, num_users: int, num_items: int, dim: int, init_std: float) -> None:
        super().__init__()
        for name, v in (("num_users", num_users), ("num_items", num_items), ("dim", dim)):
            if not isinstance(v, int) or v <= 0:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        self.num_users, self.num_items, self.dim = num_users, num_items, dim
        self.embedding = nn.Embedding(num_users + num_items, dim)
        nn.init.normal_(self.embedding.weight, std=init_std)

    def ego(self, users: torch.Tensor, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer-0 (trainable) vectors of some users and items, for the L2 regulariser."""
        return self.embedding(users), self.embedding(items + self.num_users)

    def score(self, users: torch.Tensor, items: torch.Tensor, vectors=None) -> torch.Tensor:
        """Inner-product scores; ``items`` may carry an extra trailing dim (several items per user)."""
        u, i = vectors if vectors is not None else self()
        uv = u[users]
        iv = i[items]
        return (uv.unsqueeze(-2) * iv).sum(-1) if items.dim() > users.dim() else (uv * iv).sum(-1)

    def config(self) -> dict[str, Any]:
        return {"class": type(self).__name__, "num_users": self.num_users, "num_items": self.num_items,
                "dim": self.dim}


class MF(_Collab):
    """Matrix factorisation (SeLLa-Rec's collaborative model): user and item vectors are the embeddings."""

    def __init__(self, num_users: int, num_items: int, dim: int = 64, init_std: float = 0.1) -> None:
        super().__init__(num_users, num_items, dim, init_std)

    def forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(user_vectors [U, d], item_vectors [I, d])``."""
        w = self.embedding.weight
        return w[: self.num_users], w[self.num_users:]


class LightGCN(_Collab):
    """LightGCN: the mean of ``num_layers + 1`` propagation layers over the normalised user-item graph.

    The propagation is ``fastrec.ops.lightgcn_propagate`` (fused layer mean; its backward runs over the
    transpose, which is the graph itself when the graph is symmetric: an InteractionGraph is, a CSR tensor
    is checked once in :meth:`set_graph`). The graph is held with int32 indices when it fits (half the index
    traffic) and is not part of the state dict: pass it to the constructor or :meth:`set_graph`.

    Args:
        num_users, num_items: sizes (graph nodes are users then items).
        dim: embedding width (64 in LightGCN's paper).
        num_layers: propagation layers (3).
        graph: a :class:`fastrec.data.InteractionGraph` over the training interactions, or a square
            ``torch.sparse_csr_tensor`` of the same node count (symmetric or not).
    """

    def __init__(self, num_users: int, num_items: int, dim: int = 64, num_layers: int = 3, graph: Any = None,
                 init_std: float = 0.1) -> None:
        super().__init__(num_users, num_items, dim, init_std)
        if not isinstance(num_layers, int) or num_layers < 0:
            raise ValueError(f"num_layers must be an int >= 0, got {num_layers!r}")
        self.num_layers = num_layers
        self.register_buffer("graph_indptr", torch.zeros(1, dtype=torch.int32), persistent=False)
        self.register_buffer("graph_indices", torch.zeros(0, dtype=torch.int32), persistent=False)
        self.register_buffer("graph_values", torch.zeros(0), persistent=False)
        self._has_graph = False
        if graph is not None:
            self.set_graph(graph)

    def set_graph(self, graph: Any) -> None:
        """Use ``graph`` (InteractionGraph or square sparse CSR tensor) for propagation."""
        from fastrec.ops.graph import unpack_graph

        indptr, indices, values, symmetric = unpack_graph(graph)
        n = self.num_users + self.num_items
        if indptr.numel() != n + 1:
            raise ValueError(f"graph has {indptr.numel() - 1} nodes but the model has {n} (users + items)")
        dtype = torch.int32 if indices.numel() < 2**31 else torch.int64
        device = self.embedding.weight.device
        self.graph_indptr = indptr.to(device=device, dtype=dtype)
        self.graph_indices = indices.to(device=device, dtype=dtype)
        self.graph_values = values.to(device=device, dtype=torch.float32)
        # a graph that does not say it is symmetric is compared with its transpose once, here: the backward
        # over a non-symmetric graph needs the real transpose (lightgcn_propagate builds it per call)
        self._symmetric = symmetric or _is_symmetric(self.graph_indptr, self.graph_indices, self.graph_values)
        self._has_graph = True

    def forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(user_vectors [U, d], item_vectors [I, d])`` after propagation."""
        if not self._has_graph:
            raise RuntimeError("LightGCN has no graph: pass graph= to the constructor or call set_graph()")
        graph = _CSR(self.graph_indptr, self.graph_indices, self.graph_values)
        out = lightgcn_propagate(graph, self.embedding.weight, self.num_layers, symmetric=self._symmetric)
        return out[: self.num_users], out[self.num_users:]

    def config(self) -> dict[str, Any]:
        return {**super().config(), "num_layers": self.num_layers}


def _is_symmetric(indptr: torch.Tensor, indices: torch.Tensor, values: torch.Tensor) -> bool:
    """A == A^T, exactly: the transpose's CSR (column ids sorted within each row) equals the graph's."""
    from fastrec.ops.graph import csr_transpose

    n = indptr.numel() - 1
    t_indptr, t_indices, t_values = csr_transpose(indptr, indices, values, n)
    if not torch.equal(t_indptr, indptr):
        return False
    counts = (indptr[1:] - indptr[:-1]).long()
    rows = torch.repeat_interleave(torch.arange(n, device=indptr.device), counts)
    # both sides sorted by (row, column), so the comparison does not depend on the order inside a row
    mine = torch.argsort(rows * max(n, 1) + indices.long(), stable=True)
    theirs = torch.argsort(rows * max(n, 1) + t_indices.long(), stable=True)
    return bool(torch.equal(indices[mine], t_indices[theirs]) and torch.equal(values[mine], t_values[theirs]))


class _CSR:
    """The minimal graph object lightgcn_propagate accepts (symmetry is passed to it separately)."""

    is_symmetric = False

    def __init__(self, indptr: torch.Tensor, indices: torch.Tensor, values: torch.Tensor) -> None:
        self.indptr, self.indices, self.values = indptr, indices, values


_CLASSES = {"MF": MF, "LightGCN": LightGCN}


def save_checkpoint(model: nn.Module, path: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Write the model's weights and config to a safetensors file, atomically (temp file + rename)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"config": json.dumps(model.config()), "extra": json.dumps(extra or {})}
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(state, tmp, metadata=meta)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def load_checkpoint(path: str | Path, graph: Any = None) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a model saved by :func:`save_checkpoint`: ``(model, extra)``. LightGCN needs ``graph``."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if "config" not in meta:
        raise ValueError(f"{path} is not a fastrec collaborative checkpoint (no config metadata)")
    config = json.loads(meta["config"])
    cls = _CLASSES.get(config.pop("class"))
    if cls is None:
        raise ValueError(f"{path}: unknown model class in checkpoint")
    model = cls(**config) if cls is MF else cls(**config, graph=graph)
    model.load_state_dict(load_file(str(path)))
    return model, json.loads(meta.get("extra", "{}"))
