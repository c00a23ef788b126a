"""Benchmark cases of the graph family: LightGCN propagation (forward, forward+backward) and full-ranking
top-K, against the peers one would otherwise use, all in the same run.

Propagation peers: torch.sparse.mm on the CSR adjacency with autograd; the best plain-PyTorch
composition (a symmetric autograd.Function whose backward reuses torch.sparse.mm on the same CSR);
torch_geometric's LightGCN (default settings: edge_index, gcn_norm per call) and its LGConv over a CSR
adj_t. Graphs are synthetic with power-law item popularity at the MovieLens-1M and Amazon-Book shapes.

top-K peers: torch chunked mm + masked_fill + topk (the best chunk), and faiss IndexFlatIP asked for
k + max seen then filtered.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from fastrec.bench.core import Case, available, time_ms
from fastrec.ops import lightgcn_propagate, topk_scores

GRAPH_SHAPES = {
    "MovieLens-1M": (6_040, 3_706, 1_000_209),
    "Amazon-Book": (52_643, 91_599, 2_984_108),
}


def power_law_pairs(num_users: int, num_items: int, nnz: int, seed: int = 0, alpha: float = 0.8):
    """``nnz`` distinct (user, item) pairs: items by Zipf-like popularity, users by a milder power law."""
    rng = np.random.default_rng(seed)
    item_p = 1.0 / np.arange(1, num_items + 1) ** alpha
    item_p /= item_p.sum()
    user_p = 1.0 / np.arange(1, num_users + 1) ** 0.5
    user_p /= user_p.sum()
    keys = np.empty(0, dtype=np.int64)
    while keys.size < nnz:
        need = int((nnz - keys.size) * 1.3) + 1024
        u = rng.choice(num_users, need, p=user_p)
        i = rng.choice(num_items, need, p=item_p)
        keys = np.unique(np.concatenate([keys, u.astype(np.int64) * num_items + i]))
    keys = rng.permutation(keys)[:nnz]
    return torch.from_numpy(keys // num_items), torch.from_numpy(keys % num_items)


def make_graph(name: str):
    from fastrec.data import InteractionGraph

    nu, ni, nnz = GRAPH_SHAPES[name]
    users, items = power_law_pairs(nu, ni, nnz)
    return InteractionGraph(users, items, nu, ni)


# ---------------------------------------------------------------------------------- propagation peers


class _SymSparseMM(torch.autograd.Function):
    """A @ x whose backward is A @ grad (A symmetric): the best plain-PyTorch composition."""

    @staticmethod
    def forward(ctx, adj, x):
        ctx.adj = adj
        return torch.sparse.mm(adj, x)

    @staticmethod
    def backward(ctx, grad):
        return None, torch.sparse.mm(ctx.adj, grad)


def torch_propagate(adj: torch.Tensor, emb: torch.Tensor, layers: int, symmetric_fn: bool) -> torch.Tensor:
    out, x = emb, emb
    for _ in range(layers):
        x = _SymSparseMM.apply(adj, x) if symmetric_fn else torch.sparse.mm(adj, x)
        out = out + x
    return out / (layers + 1)


def fwd_bwd(fn, emb: torch.Tensor, grad: torch.Tensor):
    emb.grad = None
    out = fn(emb)
    out.backward(grad)
    return emb.grad


def _graph_inputs(name: str, dim: int = 64):
    g = make_graph(name)
    n = g.num_nodes
    gen = torch.Generator().manual_seed(0)
    emb = (torch.randn(n, dim, generator=gen) * 0.1).requires_grad_(True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        adj = g.to_sparse_csr()
    inputs = {"graph": g, "adj": adj, "emb": emb, "grad": torch.randn(n, dim, generator=gen),
              "g32": _Int32Graph(g)}
    try:
        import torch_geometric  # noqa: F401
        from torch_geometric.nn.models import LightGCN

        users, items = [], []
        rows = torch.repeat_interleave(torch.arange(g.num_users), g.seen_indptr[1:] - g.seen_indptr[:-1])
        users, items = rows, g.seen_indices + g.num_users
        inputs["edge_index"] = torch.stack([torch.cat([users, items]), torch.cat([items, users])])
        model = LightGCN(n, dim, num_layers=3)
        with torch.no_grad():
            model.embedding.weight.copy_(emb)
        inputs["pyg_model"] = model
        from torch_geometric.nn import LGConv

        inputs["lgconv"] = LGConv(normalize=False)
        inputs["adj_t"] = adj  # symmetric, so adj_t == adj
    except ImportError:  # pragma: no cover
        pass
    return inputs


class _Int32Graph:
    """The same graph with int32 indices (what fastrec.nn.LightGCN keeps): half the index traffic."""

    def __init__(self, g):
        self.indptr, self.indices, self.values = g.indptr.int(), g.indices.int(), g.values
        self.is_symmetric = True


def _pyg_model_forward(i):
    m = i["pyg_model"]
    return m.get_embedding(i["edge_index"])


def _lgconv(i, x):
    out, h = x, x
    for _ in range(3):
        h = i["lgconv"](h, i["adj_t"])
        out = out + h
    return out / 4


def propagate_cases(quick: bool) -> list[Case]:
    out = []
    for name, (nu, ni, nnz) in GRAPH_SHAPES.items():
        shape = f"{name} U={nu:,} I={ni:,} E={nnz:,} d=64 L=3"
        is_quick = name == "MovieLens-1M"
        fwd = {
            "fastrec": lambda i: _no_grad(lambda: lightgcn_propagate(i["g32"], i["emb"], 3)),
            "fastrec int64 indices": lambda i: _no_grad(lambda: lightgcn_propagate(i["graph"], i["emb"], 3)),
            "torch.sparse.mm CSR": lambda i: _no_grad(lambda: torch_propagate(i["adj"], i["emb"], 3, False)),
            "torch_geometric LGConv adj_t": lambda i: _no_grad(lambda: _lgconv(i, i["emb"])),
            "torch_geometric LightGCN": lambda i: _no_grad(lambda: _pyg_model_forward(i)),
        }
        bwd = {
            "fastrec": lambda i: fwd_bwd(lambda e: lightgcn_propagate(i["g32"], e, 3), i["emb"], i["grad"]),
            "torch sym autograd.Function": lambda i: fwd_bwd(
                lambda e: torch_propagate(i["adj"], e, 3, True), i["emb"], i["grad"]),
            "torch.sparse.mm CSR autograd": lambda i: fwd_bwd(
                lambda e: torch_propagate(i["adj"], e, 3, False), i["emb"], i["grad"]),
            "torch_geometric LGConv adj_t": lambda i: fwd_bwd(lambda e: _lgconv(i, e), i["emb"], i["grad"]),
            "torch_geometric LightGCN": lambda i: _pyg_bwd(i),
        }
        pyg = {"torch_geometric LGConv adj_t": "torch_geometric", "torch_geometric LightGCN": "torch_geometric"}
        fwd, bwd = available(fwd, pyg), available(bwd, pyg)
        make = lambda name=name: _graph_inputs(name)
        out.append(Case("lightgcn_propagate fwd", shape, make, fwd,
                        {"torch.sparse.mm CSR": 1.5}, quick=is_quick))
        out.append(Case("lightgcn_propagate fwd+bwd", shape, make, bwd,
                        {"torch sym autograd.Function": 1.5}, quick=is_quick))
    return out


def _no_grad(fn):
    with torch.no_grad():
        return fn()


def _pyg_bwd(i):
    m = i["pyg_model"]
    m.zero_grad()
    out = m.get_embedding(i["edge_index"])
    out.backward(i["grad"])
    return m.embedding.weight.grad


# ----------------------------------------------------------------------------------------- top-K


def _topk_inputs(num_users: int = 4096, num_items: int = 100_000, dim: int = 64, k: int = 20):
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(num_users, dim, generator=gen)
    items = torch.randn(num_items, dim, generator=gen)
    users, seen = power_law_pairs(num_users, num_items, num_users * 50, seed=1)
    from fastrec.data import seen_csr

    indptr, indices = seen_csr(users, seen, num_users, num_items)
    inputs = {"q": q, "items": items, "k": k, "indptr": indptr, "indices": indices,
              "max_seen": int((indptr[1:] - indptr[:-1]).max())}
    inputs["chunk"] = _best_chunk(inputs)
    try:
        import faiss

        faiss.omp_set_num_threads(torch.get_num_threads())
        index = faiss.IndexFlatIP(dim)
        index.add(items.numpy())
        inputs["faiss"] = index
    except ImportError:  # pragma: no cover
        pass
    return inputs


def _best_chunk(inputs) -> int:
    """The torch peer's fastest user chunk, timed on the first 1,024 users."""
    sample = dict(inputs, q=inputs["q"][:1024], indptr=inputs["indptr"][:1025])
    times = {c: time_ms(lambda c=c: torch_chunked_topk(sample, c), min_time=0.0, max_reps=1, warmup=0)
             for c in (128, 512, 1024)}
    return min(times, key=times.get)


def torch_chunked_topk(i, chunk: int):
    """What one writes without fastrec: per user chunk, mm + masked_fill(seen) + topk."""
    q, items, k, indptr, indices = i["q"], i["items"], i["k"], i["indptr"], i["indices"]
    rows = torch.repeat_interleave(torch.arange(q.shape[0]), indptr[1:] - indptr[:-1])
    scores_out, ids_out = [], []
    for s in range(0, q.shape[0], chunk):
        e = min(s + chunk, q.shape[0])
        scores = q[s:e] @ items.t()
        lo, hi = int(indptr[s]), int(indptr[e])
        scores[rows[lo:hi] - s, indices[lo:hi]] = float("-inf")
        top = scores.topk(k, dim=1)
        scores_out.append(top.values)
        ids_out.append(top.indices)
    return torch.cat(scores_out), torch.cat(ids_out)


def faiss_topk(i):
    """faiss IndexFlatIP for k + max seen, then drop seen ids and keep the first k."""
    k, indptr, indices = i["k"], i["indptr"], i["indices"]
    scores, ids = i["faiss"].search(i["q"].numpy(), k + i["max_seen"])
    ids_t = torch.from_numpy(ids)
    rows = torch.repeat_interleave(torch.arange(ids_t.shape[0]), indptr[1:] - indptr[:-1])
    seen = torch.zeros(ids_t.shape[0], i["items"].shape[0], dtype=torch.bool)  # bitmap (U x I bits/8)
    seen[rows, indices] = True
    keep = ~seen.gather(1, ids_t.clamp(min=0))
    order = torch.sort((~keep).to(torch.int8), dim=1, stable=True).indices[:, :k]
    return torch.from_numpy(scores).gather(1, order), ids_t.gather(1, order)


def topk_cases(quick: bool) -> list[Case]:
    impls = {
        "fastrec": lambda i: topk_scores(i["q"], i["items"], i["k"], (i["indptr"], i["indices"])),
        "torch chunked mm+topk": lambda i: torch_chunked_topk(i, i["chunk"]),
        "faiss IndexFlatIP k+max_seen": faiss_topk,
    }
    impls = available(impls, {"faiss IndexFlatIP k+max_seen": "faiss"})
    return [Case("topk_scores", "U=4,096 I=100,000 d=64 k=20 seen~50", _topk_inputs, impls,
                 {"torch chunked mm+topk": 3.0, "faiss IndexFlatIP k+max_seen": 1.3}, quick=True)]


def cases(quick: bool = False) -> list[Case]:
    return topk_cases(quick) + propagate_cases(quick)
