"""Embedding tables that update themselves in their backward (fused sparse Adam / Adagrad).

`SparseOptimEmbedding` is a drop-in for `IDEmbedding`/`nn.Embedding` whose rows are not a Parameter: the
backward of a lookup calls `fastrec.ops.embedding_sparse_update`, which sums the per-lookup gradients of
each touched row and applies the optimizer step to those rows only, in the same pass. There is no [I, d]
gradient and no dense optimizer step over the table; everything else in the model keeps its usual
optimizer (the table's rows are buffers, so `model.parameters()` leaves them out).

One backward through a lookup is one optimizer step of the table (its global `step` count drives Adam's
bias corrections). The weight, the state (exp_avg, exp_avg_sq) and the step live in `state_dict()`, so a
checkpoint restores training exactly. Rows not looked up keep weight and state (lazy semantics; see
fastrec/reference/embedding_optim.py for the rule and how it relates to torch.optim.Adam/Adagrad).
"""

from __future__ import annotations

import torch
from torch import nn

from fastrec.ops import embedding_sparse_update
from fastrec.reference.embedding_optim import OPTIMIZERS

__all__ = ["SparseOptimEmbedding"]


class _LookupWithUpdate(torch.autograd.Function):
    """out = weight[ids]; backward = the fused optimizer step of the looked-up rows (no gradient returned)."""

    @staticmethod
    def forward(ctx, ids, anchor, module):
        ctx.module = module
        ctx.save_for_backward(ids)
        return module.weight[ids]

    @staticmethod
    def backward(ctx, grad):
        (ids,) = ctx.saved_tensors
        ctx.module.apply_update(ids, grad)
        return None, None, None


class SparseOptimEmbedding(nn.Module):
    """Item embedding [num_items, d] trained by a fused sparse optimizer in its own backward.

    Args:
        num_items, d: table size. padding_idx: id with a zero row that never moves (None for none).
        optimizer: "adam" or "adagrad". lr, betas, eps, weight_decay: as torch.optim.Adam / Adagrad
            (Adagrad uses eps = 1e-10 by default, as torch). std: init std of the rows.
    """

    def __init__(self, num_items: int, d: int, optimizer: str = "adam", lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float | None = None, weight_decay: float = 0.0,
                 padding_idx: int | None = 0, std: float = 0.02) -> None:
        super().__init__()
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
        self.optimizer, self.lr, self.betas, self.weight_decay = optimizer, lr, tuple(betas), weight_decay
        self.eps = eps if eps is not None else (1e-8 if optimizer == "adam" else 1e-10)
        self.padding_idx = padding_idx
        weight = torch.randn(num_items, d) * std
        if padding_idx is not None:
            weight[padding_idx] = 0
        self.register_buffer("weight", weight)
        self.register_buffer("exp_avg", torch.zeros(num_items, d) if optimizer == "adam" else torch.zeros(0))
        self.register_buffer("exp_avg_sq", torch.zeros(num_items, d))
        self.register_buffer("step", torch.zeros((), dtype=torch.int64))

    @property
    def num_items(self) -> int:
        return self.weight.shape[0]

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if not torch.is_grad_enabled() or not self.training:
            return self.weight[ids]
        anchor = torch.empty(0, device=self.weight.device, requires_grad=True)  # makes autograd call backward
        return _LookupWithUpdate.apply(ids, anchor, self)

    def table(self) -> torch.Tensor:
        """Every item's row, [num_items, d] (a lookup of all ids: in training, its backward updates the table)."""
        if not torch.is_grad_enabled() or not self.training:
            return self.weight
        return self(torch.arange(self.num_items, device=self.weight.device))

    @torch.no_grad()
    def apply_update(self, ids: torch.Tensor, grad: torch.Tensor) -> None:
        """One optimizer step of the rows `ids` with their per-lookup gradients `grad` [*ids.shape, d]."""
        self.step += 1
        embedding_sparse_update(self.weight, self.exp_avg, self.exp_avg_sq, ids, grad, self.optimizer, self.lr,
                                self.betas[0], self.betas[1], self.eps, self.weight_decay, int(self.step),
                                self.padding_idx)

    def extra_repr(self) -> str:
        return (f"{self.num_items}, {self.weight.shape[1]}, optimizer={self.optimizer!r}, lr={self.lr}, "
                f"padding_idx={self.padding_idx}")
