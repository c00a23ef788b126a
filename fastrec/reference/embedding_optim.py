"""Reference sparse (lazy) optimizer update of an embedding table: only the rows looked up move.

Clear, not fast. Imports nothing of fastrec.

The per-lookup gradients of duplicate ids are summed (in lookup order, fp32), then each touched row gets
torch's own update rule with the table's global step count:
    adam:    m = lerp(m, g, 1 - beta1); v = beta2 v + (1 - beta2) g^2
             w -= lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)        (torch.optim.Adam)
    adagrad: v += g^2; w -= lr * g / (sqrt(v) + eps)                                  (torch.optim.Adagrad)
with g += weight_decay * w first (L2, as both torch optimizers). Rows not looked up keep their weight
and state (FBGEMM's and SparseAdam's lazy semantics): when every row is touched at every step the result
is torch.optim.Adam's; Adagrad's zero-gradient rows never move, so it equals dense Adagrad always.
"""

from __future__ import annotations

import math

import torch

OPTIMIZERS = ("adam", "adagrad")


def coalesce_rows(ids: torch.Tensor, grad: torch.Tensor, padding_idx: int, d: int
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """(sorted unique ids [U], summed fp32 gradient rows [U, d]); lookups of `padding_idx` are dropped."""
    flat = ids.long().reshape(-1)
    grad = grad.reshape(flat.numel(), d).float()
    keep = flat != padding_idx
    rows, inverse = torch.unique(flat[keep], sorted=True, return_inverse=True)
    summed = torch.zeros(rows.numel(), d, dtype=torch.float32, device=grad.device)
    return rows, summed.index_add_(0, inverse, grad[keep])


def embedding_sparse_update(
    weight: torch.Tensor,
    exp_avg: torch.Tensor,
    exp_avg_sq: torch.Tensor,
    ids: torch.Tensor,
    grad: torch.Tensor,
    optimizer: str,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    step: int,
    padding_idx: int,
) -> None:
    """Update the rows of `weight` [I, d] looked up by `ids` [N] with per-lookup gradients `grad` [N, d], in place.

    adam uses exp_avg and exp_avg_sq ([I, d] fp32); adagrad keeps its sum of squares in exp_avg_sq (exp_avg
    unused). `step` is the table's step count after this update (>= 1).
    """
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
    rows, g = coalesce_rows(ids, grad, padding_idx, weight.shape[1])
    p = weight[rows].float()
    if weight_decay != 0:
        g = g + weight_decay * p
    v = exp_avg_sq[rows]
    if optimizer == "adam":
        m = exp_avg[rows].lerp(g, 1 - beta1)
        v = v * beta2 + (1 - beta2) * g * g
        denom = v.sqrt() / math.sqrt(1 - beta2**step) + eps
        p = p - lr / (1 - beta1**step) * m / denom
        exp_avg[rows] = m
    else:
        v = v + g * g
        p = p - lr * g / (v.sqrt() + eps)
    exp_avg_sq[rows] = v
    weight[rows] = p.to(weight.dtype)
