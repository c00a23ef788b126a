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

from fastrec.nn.embedding_optim import SparseOptimEmbedding
from fastrec.ops import semantic_fusion_lookup, semantic_fusion_weight_grad
from fastrec.ops.fusion import STRATEGIES, _check, _fusion_backward

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
        mode: "add" (UniSRec-style sum), "gate" (learned sigmoid gate), "concat" (concat + Linear(2d -> d),
            initialised as the sum) or "semantic" (the reduced semantic row alone: no ID embedding).
        padding_idx: id with zero output and no gradient (0 in SASRec); None for none.
        init: reduction initialisation, "pca" (default), "whiten" or "random" (see `reduction_init`).
        std: init std of the ID rows; the semantic components start at the same scale.
        strategy: "auto", "unique" or "table" (see `fastrec.ops.semantic_fusion_lookup`).
        sparse_optimizer: None (the ID rows are a Parameter) or "adam"/"adagrad": the ID rows are updated by
            the fused sparse optimizer in the lookup's backward, with `sparse_lr` (and torch's defaults).

    In eval mode `table()` is cached and recomputed only when a parameter changes.
    """

    def __init__(self, semantic: torch.Tensor, d: int, mode: str = "add", padding_idx: int | None = 0,
                 init: str = "pca", std: float = 0.02, strategy: str = "auto", sparse_optimizer: str | None = None,
                 sparse_lr: float = 1e-3) -> None:
        super().__init__()
        if not isinstance(semantic, torch.Tensor) or semantic.dim() != 2 or not semantic.is_floating_point():
            raise ValueError("semantic must be a 2-D floating-point tensor [num_items, D]")
        semantic = semantic.detach()
        bad = ~torch.isfinite(semantic).all(1)
        if padding_idx is not None:
            bad[padding_idx] = False
        if bool(bad.any()):
            raise ValueError(f"semantic has NaN or Inf in rows {torch.nonzero(bad).flatten()[:10].tolist()}")
        if mode not in ("add", "gate", "concat", "semantic"):
            raise ValueError(f"mode must be 'add', 'gate', 'concat' or 'semantic', got {mode!r}")
        num_items = semantic.shape[0]
        if padding_idx is not None:
            semantic = semantic.clone()
            semantic[padding_idx] = 0  # never read for output, but keeps the table finite
        self.mode, self.padding_idx, self.strategy = mode, padding_idx, strategy
        self.register_buffer("semantic", semantic, persistent=True)
        if mode == "semantic":  # no ID rows: a frozen zero table under the "add" kernel
            self.id_embedding = None
            self.register_buffer("zero_ids", torch.zeros(num_items, d, dtype=semantic.dtype), persistent=False)
        elif sparse_optimizer is not None:
            self.id_embedding = SparseOptimEmbedding(num_items, d, sparse_optimizer, lr=sparse_lr,
                                                     padding_idx=padding_idx, std=std)
        else:
            self.id_embedding = IDEmbedding(num_items, d, padding_idx, std)
        fit = semantic if padding_idx is None else torch.cat([semantic[:padding_idx], semantic[padding_idx + 1:]])
        w, b = reduction_init(fit, d, init, scale=std)
        self.weight = nn.Parameter(w.to(semantic.dtype) if semantic.dtype != torch.float16 else w)
        self.bias = nn.Parameter(b.to(self.weight.dtype))
        if mode in ("add", "semantic"):
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

    @property
    def sparse(self) -> bool:
        """True when the ID rows are trained by the fused sparse optimizer."""
        return isinstance(self.id_embedding, SparseOptimEmbedding)

    def _ids_table(self) -> torch.Tensor:
        return self.zero_ids if self.id_embedding is None else self.id_embedding.weight

    def _lookup(self, item_ids: torch.Tensor, strategy: str) -> torch.Tensor:
        op_mode = "add" if self.mode == "semantic" else self.mode
        if self.sparse and self.training and torch.is_grad_enabled():
            anchor = torch.empty(0, device=self.semantic.device, requires_grad=True)
            return _FusionLookupWithUpdate.apply(item_ids, self.weight, self.bias, self.fuse_weight, self.fuse_bias,
                                                 anchor, self, strategy)
        return semantic_fusion_lookup(item_ids, self._ids_table(), self.semantic, self.weight, self.bias, op_mode,
                                      self.fuse_weight, self.fuse_bias, self.padding_idx, strategy)

    def forward(self, item_ids: torch.Tensor) -> torch.Tensor:
        return self._lookup(item_ids, self.strategy)

    def _versions(self) -> tuple:
        step = int(self.id_embedding.step) if self.sparse else 0
        return (step,) + tuple((id(p), p._version) for p in self.parameters())

    def table(self) -> torch.Tensor:
        """Every item's fused embedding [I, d] (the whole-catalogue reduction; cached in eval mode)."""
        ids = torch.arange(self.num_items, device=self.semantic.device)
        if self.training or torch.is_grad_enabled():
            self._cache = None
            return self._lookup(ids, "table")
        key = self._versions()
        if self._cache is None or self._cache[0] != key:
            with torch.no_grad():
                self._cache = (key, self._lookup(ids, "table"))
        return self._cache[1]


class _FusionLookupWithUpdate(torch.autograd.Function):
    """semantic_fusion_lookup whose backward applies the fused sparse optimizer step to the ID rows.

    The reduction and fusion parameters get their gradients as usual (fastrec.ops.fusion's backward pieces);
    the per-item ID-row gradient [U, d] goes straight into `embedding_sparse_update` for the U unique rows.
    """

    @staticmethod
    def forward(ctx, item_ids, weight, bias, fuse_weight, fuse_bias, anchor, module, strategy):
        table = module.id_embedding.weight
        padding = -1 if module.padding_idx is None else module.padding_idx
        _check(item_ids, table, module.semantic, weight, bias, fuse_weight, fuse_bias, module.mode, padding)
        out, rows, inverse, reduced = torch.ops.fastrec.semantic_fusion_lookup(
            item_ids, table, module.semantic, weight, bias, fuse_weight, fuse_bias, module.mode, padding,
            STRATEGIES[strategy])
        if reduced.numel() and not bool(torch.isfinite(reduced).all()):
            raise ValueError("semantic_table, weight or bias contains NaN or Inf in a looked-up row")
        ctx.module = module
        ctx.dtypes = [None if t is None else t.dtype for t in (weight, bias, fuse_weight, fuse_bias)]
        # the ID rows as they were in the forward: another lookup's backward may update them first
        ctx.save_for_backward(rows, inverse, reduced, table[rows].float(), fuse_weight, fuse_bias)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        rows, inverse, reduced, e, fuse_weight, fuse_bias = ctx.saved_tensors
        module, needs = ctx.module, ctx.needs_input_grad
        u, d = reduced.shape
        inv = inverse.reshape(-1)
        grad_items = torch.zeros(u + 1, d, dtype=torch.float32, device=reduced.device)
        grad_items = grad_items.index_add_(0, torch.where(inv >= 0, inv, u), grad_out.reshape(-1, d).float())[:u]
        grad_e, grad_s, grad_fw, grad_fb = _fusion_backward(module.mode, grad_items, e, reduced, fuse_weight,
                                                            fuse_bias)
        dt_w, dt_b, dt_fw, dt_fb = ctx.dtypes
        grad_w = semantic_fusion_weight_grad(rows, grad_s, module.semantic).to(dt_w) if needs[1] else None
        grad_b = grad_s.sum(0).to(dt_b) if needs[2] and dt_b is not None else None
        grad_fw = grad_fw.to(dt_fw) if needs[3] and grad_fw is not None else None
        grad_fb = grad_fb.to(dt_fb) if needs[4] and grad_fb is not None else None
        module.id_embedding.apply_update(rows, grad_e)
        return None, grad_w, grad_b, grad_fw, grad_fb, None, None, None
