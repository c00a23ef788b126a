"""KIRec's item embedding: learnable item-ID rows fused with reduced LLM attribute embeddings.

`SemanticFusionEmbedding` holds the frozen semantic table [I, D], the reduction Linear(D -> d)
(initialised by PCA or whitening of the semantic table, as LLM-ESR and UniSRec do) and the fusion
parameters, and runs `fastrec.ops.semantic_fusion_lookup`. `IDEmbedding` is the plain-ID counterpart.
Both expose `table()` (all items, [I, d]) so that a recommender can score the full catalogue.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from fastrec.ops import semantic_fusion_lookup

__all__ = ["IDEmbedding", "SemanticFusionEmbedding", "reduction_init"]


def reduction_init(semantic: torch.Tensor, d: int, method: str = "pca", scale: float = 1.0
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight [d, D] and bias [d] mapping semantic rows onto their top-d principal directions.

    "pca": s = (x - mean) V, rescaled so that the components have mean variance `scale**2`
    (relative variances kept). "whiten": every component rescaled to variance `scale**2` (UniSRec).
    "random": a Kaiming-uniform Linear, bias zero. Principal directions come from an SVD in float64;
    their signs are fixed (largest loading positive) so the result is deterministic.
    """
    x = semantic.double()
    n, D = x.shape
    if method == "random":
        lin = nn.Linear(D, d)
        return lin.weight.detach().float(), torch.zeros(d)
    if method not in ("pca", "whiten"):
        raise ValueError(f"init must be 'pca', 'whiten' or 'random', got {method!r}")
    if d > min(n, D):
        raise ValueError(f"cannot take {d} principal components of a [{n}, {D}] semantic table")
    mean = x.mean(0)
    _, sv, vh = torch.linalg.svd(x - mean, full_matrices=False)
    v = vh[:d]  # [d, D]
    sign = torch.sign(v.gather(1, v.abs().argmax(1, keepdim=True)))
    v = v * sign
    var = (sv[:d] ** 2 / max(n - 1, 1)).clamp_min(1e-12)
    if method == "whiten":
        w = v / var.sqrt()[:, None]
    else:
        w = v / var.mean().sqrt()
    w = w * scale
    return w.float(), (-(w @ mean)).float()


class IDEmbedding(nn.Embedding):
    """Plain item-ID embedding [num_items, d] with `table()`; row `padding_idx` stays zero."""

    def __init__(self, num_items: int, d: int, padding_idx: int | None = 0, std: float = 0.02) -> None:
        super().__init__(num_items, d, padding_idx=padding_idx)
        nn.init.normal_(self.weight, std=std)
        if padding_idx is not None:
            with torch.no_grad():
                self.weight[padding_idx].zero_()

    def table(self) -> torch.Tensor:
        """Every item's embedding, [num_items, d]."""
        return self.weight


class SemanticFusionEmbedding(nn.Module):
    """Item-ID embedding fused with the reduced semantic embedding: ids [...] -> [..., d].

    Args:
        semantic: [I, D] frozen semantic embeddings (row `padding_idx` may be anything; it is never used).
        d: output width (the recommender's hidden size).
        mode: "add" (UniSRec-style sum), "gate" (learned sigmoid gate) or "concat" (concat + Linear(2d -> d),
            initialised as the sum).
        padding_idx: id with zero output and no gradient (0 in SASRec); None for none.
        init: reduction initialisation, "pca" (default), "whiten" or "random" (see `reduction_init`).
        std: init std of the ID rows; the semantic components start at the same scale.
        strategy: "auto", "unique" or "table" (see `fastrec.ops.semantic_fusion_lookup`).

    In eval mode `table()` is cached and recomputed only when a parameter changes.
    """

    def __init__(self, semantic: torch.Tensor, d: int, mode: str = "add", padding_idx: int | None = 0,
                 init: str = "pca", std: float = 0.02, strategy: str = "auto") -> None:
        super().__init__()
        if not isinstance(semantic, torch.Tensor) or semantic.dim() != 2 or not semantic.is_floating_point():
            raise ValueError("semantic must be a 2-D floating-point tensor [num_items, D]")
        semantic = semantic.detach()
        bad = ~torch.isfinite(semantic).all(1)
        if padding_idx is not None:
            bad[padding_idx] = False
        if bool(bad.any()):
            raise ValueError(f"semantic has NaN or Inf in rows {torch.nonzero(bad).flatten()[:10].tolist()}")
        if mode not in ("add", "gate", "concat"):
            raise ValueError(f"mode must be 'add', 'gate' or 'concat', got {mode!r}")
        num_items = semantic.shape[0]
        if padding_idx is not None:
            semantic = semantic.clone()
            semantic[padding_idx] = 0  # never read for output, but keeps the table finite
        self.mode, self.padding_idx, self.strategy = mode, padding_idx, strategy
        self.register_buffer("semantic", semantic, persistent=True)
        self.id_embedding = IDEmbedding(num_items, d, padding_idx, std)
        fit = semantic if padding_idx is None else torch.cat([semantic[:padding_idx], semantic[padding_idx + 1:]])
        w, b = reduction_init(fit, d, init, scale=std)
        self.weight = nn.Parameter(w.to(semantic.dtype) if semantic.dtype != torch.float16 else w)
        self.bias = nn.Parameter(b.to(self.weight.dtype))
        if mode == "add":
            self.fuse_weight = self.fuse_bias = None
        else:
            eye = torch.eye(d)
            fw = torch.cat([eye, eye], 1) if mode == "concat" else torch.randn(d, 2 * d) / math.sqrt(2 * d) * 0.1
            self.fuse_weight = nn.Parameter(fw)
            self.fuse_bias = nn.Parameter(torch.zeros(d))
        self._cache: tuple[tuple, torch.Tensor] | None = None

    @property
    def num_items(self) -> int:
        return self.semantic.shape[0]

    def forward(self, item_ids: torch.Tensor) -> torch.Tensor:
        return semantic_fusion_lookup(item_ids, self.id_embedding.weight, self.semantic, self.weight, self.bias,
                                      self.mode, self.fuse_weight, self.fuse_bias, self.padding_idx, self.strategy)

    def _versions(self) -> tuple:
        return tuple((id(p), p._version) for p in self.parameters())

    def table(self) -> torch.Tensor:
        """Every item's fused embedding [I, d] (the whole-catalogue reduction; cached in eval mode)."""
        if self.training or torch.is_grad_enabled():
            self._cache = None
            return semantic_fusion_lookup(torch.arange(self.num_items, device=self.semantic.device),
                                          self.id_embedding.weight, self.semantic, self.weight, self.bias,
                                          self.mode, self.fuse_weight, self.fuse_bias, self.padding_idx, "table")
        key = self._versions()
        if self._cache is None or self._cache[0] != key:
            with torch.no_grad():
                ids = torch.arange(self.num_items, device=self.semantic.device)
                self._cache = (key, semantic_fusion_lookup(ids, self.id_embedding.weight, self.semantic, self.weight,
                                                           self.bias, self.mode, self.fuse_weight, self.fuse_bias,
                                                           self.padding_idx, "table"))
        return self._cache[1]
