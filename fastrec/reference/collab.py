"""Reference collaborative-token splicing: build inputs_embeds from token embeddings and slot rows.

Plain PyTorch, written for clarity (it uses nonzero, so it syncs with the host); imports nothing of fastrec.
"""

from __future__ import annotations

import torch


def slot_positions(input_ids: torch.Tensor, placeholder_ids: torch.Tensor,
                   type_counts: list[int] | None = None) -> torch.Tensor:
    """Flattened positions (into B*T) of the placeholder occurrences, in slot-row order.

    Row-major over all placeholders when `type_counts` is None; otherwise grouped by placeholder type
    (all occurrences of placeholder_ids[0] in row-major order, then placeholder_ids[1], ...).
    """
    flat = input_ids.reshape(-1)
    if type_counts is None:
        mask = (flat[:, None] == placeholder_ids[None, :]).any(1)
        return mask.nonzero().reshape(-1)
    return torch.cat([(flat == p).nonzero().reshape(-1) for p in placeholder_ids]
                     + [flat.new_empty(0, dtype=torch.int64)])


def splice_collab_tokens(input_ids: torch.Tensor, token_weight: torch.Tensor, placeholder_ids: torch.Tensor,
                         slot_values: torch.Tensor, type_counts: list[int] | None = None
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """inputs_embeds [B, T, H] = token_weight[input_ids] with placeholder positions replaced by slot rows.

    Returns (inputs_embeds, slot_pos int64 [N]): slot_pos[n] is the flattened position that row n fills.
    """
    pos = slot_positions(input_ids, placeholder_ids, type_counts)
    if pos.numel() != slot_values.shape[0]:
        raise ValueError(f"slot_values has {slot_values.shape[0]} rows but input_ids holds "
                         f"{pos.numel()} placeholder occurrences")
    if type_counts is not None:
        counts = [int((input_ids == p).sum()) for p in placeholder_ids]
        if counts != list(type_counts):
            raise ValueError(f"placeholder occurrences per type {counts} do not match type_counts {list(type_counts)}")
    h = token_weight.shape[1]
    out = token_weight[input_ids.reshape(-1).long()].clone()
    out[pos] = slot_values
    return out.reshape(*input_ids.shape, h), pos


def collab_inputs_embeds(input_ids: torch.Tensor, token_weight: torch.Tensor, placeholder_ids: torch.Tensor,
                         slot_ids: list[torch.Tensor], tables: list[torch.Tensor],
                         projections: list[tuple[torch.Tensor, ...]]) -> torch.Tensor:
    """Eager SeLLa-Rec splice: per slot type s, proj_s(tables[s][slot_ids[s]]) fills its placeholders.

    projections[s] is (W, b) for a Linear or (W1, b1, W2, b2) for Linear -> GELU -> Linear.
    """
    values = []
    for ids, table, proj in zip(slot_ids, tables, projections, strict=True):
        v = table[ids.long()]
        v = torch.nn.functional.linear(v, proj[0], proj[1])
        if len(proj) == 4:
            v = torch.nn.functional.linear(torch.nn.functional.gelu(v), proj[2], proj[3])
        values.append(v)
    out = token_weight[input_ids.long()].clone()
    for p, v in zip(placeholder_ids.tolist(), values, strict=True):
        mask = input_ids == p
        out[mask] = v
    return out
