"""Collaborative-token ops (SeLLa-Rec, CoLLM, LLaRA): build an LLM's inputs_embeds with slot rows spliced in.

    embeds = fastrec.ops.splice_collab_tokens(input_ids, token_weight, placeholder_ids, slot_values)
    embeds = fastrec.ops.collab_inputs_embeds(input_ids, token_weight, placeholder_ids,
                                              slot_ids, tables, projections)

`splice_collab_tokens` is a `torch.ops.fastrec.*` custom op: one pass writes every row of inputs_embeds
once (token row or slot row), with no nonzero(), no per-sample loop and no host sync in the kernel, so it
runs under torch.compile(fullgraph=True) and CUDA graphs. `collab_inputs_embeds` runs each slot type's
projection on its N_s gathered rows only (GEMMs on N rows, never on B x T) and splices the results.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from fastrec import reference
from fastrec.ops import _checks
from fastrec.ops._library import HAS_TRITON, define


def _triton(name: str):
    if not HAS_TRITON:
        return None
    from fastrec.kernels import collab as kernels

    return getattr(kernels, name)


define("splice_collab_tokens",
       "(Tensor input_ids, Tensor token_weight, Tensor placeholder_ids, Tensor slot_values, "
       "int[]? type_counts=None) -> (Tensor, Tensor)",
       reference.splice_collab_tokens, _triton("splice_collab_tokens"))


@torch.library.register_fake("fastrec::splice_collab_tokens")
def _(input_ids, token_weight, placeholder_ids, slot_values, type_counts=None):
    out = token_weight.new_empty(*input_ids.shape, token_weight.shape[1])
    return out, input_ids.new_empty(slot_values.shape[0], dtype=torch.int64)


# Backward: the slot rows' gradient is a gather of N rows of grad_output; the token table's gradient is an
# embedding backward over the non-placeholder positions (placeholders are sent to a spare row V, dropped).
def _splice_setup(ctx, inputs, output):
    input_ids, token_weight, _, _, _ = inputs
    ctx.vocab, ctx.weight_dtype = token_weight.shape[0], token_weight.dtype
    ctx.save_for_backward(input_ids if ctx.needs_input_grad[1] else None, output[1])


def _splice_backward(ctx, grad_out, grad_pos):
    input_ids, slot_pos = ctx.saved_tensors
    flat = grad_out.reshape(-1, grad_out.shape[-1])
    grad_values = flat.index_select(0, slot_pos) if ctx.needs_input_grad[3] else None
    grad_weight = None
    if ctx.needs_input_grad[1]:
        v = ctx.vocab
        ids = input_ids.reshape(-1).long().index_fill(0, slot_pos, v)
        src = flat if flat.dtype == torch.float32 else flat.float()  # fp32 accumulation
        grad_weight = torch.ops.aten.embedding_dense_backward(src, ids, v + 1, v, False)[:v]
        grad_weight = grad_weight.to(ctx.weight_dtype)
    return None, grad_weight, None, grad_values, None


torch.library.register_autograd("fastrec::splice_collab_tokens", _splice_backward, setup_context=_splice_setup)


def _may_sync(t: torch.Tensor, validate: bool) -> bool:
    """Value checks read data (a host sync on a GPU): only with validate, never while tracing or capturing.
    validate=False skips them on every device, as CollabTokenEmbedding does; on the CPU the C++ kernel and
    F.embedding still check ids and counts inside their own passes."""
    return validate and _checks.can_read(t)


def _check_ids_range(name: str, ids: torch.Tensor, size: int, what: str) -> None:
    if ids.numel() == 0:
        return
    lo, hi = int(ids.min()), int(ids.max())
    if lo < 0 or hi >= size:
        bad = lo if lo < 0 else hi
        raise IndexError(f"{name} holds id {bad}, outside {what} [0, {size})")


def _check_splice(input_ids, token_weight, placeholder_ids, validate: bool) -> None:
    _checks.tensor("input_ids", input_ids, 2, _checks.INDEX_DTYPES)
    _checks.tensor("token_weight", token_weight, 2, _checks.FLOAT_DTYPES)
    _checks.tensor("placeholder_ids", placeholder_ids, 1, _checks.INDEX_DTYPES)
    _checks.same_device(input_ids=input_ids, token_weight=token_weight, placeholder_ids=placeholder_ids)
    if token_weight.shape[0] == 0:
        raise ValueError("token_weight has no rows (V = 0)")
    if _may_sync(placeholder_ids, validate):
        _check_ids_range("placeholder_ids", placeholder_ids, token_weight.shape[0], "the vocabulary")
        if placeholder_ids.unique().numel() != placeholder_ids.numel():
            raise ValueError(f"placeholder_ids has repeated ids: {placeholder_ids.tolist()}")


def _check_counts(input_ids, placeholder_ids, token_weight, counts: list[int], validate: bool) -> None:
    """On CPU the C++ kernel checks ids and counts inside its pass; elsewhere this does (one host sync)."""
    from fastrec.ops._library import cpu_is_compiled

    if input_ids.device.type == "cpu" and cpu_is_compiled("splice_collab_tokens"):
        return
    if not _may_sync(input_ids, validate):
        return
    _check_ids_range("input_ids", input_ids, token_weight.shape[0], "the vocabulary")
    found = (input_ids.reshape(-1, 1) == placeholder_ids.reshape(1, -1)).sum(0).tolist()
    if len(counts) == 1 and len(found) > 1:
        found = [sum(found)]
    if found != counts:
        raise ValueError(f"input_ids holds {found} placeholder occurrences per type but {counts} slot rows "
                         "were given per type")


def splice_collab_tokens(input_ids: torch.Tensor, token_weight: torch.Tensor, placeholder_ids: torch.Tensor,
                         slot_values: torch.Tensor, validate: bool = True) -> torch.Tensor:
    """inputs_embeds [B, T, H]: token_weight[input_ids], except that placeholder positions take slot rows.

    Args:
        input_ids: [B, T] int32/int64 token ids in [0, V).
        token_weight: [V, H] the LLM's input embedding table (fp32/fp16/bf16).
        placeholder_ids: [S] the token ids that mark slots (distinct, inside the vocabulary).
        slot_values: [N, H], same dtype and device as token_weight, one row per placeholder occurrence in
            row-major order of input_ids. N must equal the number of occurrences.
        validate: check the placeholder ids, the input ids and the occurrence count (host syncs on a
            GPU); False skips them all, so neither the forward nor the backward ever waits on the device
            (the kernels clamp every id, so bad input still reads nothing out of bounds; on the CPU the C++
            kernel still raises for bad ids and counts). Skipped automatically under torch.compile and
            CUDA-graph capture.

    Differentiable in slot_values and token_weight (scatter-add over the non-placeholder positions).
    """
    _check_splice(input_ids, token_weight, placeholder_ids, validate)
    _checks.tensor("slot_values", slot_values, 2, _checks.FLOAT_DTYPES)
    _checks.same_device(token_weight=token_weight, slot_values=slot_values)
    _checks.same_dtype(token_weight=token_weight, slot_values=slot_values)
    if slot_values.shape[1] != token_weight.shape[1]:
        raise ValueError(f"slot_values has H={slot_values.shape[1]} but token_weight has H={token_weight.shape[1]}")
    _check_counts(input_ids, placeholder_ids, token_weight, [slot_values.shape[0]], validate)
    return torch.ops.fastrec.splice_collab_tokens(input_ids, token_weight, placeholder_ids, slot_values)[0]


Projection = Sequence[torch.Tensor]


def project_rows(rows: torch.Tensor, projection: Projection) -> torch.Tensor:
    """(W, b): Linear; (W1, b1, W2, b2): Linear -> GELU -> Linear. b may be None."""
    out = F.linear(rows, projection[0], projection[1])
    if len(projection) == 4:
        out = F.linear(F.gelu(out), projection[2], projection[3])
    return out


def _check_collab(slot_ids, tables, projections, placeholder_ids, token_weight, validate: bool) -> None:
    s = placeholder_ids.shape[0]
    for name, seq in (("slot_ids", slot_ids), ("tables", tables), ("projections", projections)):
        if len(seq) != s:
            raise ValueError(f"{name} needs one entry per placeholder id ({s}), got {len(seq)}")
    h = token_weight.shape[1]
    for k, (ids, table, proj) in enumerate(zip(slot_ids, tables, projections, strict=True)):
        _checks.tensor(f"slot_ids[{k}]", ids, 1, _checks.INDEX_DTYPES)
        _checks.tensor(f"tables[{k}]", table, 2, _checks.FLOAT_DTYPES)
        _checks.same_device(**{"token_weight": token_weight, f"tables[{k}]": table, f"slot_ids[{k}]": ids})
        _checks.same_dtype(**{"token_weight": token_weight, f"tables[{k}]": table})
        if len(proj) not in (2, 4):
            raise ValueError(f"projections[{k}] must be (W, b) or (W1, b1, W2, b2), got {len(proj)} tensors")
        for j, w in enumerate(proj):
            if w is None:
                continue
            _checks.tensor(f"projections[{k}][{j}]", w, None, _checks.FLOAT_DTYPES)
            _checks.same_device(**{"token_weight": token_weight, f"projections[{k}][{j}]": w})
            _checks.same_dtype(**{"token_weight": token_weight, f"projections[{k}][{j}]": w})
        if proj[0].shape[1] != table.shape[1]:
            raise ValueError(f"projections[{k}] takes d={proj[0].shape[1]} but tables[{k}] has d={table.shape[1]}")
        if proj[-2].shape[0] != h:
            raise ValueError(f"projections[{k}] outputs {proj[-2].shape[0]} but the model's H is {h}")
        if _may_sync(ids, validate):
            _check_ids_range(f"slot_ids[{k}]", ids, table.shape[0], f"the rows of tables[{k}]")


def splice_collab_rows(input_ids: torch.Tensor, token_weight: torch.Tensor, placeholder_ids: torch.Tensor,
                       values: Sequence[torch.Tensor], validate: bool = True) -> torch.Tensor:
    """Like :func:`splice_collab_tokens`, with the slot rows given per placeholder type.

    values[s] [N_s, H] holds one row per occurrence of placeholder_ids[s], in row-major order of input_ids
    (LLaRA-style prompts may hold any number of each). Differentiable in values and token_weight.
    """
    _check_splice(input_ids, token_weight, placeholder_ids, validate)
    if len(values) != placeholder_ids.shape[0]:
        raise ValueError(f"values needs one tensor per placeholder id ({placeholder_ids.shape[0]}), got {len(values)}")
    for k, v in enumerate(values):
        _checks.tensor(f"values[{k}]", v, 2, _checks.FLOAT_DTYPES)
        _checks.same_device(**{"token_weight": token_weight, f"values[{k}]": v})
        _checks.same_dtype(**{"token_weight": token_weight, f"values[{k}]": v})
        if v.shape[1] != token_weight.shape[1]:
            raise ValueError(f"values[{k}] has H={v.shape[1]} but token_weight has H={token_weight.shape[1]}")
    counts = [int(v.shape[0]) for v in values]
    _check_counts(input_ids, placeholder_ids, token_weight, counts, validate)
    rows = torch.cat(list(values)) if len(values) else token_weight.new_empty(0, token_weight.shape[1])
    return torch.ops.fastrec.splice_collab_tokens(input_ids, token_weight, placeholder_ids, rows, counts)[0]


def collab_inputs_embeds(input_ids: torch.Tensor, token_weight: torch.Tensor, placeholder_ids: torch.Tensor,
                         slot_ids: Sequence[torch.Tensor], tables: Sequence[torch.Tensor],
                         projections: Sequence[Projection], validate: bool = True) -> torch.Tensor:
    """SeLLa-Rec's inputs_embeds in one call: each placeholder takes its projected collaborative row.

    For slot type s (placeholder_ids[s]), occurrence k in row-major order of input_ids takes
    ``projection_s(tables[s][slot_ids[s][k]])``; every other position takes token_weight[input_ids].

    Args:
        input_ids: [B, T] token ids; token_weight: [V, H] the LLM's input embeddings.
        placeholder_ids: [S] distinct slot token ids (e.g. <User_ID>, <Item_ID>, <Warm_ID>).
        slot_ids: S tensors [N_s]: row of tables[s] per occurrence of placeholder s.
        tables: S tables [rows_s, d_s] (collaborative user / item / warm vectors).
        projections: S tuples, (W, b) for Linear or (W1, b1, W2, b2) for Linear -> GELU -> Linear.
        validate: see :func:`splice_collab_tokens`.

    Tables, projections and token_weight share dtype and device. Differentiable in all float inputs.
    """
    _check_splice(input_ids, token_weight, placeholder_ids, validate)
    _check_collab(slot_ids, tables, projections, placeholder_ids, token_weight, validate)
    if _fused_projection(token_weight, tables, projections):
        from fastrec.kernels import collab as kernels

        values = [kernels.project_gathered(table, ids, proj)
                  for ids, table, proj in zip(slot_ids, tables, projections, strict=True)]
    else:
        values = [project_rows(F.embedding(ids, table), proj)
                  for ids, table, proj in zip(slot_ids, tables, projections, strict=True)]
    return splice_collab_rows(input_ids, token_weight, placeholder_ids, values, validate)


def _fused_projection(token_weight: torch.Tensor, tables, projections) -> bool:
    """On CUDA without autograd (inference, generate), gather + projection run as one Triton kernel per layer;
    otherwise (CPU, or training) cuBLAS/oneDNN GEMMs on the N gathered rows, whose backward autograd knows."""
    if token_weight.device.type != "cuda" or not HAS_TRITON or torch.compiler.is_compiling():
        return False
    leaves = [*tables, *[w for proj in projections for w in proj if w is not None]]
    return not (torch.is_grad_enabled() and any(t.requires_grad for t in leaves))
