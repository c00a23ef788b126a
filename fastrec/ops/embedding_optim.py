"""Fused sparse optimizer step of an embedding table (FBGEMM's table-batched-embedding idea).

    fastrec.ops.embedding_sparse_update(weight, exp_avg, exp_avg_sq, ids, grad, "adam", lr=1e-3, step=t)

ids [N] (any shape), grad [N, d]: the per-lookup output gradients of a lookup of `weight` [I, d]. The
gradients of duplicate ids are summed (deterministically, in lookup order) and each touched row gets
torch's Adam or Adagrad update, in place, together with its state ([I, d] fp32 buffers); rows not looked
up are not read or written (lazy semantics, as torch.optim.SparseAdam and FBGEMM). No [I, d] gradient
exists. `fastrec.nn.SparseOptimEmbedding` and `SemanticFusionEmbedding(sparse_optimizer=...)` call it from
the backward of their lookup, so forward, backward and update are one pass over the touched rows.

Update rule, step count and how it relates to the dense optimizers: see fastrec/reference/embedding_optim.py.
"""

from __future__ import annotations

import math

import torch

from fastrec import reference
from fastrec.ops import _checks
from fastrec.ops._library import HAS_TRITON, cpu_is_compiled, define
from fastrec.reference.embedding_optim import OPTIMIZERS


def _triton_update(weight, exp_avg, exp_avg_sq, ids, grad, optimizer, lr, beta1, beta2, eps, weight_decay, step,
                   padding_idx):
    from fastrec.kernels import embedding_optim as kernels

    kernels.sparse_update(weight, exp_avg, exp_avg_sq, ids, grad, optimizer, lr, beta1, beta2, eps, weight_decay,
                          step, padding_idx)


define("embedding_sparse_update",
       "(Tensor(a!) weight, Tensor(b!) exp_avg, Tensor(c!) exp_avg_sq, Tensor ids, Tensor grad, str optimizer, "
       "float lr, float beta1, float beta2, float eps, float weight_decay, int step, int padding_idx) -> ()",
       reference.embedding_sparse_update, _triton_update if HAS_TRITON else None)


@torch.library.register_fake("fastrec::embedding_sparse_update")
def _(weight, exp_avg, exp_avg_sq, ids, grad, optimizer, lr, beta1, beta2, eps, weight_decay, step, padding_idx):
    return None


def _number(name: str, value: object, low: float, high: float = math.inf, closed_low: bool = True) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value >= low if closed_low else value > low) and value < high
    if not ok:
        bound = f"{'[' if closed_low else '('}{low}, {high})"
        raise ValueError(f"{name} must be a finite number in {bound}, got {value!r}")
    return float(value)


def embedding_sparse_update(
    weight: torch.Tensor,
    exp_avg: torch.Tensor,
    exp_avg_sq: torch.Tensor,
    ids: torch.Tensor,
    grad: torch.Tensor,
    optimizer: str = "adam",
    lr: float = 1e-3,
    beta1: float = 0.9,
    beta2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    step: int = 1,
    padding_idx: int | None = None,
) -> None:
    """One optimizer step on the rows of `weight` looked up by `ids`, in place (weight and state).

    Args:
        weight: [I, d] contiguous fp32/fp16/bf16 table (not a tensor that requires grad: it is updated here).
        exp_avg: [I, d] fp32 first moment (adam); ignored for adagrad (pass an empty tensor).
        exp_avg_sq: [I, d] fp32 second moment (adam) or sum of squared gradients (adagrad).
        ids: int32/int64 ids of any shape, each in [0, I).
        grad: [*ids.shape, d] (or [N, d]) gradient of each lookup, any float dtype.
        optimizer: "adam" or "adagrad". lr, beta1, beta2, eps, weight_decay: torch's meaning (L2 decay).
        step: the table's step count including this update (>= 1; Adam's bias corrections).
        padding_idx: id whose lookups are skipped; None for none.

    Raises:
        IndexError: an id is negative or >= I.
        ValueError/TypeError: naming the argument (shape, dtype, device, range, unknown optimizer).
    """
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
    _checks.tensor("weight", weight, 2, _checks.FLOAT_DTYPES)
    _checks.tensor("exp_avg_sq", exp_avg_sq, 2, (torch.float32,))
    _checks.tensor("ids", ids, None, _checks.INDEX_DTYPES)
    _checks.tensor("grad", grad, None, _checks.FLOAT_DTYPES)
    _checks.tensor("exp_avg", exp_avg, None, (torch.float32,))
    if not weight.is_contiguous():
        raise ValueError("weight must be contiguous (it is updated in place)")
    if weight.requires_grad:
        raise ValueError("weight must not require grad: this op is its optimizer (keep it as a buffer)")
    num_items, d = weight.shape
    for name, state in (("exp_avg_sq", exp_avg_sq),) + ((("exp_avg", exp_avg),) if optimizer == "adam" else ()):
        if state.shape != weight.shape or not state.is_contiguous():
            raise ValueError(f"{name} must be a contiguous [{num_items}, {d}] tensor, got {tuple(state.shape)}")
    if grad.numel() != ids.numel() * d or (grad.dim() > 1 and grad.shape[-1] != d):
        raise ValueError(f"grad must hold one row of d = {d} values per id ({ids.numel()} ids), "
                         f"got shape {tuple(grad.shape)}")
    _checks.same_device(weight=weight, exp_avg=exp_avg, exp_avg_sq=exp_avg_sq, ids=ids, grad=grad)
    lr = _number("lr", lr, 0.0)
    beta1, beta2 = _number("beta1", beta1, 0.0, 1.0), _number("beta2", beta2, 0.0, 1.0)
    eps = _number("eps", eps, 0.0, closed_low=False)
    weight_decay = _number("weight_decay", weight_decay, 0.0)
    if isinstance(step, bool) or not isinstance(step, int) or step < 1:
        raise ValueError(f"step must be an int >= 1, got {step!r}")
    padding_idx = -1 if padding_idx is None else padding_idx
    if isinstance(padding_idx, bool) or not isinstance(padding_idx, int) or not -1 <= padding_idx < num_items:
        raise ValueError(f"padding_idx must be None or an int in [0, {num_items}), got {padding_idx!r}")
    compiled = weight.device.type == "cpu" and cpu_is_compiled("embedding_sparse_update")
    if ids.numel() and not torch.compiler.is_compiling() and not compiled:
        lo, hi = int(ids.min()), int(ids.max())  # the C++ kernel checks on its own pass
        if lo < 0 or hi >= num_items:
            raise IndexError(f"ids out of range: values in [{lo}, {hi}] but the table has {num_items} rows")
    with torch.no_grad():
        torch.ops.fastrec.embedding_sparse_update(weight, exp_avg, exp_avg_sq, ids, grad, optimizer, lr, beta1,
                                                  beta2, eps, weight_decay, step, padding_idx)
