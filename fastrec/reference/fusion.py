"""Reference semantic-fusion lookup (KIRec): ID-row gather + semantic-row gather + reduction + fusion.

Clear, not fast: it materialises the gathered semantic rows. Imports nothing of fastrec.
"""

from __future__ import annotations

import torch

MODES = ("add", "gate", "concat")


def fusion_rows(strategy: int, valid_ids: torch.Tensor, num_items: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The rows whose reduction is computed, and where each valid lookup finds its row among them.

    strategy 1 ("unique") reduces the sorted unique ids looked up; strategy 2 ("table") the whole
    catalogue (rows = 0..I-1); strategy 0 takes the table when the batch touches at least 7/8 of the
    catalogue (it then costs at most 1/7 more than the unique rows), as every backend does. Strategy 3
    is "unique" without a host sync (see device_unique_rows); the C++ CPU kernel treats it as 1.
    """
    if strategy == 3:
        return device_unique_rows(valid_ids, torch.ones_like(valid_ids, dtype=torch.bool), num_items)
    if strategy != 2:
        rows, inverse = torch.unique(valid_ids, sorted=True, return_inverse=True)
        if strategy == 1 or 8 * rows.numel() < 7 * num_items:
            return rows, inverse
    return torch.arange(num_items, device=valid_ids.device), valid_ids


def device_unique_rows(flat: torch.Tensor, valid: torch.Tensor, num_items: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows [N], inverse [N]) for N lookups `flat` (ids in [0, I)) of which `valid` count, with static
    shapes and no host sync: one device sort, then segment starts and a cumsum give each lookup its
    unique slot. rows[:U] are the sorted unique valid ids (U is never read on the host); the slots past U
    repeat the largest id looked up (no lookup points at them, so their gradient is exactly zero);
    inverse is -1 where `valid` is False."""
    n = flat.numel()
    key, order = torch.sort(torch.where(valid, flat, num_items))  # invalid lookups sort last
    new = torch.ones(n, dtype=torch.bool, device=flat.device)
    new[1:] = key[1:] != key[:-1]
    slot = torch.cumsum(new, 0) - 1
    inverse = torch.empty_like(slot).scatter_(0, order, slot)
    rows = torch.full_like(key, -1).scatter_reduce_(0, slot, key, "amax")
    fill = torch.where(valid, flat, 0).amax() if n else flat.new_zeros(())
    rows = torch.where((rows >= 0) & (rows < num_items), rows, fill)
    return rows, torch.where(valid, inverse, -1)


def fuse(e: torch.Tensor, s: torch.Tensor, fuse_weight, fuse_bias, mode: str) -> torch.Tensor:
    """Fusion of ID rows e [n, d] and reduced semantic rows s [n, d] (fp32)."""
    if mode == "add":
        return e + s
    z = torch.cat([e, s], dim=1) @ fuse_weight.float().t()
    if fuse_bias is not None:
        z = z + fuse_bias.float()
    if mode == "concat":
        return z
    g = torch.sigmoid(z)
    return g * e + (1 - g) * s


def semantic_fusion_lookup(
    item_ids: torch.Tensor,
    id_table: torch.Tensor,
    semantic_table: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    fuse_weight: torch.Tensor | None,
    fuse_bias: torch.Tensor | None,
    mode: str,
    padding_idx: int,
    strategy: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """item_ids [B, L] -> (out [B, L, d], rows [U], inverse [B, L], reduced [U, d] fp32).

    out = fuse(id_table[i], semantic_table[i] @ weight.T + bias); lookups of `padding_idx` give zero rows
    and inverse -1. rows/inverse/reduced are what the backward needs (see fusion_rows).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    ids = item_ids.long()
    flat = ids.reshape(-1)
    valid = flat != padding_idx
    if strategy == 3:  # static shapes, no host sync
        rows, inverse = device_unique_rows(flat.clamp(0, max(id_table.shape[0] - 1, 0)), valid, id_table.shape[0])
    else:
        rows, inv_valid = fusion_rows(strategy, flat[valid], id_table.shape[0])
        inverse = torch.full_like(flat, -1)
        inverse[valid] = inv_valid
    reduced = semantic_table.float()[rows] @ weight.float().t()
    if bias is not None:
        reduced = reduced + bias.float()
    fused = fuse(id_table.float()[rows], reduced, fuse_weight, fuse_bias, mode)
    out = torch.where(valid[:, None], fused[inverse.clamp(min=0)], 0.0) if rows.numel() else \
        torch.zeros(flat.numel(), id_table.shape[1], dtype=torch.float32, device=id_table.device)
    return out.to(id_table.dtype).view(*ids.shape, id_table.shape[1]), rows, inverse.view(ids.shape), reduced


def semantic_fusion_weight_grad(rows: torch.Tensor, grad_reduced: torch.Tensor,
                                semantic_table: torch.Tensor) -> torch.Tensor:
    """Gradient of the reduction weight: grad_reduced [U, d]^T @ semantic_table[rows] [U, D] -> [d, D] fp32."""
    return grad_reduced.float().t() @ semantic_table.float()[rows]


def semantic_fusion(item_ids, id_table, semantic_table, weight, bias=None, fuse_weight=None, fuse_bias=None,
                    mode: str = "add", padding_idx: int = -1) -> torch.Tensor:
    """The plain eager composition (two lookups, a Linear, the fusion), differentiable by autograd."""
    ids = item_ids.long()
    e = id_table[ids].float()
    s = torch.nn.functional.linear(semantic_table[ids].float(), weight.float(),
                                   None if bias is None else bias.float())
    shape = e.shape
    out = fuse(e.reshape(-1, shape[-1]), s.reshape(-1, shape[-1]), fuse_weight, fuse_bias, mode).view(shape)
    if padding_idx >= 0:
        out = out * (ids != padding_idx).unsqueeze(-1)
    return out.to(id_table.dtype)
