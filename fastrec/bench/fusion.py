"""Benchmark cases of the semantic-fusion family (KIRec's fused ID + semantic lookup).

B = 256 sequences x L = 50, d = 64, gated fusion, semantic width D in (384, 768, 4096), catalogues of
10,000 and 1,000,000 items (1M x 4096 fp32 is 16 GB and is left out on this 24 GB shared machine).
Batches look like SASRec's: left-padded sequences (lengths geometric, mean 8, clipped to [3, 50], as in
the Amazon 5-core sets) over Zipf(1) item popularity; one more case draws every position uniformly
from 1M items with no padding (nearly every lookup unique: the worst case for per-item dedup). The peer is
the eager composition in the same run: two embedding lookups, a Linear on the gathered [B, L, D] rows,
the fusion.
"""

from __future__ import annotations

import torch

from fastrec.bench.core import Case
from fastrec.ops import semantic_fusion_lookup
from fastrec.reference import semantic_fusion

B, L, d = 256, 50, 64
SHAPES = [(10_000, 384, "sasrec"), (10_000, 768, "sasrec"), (10_000, 4096, "sasrec"), (1_000_000, 384, "sasrec"),
          (1_000_000, 768, "sasrec"), (1_000_000, 768, "uniform")]


def sasrec_batch(num_items: int, gen: torch.Generator, dist: str = "sasrec") -> torch.Tensor:
    """[B, L] left-padded item ids (0 = padding), Zipf(1) popularity over items 1..num_items-1;
    dist "uniform": every position a uniform random item, no padding (the worst case for dedup)."""
    if dist == "uniform":
        return torch.randint(1, num_items, (B, L), generator=gen)
    lengths = torch.distributions.Geometric(probs=torch.tensor(1 / 8)).sample((B,)).long().clamp(3, L)
    popularity = 1.0 / torch.arange(1, num_items, dtype=torch.float64)
    ids = torch.multinomial(popularity, B * L, replacement=True, generator=gen).view(B, L) + 1
    keep = torch.arange(L)[None, :] >= (L - lengths)[:, None]
    return ids * keep


def _inputs(num_items: int, D: int, dist: str = "sasrec") -> dict:
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    return {
        "ids": sasrec_batch(num_items, gen, dist),
        "id_table": (torch.randn(num_items, d, generator=gen) * 0.02).requires_grad_(),
        "semantic_table": torch.randn(num_items, D, generator=gen),
        "weight": (torch.randn(d, D, generator=gen) / D**0.5).requires_grad_(),
        "bias": torch.zeros(d).requires_grad_(),
        "fuse_weight": (torch.randn(d, 2 * d, generator=gen) / (2 * d) ** 0.5).requires_grad_(),
        "fuse_bias": torch.zeros(d).requires_grad_(),
    }


def _fastrec(i: dict) -> torch.Tensor:
    return semantic_fusion_lookup(i["ids"], i["id_table"], i["semantic_table"], i["weight"], i["bias"], "gate",
                                  i["fuse_weight"], i["fuse_bias"], padding_idx=0)


def _eager(i: dict) -> torch.Tensor:
    return semantic_fusion(i["ids"], i["id_table"], i["semantic_table"], i["weight"], i["bias"], i["fuse_weight"],
                           i["fuse_bias"], "gate", 0)


def _forward(fn):
    def run(i):
        with torch.no_grad():
            return fn(i)

    return run


def _train_step(fn):
    params = ("id_table", "weight", "bias", "fuse_weight", "fuse_bias")

    def run(i):
        out = fn(i)
        grads = torch.autograd.grad(out.sum(), [i[p] for p in params])
        return grads[1]  # only the small weight gradient counts as output (the rest is scratch)

    return run


def cases(quick: bool = False) -> list[Case]:
    out = []
    for num_items, D, dist in SHAPES:
        shape = f"I={num_items:,} D={D} B*L={B * L} d={d}" + (" uniform" if dist == "uniform" else "")
        make = lambda num_items=num_items, D=D, dist=dist: _inputs(num_items, D, dist)  # noqa: E731
        target = {"torch eager": 2.0} if D == 768 and dist == "sasrec" else {}
        is_quick = (num_items, D, dist) == (10_000, 768, "sasrec")
        out.append(Case("semantic_fusion fwd", shape, make,
                        {"fastrec": _forward(_fastrec), "torch eager": _forward(_eager)}, dict(target), quick=is_quick))
        out.append(Case("semantic_fusion fwd+bwd", shape, make,
                        {"fastrec": _train_step(_fastrec), "torch eager": _train_step(_eager)}, dict(target),
                        quick=is_quick))
    return out
