"""Triton kernel of the fused sparse embedding optimizer (embedding_sparse_update).

The ids are sorted (stable, so equal ids keep their lookup order) and cut into one segment per distinct
row on the device with torch; then one program per row sums its segment's gradient rows in order (fp32,
deterministic, no atomics) and applies Adam or Adagrad to that row and its state in place.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl


@triton.jit(do_not_specialize=["num_rows"])
def sparse_update_kernel(w_ptr, m_ptr, v_ptr, g_ptr, pos_ptr, seg_ptr, rows_ptr, d, num_rows,
                         lr, beta1, beta2, eps, weight_decay, step_size, bc2_sqrt,
                         ADAM: tl.constexpr, BLOCK_D: tl.constexpr):
    s = tl.program_id(0)
    ks = tl.arange(0, BLOCK_D)
    kmask = ks < d
    start = tl.load(seg_ptr + s)
    end = tl.load(seg_ptr + s + 1)
    row = tl.load(rows_ptr + s).to(tl.int64)
    ok = (row >= 0) & (row < num_rows)  # bound check of its own (host checks vanish under compile)
    row = tl.where(ok, row, 0)
    mask = kmask & ok
    g = tl.zeros([BLOCK_D], dtype=tl.float32)
    for k in range(start, end):
        src = tl.load(pos_ptr + k).to(tl.int64)
        g += tl.load(g_ptr + src * d + ks, mask=mask, other=0.0).to(tl.float32)
    base = row * d + ks
    p = tl.load(w_ptr + base, mask=mask, other=0.0).to(tl.float32)
    g = g + weight_decay * p
    v = tl.load(v_ptr + base, mask=mask, other=0.0)
    if ADAM:
        m = tl.load(m_ptr + base, mask=mask, other=0.0)
        m = m + (1.0 - beta1) * (g - m)
        v = v * beta2 + (1.0 - beta2) * g * g
        p = p - step_size * m / (tl.sqrt(v) / bc2_sqrt + eps)
        tl.store(m_ptr + base, m, mask=mask)
    else:
        v = v + g * g
        p = p - lr * g / (tl.sqrt(v) + eps)
    tl.store(v_ptr + base, v, mask=mask)
    tl.store(w_ptr + base, p.to(w_ptr.dtype.element_ty), mask=mask)


def sparse_update(weight: torch.Tensor, exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor, ids: torch.Tensor,
                  grad: torch.Tensor, optimizer: str, lr: float, beta1: float, beta2: float, eps: float,
                  weight_decay: float, step: int, padding_idx: int) -> None:
    """In place: the rows of weight looked up by ids get the optimizer step of their summed gradient."""
    flat = ids.reshape(-1).long()
    d = weight.shape[1]
    grad = grad.reshape(flat.numel(), d).contiguous()
    keep = torch.nonzero(flat != padding_idx).flatten()
    if keep.numel() == 0:
        return
    sorted_ids, perm = torch.sort(flat[keep], stable=True)
    pos = keep[perm].contiguous()
    rows, counts = torch.unique_consecutive(sorted_ids, return_counts=True)
    seg = torch.zeros(rows.numel() + 1, dtype=torch.int64, device=flat.device)
    seg[1:] = torch.cumsum(counts, 0)
    adam = optimizer == "adam"
    step_size = lr / (1 - beta1**step) if adam else lr
    bc2_sqrt = math.sqrt(1 - beta2**step) if adam else 1.0
    sparse_update_kernel[(rows.numel(),)](
        weight, exp_avg if adam else exp_avg_sq, exp_avg_sq, grad, pos, seg, rows.contiguous(), d, weight.shape[0],
        lr, beta1, beta2, eps, weight_decay, step_size, bc2_sqrt, ADAM=adam,
        BLOCK_D=max(16, triton.next_power_of_2(d)))
