"""Benchmark cases of the fused sparse embedding optimizer: one KIRec training step of the item embedding.

A step is forward (gated semantic fusion lookup), backward, and the Adam update of everything it trains,
at I = 1,000,000 items, d = 64, D = 768, B = 256 sequences x L = 50 (SASRec-like left-padded batches over
Zipf popularity, as fastrec.bench.fusion). Implementations, all in the same run on the same tables:
  fastrec                  SemanticFusionEmbedding(sparse_optimizer="adam"): the lookup's backward applies
                           Adam to the touched ID rows (embedding_sparse_update); torch Adam on the small
                           reduction/fusion parameters
  torch eager + Adam       the eager composition with a dense [I, d] Parameter and torch.optim.Adam
  torch sparse + SparseAdam  nn.functional.embedding(sparse=True) for the ID rows + torch.optim.SparseAdam,
                           torch Adam on the rest
  fastrec lookup + Adam    fastrec's fused lookup with a dense Parameter table and torch.optim.Adam (shows
                           what the optimizer alone changes)
Targets: 3x the dense Adam step, 1.5x the SparseAdam step. A smaller case (I = 10,000) runs in --quick.
"""

from __future__ import annotations

import torch

from fastrec.bench.core import Case
from fastrec.bench.fusion import sasrec_batch
from fastrec.nn import SemanticFusionEmbedding
from fastrec.ops import semantic_fusion_lookup

B, L, d, D = 256, 50, 64, 768
SHAPES = [10_000, 1_000_000]


def _inputs(num_items: int) -> dict:
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    semantic = torch.randn(num_items, D, generator=gen)
    fused = SemanticFusionEmbedding(semantic, d, mode="gate", padding_idx=0, init="random", sparse_optimizer="adam")
    del semantic  # the module holds its own copy; every implementation reads that one
    small = [fused.weight, fused.bias, fused.fuse_weight, fused.fuse_bias]
    dense_table = torch.nn.Parameter(fused.id_embedding.weight.clone())
    sparse_table = torch.nn.Parameter(fused.id_embedding.weight.clone())
    peer_small = [torch.nn.Parameter(p.detach().clone()) for p in small]
    return {
        "ids": sasrec_batch(num_items, gen),
        "grad": torch.randn(B, L, d, generator=gen),
        "fused": fused.train(),
        "fused_opt": torch.optim.Adam(small, lr=1e-3),
        "semantic": fused.semantic,
        "small": peer_small,
        "dense_table": dense_table,
        "dense_opt": torch.optim.Adam([dense_table] + peer_small, lr=1e-3),
        "sparse_table": sparse_table,
        "sparse_opt": torch.optim.SparseAdam([sparse_table], lr=1e-3),
        "rest_opt": torch.optim.Adam(peer_small, lr=1e-3),
    }


def _fastrec(i: dict) -> torch.Tensor:
    out = i["fused"](i["ids"])
    (out * i["grad"]).sum().backward()
    i["fused_opt"].step()
    i["fused_opt"].zero_grad(set_to_none=True)
    return i["fused"].weight


def _eager(table_grad_sparse: bool):
    def run(i: dict) -> torch.Tensor:
        w, b, fw, fb = i["small"]
        table = i["sparse_table"] if table_grad_sparse else i["dense_table"]
        e = torch.nn.functional.embedding(i["ids"], table, padding_idx=0, sparse=table_grad_sparse)
        s = torch.nn.functional.linear(i["semantic"][i["ids"]], w, b)
        g = torch.sigmoid(torch.cat([e, s], -1) @ fw.t() + fb)
        out = (g * e + (1 - g) * s) * (i["ids"] != 0)[..., None]
        (out * i["grad"]).sum().backward()
        opts = [i["sparse_opt"], i["rest_opt"]] if table_grad_sparse else [i["dense_opt"]]
        for opt in opts:
            opt.step()
            opt.zero_grad(set_to_none=True)
        return w

    return run


def _fastrec_lookup_dense_adam(i: dict) -> torch.Tensor:
    w, b, fw, fb = i["small"]
    out = semantic_fusion_lookup(i["ids"], i["dense_table"], i["semantic"], w, b, "gate", fw, fb, padding_idx=0)
    (out * i["grad"]).sum().backward()
    i["dense_opt"].step()
    i["dense_opt"].zero_grad(set_to_none=True)
    return w


def cases(quick: bool = False) -> list[Case]:
    out = []
    for num_items in SHAPES:
        shape = f"I={num_items:,} D={D} B*L={B * L} d={d}"
        out.append(Case(
            "embedding train step", shape, lambda n=num_items: _inputs(n),
            {"fastrec": _fastrec, "torch eager + Adam": _eager(False), "torch sparse + SparseAdam": _eager(True),
             "fastrec lookup + Adam": _fastrec_lookup_dense_adam},
            {"torch eager + Adam": 3.0, "torch sparse + SparseAdam": 1.5} if num_items == 1_000_000 else {},
            quick=num_items == 10_000))
    return out


__all__ = ["cases"]
