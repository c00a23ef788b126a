"""Semantic-fusion lookup (KIRec): ID-row gather + semantic-row gather + reduction + fusion, one op.

    out = fastrec.ops.semantic_fusion_lookup(item_ids, id_table, semantic_table, weight, bias,
                                             mode="gate", fuse_weight=fw, fuse_bias=fb, padding_idx=0)

item_ids [B, L] -> out [B, L, d] with, per lookup i,
    e = id_table[i], s = semantic_table[i] @ weight^T + bias        (weight [d, D], as nn.Linear)
    add:    out = e + s
    gate:   g = sigmoid([e, s] @ fuse_weight^T + fuse_bias);  out = g * e + (1 - g) * s
    concat: out = [e, s] @ fuse_weight^T + fuse_bias               (fuse_weight [d, 2d])
and zero rows for `padding_idx`. Every output row depends on its item only, so the kernels reduce and
fuse once per *item* (the sorted unique ids of the batch, or the whole catalogue when I <= N lookups makes
that cheaper: `strategy="auto"`), then write the output rows in one pass. No [B, L, D] tensor exists in
the forward or the backward: the backward sums the output gradient per unique item (index_add) and
computes the weight gradient with one gathered-block GEMM (`semantic_fusion_weight_grad`).
Gradients flow to id_table, weight, bias, fuse_weight and fuse_bias; semantic_table is frozen.
"""

from __future__ import annotations

import torch

from fastrec import reference
from fastrec.ops import _checks
from fastrec.ops._library import HAS_TRITON, cpu_is_compiled, define
from fastrec.reference.fusion import device_unique_rows, fusion_rows

MODES = ("add", "gate", "concat")
STRATEGIES = {"auto": 0, "unique": 1, "table": 2}
DEVICE_UNIQUE = 3  # "unique" with static shapes (a device sort), chosen when the host may not read the ids


def _triton_lookup(item_ids, id_table, semantic_table, weight, bias, fuse_weight, fuse_bias, mode, padding_idx,
                   strategy):
    from fastrec.kernels import fusion as kernels

    # Padding only where a padding_idx is set (-1 means none, so the id -1 is just out of range). Ids outside
    # [0, I) are clamped before any gather: the checked entry point raises IndexError for them, but under
    # torch.compile or CUDA-graph capture that check is gone and the kernels must not read out of bounds.
    flat = item_ids.long().reshape(-1)
    valid = flat != padding_idx if padding_idx >= 0 else torch.ones_like(flat, dtype=torch.bool)
    flat = flat.clamp(0, id_table.shape[0] - 1)
    live = None
    if strategy == 2:  # the whole table: no data-dependent shape, so no host sync (CUDA-graph capture works)
        rows = torch.arange(id_table.shape[0], device=flat.device)
        inverse = torch.where(valid, flat, -1)
    elif strategy == DEVICE_UNIQUE:  # the unique ids by a device sort, in N static slots: no host sync either
        rows, inverse = device_unique_rows(flat, valid, id_table.shape[0])
        # the slots past the U unique ids are spare: their reductions are zero, and the kernel skips them
        live = inverse.amax().clamp(min=0) + 1 if inverse.numel() else None
    else:
        rows, inv_valid = fusion_rows(strategy, flat[valid], id_table.shape[0])
        inverse = torch.full_like(flat, -1)
        inverse[valid] = inv_valid
    reduced = kernels.gather_reduce(semantic_table, rows, weight, bias, live)
    out = kernels.fuse_gather(inverse, rows, id_table, reduced, fuse_weight, fuse_bias, mode)
    return out.view(*item_ids.shape, out.shape[-1]), rows, inverse.view(item_ids.shape), reduced


def _triton_weight_grad(rows, grad_reduced, semantic_table):
    from fastrec.kernels import fusion as kernels

    return kernels.weight_grad(rows, grad_reduced, semantic_table)


define("semantic_fusion_lookup",
       "(Tensor item_ids, Tensor id_table, Tensor semantic_table, Tensor weight, Tensor? bias, "
       "Tensor? fuse_weight, Tensor? fuse_bias, str mode, int padding_idx, int strategy) "
       "-> (Tensor, Tensor, Tensor, Tensor)",
       reference.semantic_fusion_lookup, _triton_lookup if HAS_TRITON else None)
define("semantic_fusion_weight_grad", "(Tensor rows, Tensor grad_reduced, Tensor semantic_table) -> Tensor",
       reference.semantic_fusion_weight_grad, _triton_weight_grad if HAS_TRITON else None)


@torch.library.register_fake("fastrec::semantic_fusion_lookup")
def _(item_ids, id_table, semantic_table, weight, bias, fuse_weight, fuse_bias, mode, padding_idx, strategy):
    u = torch.library.get_ctx().new_dynamic_size()
    d = id_table.shape[1]
    out = id_table.new_empty(*item_ids.shape, d)
    rows = item_ids.new_empty(u, dtype=torch.int64)
    inverse = item_ids.new_empty(item_ids.shape, dtype=torch.int64)
    return out, rows, inverse, id_table.new_empty(u, d, dtype=torch.float32)


@torch.library.register_fake("fastrec::semantic_fusion_weight_grad")
def _(rows, grad_reduced, semantic_table):
    return grad_reduced.new_empty(grad_reduced.shape[1], semantic_table.shape[1], dtype=torch.float32)


def _setup(ctx, inputs, output):
    item_ids, id_table, semantic_table, weight, bias, fuse_weight, fuse_bias, mode, padding_idx, strategy = inputs
    _, rows, inverse, reduced = output
    ctx.mode = mode
    ctx.dtypes = [None if t is None else t.dtype for t in (id_table, weight, bias, fuse_weight, fuse_bias)]
    ctx.num_items = id_table.shape[0]
    ctx.save_for_backward(rows, inverse, reduced, id_table, semantic_table, fuse_weight, fuse_bias)


def _fusion_backward(mode, grad, e, s, fuse_weight, fuse_bias):
    """Per unique item: (grad_e, grad_s, grad_fuse_weight, grad_fuse_bias), fp32."""
    if mode == "add":
        return grad, grad, None, None
    es = torch.cat([e, s], dim=1)
    fw = fuse_weight.float()
    if mode == "concat":
        grad_z = grad
        grad_e, grad_s = (grad_z @ fw).split(e.shape[1], dim=1)
    else:
        z = es @ fw.t()
        if fuse_bias is not None:
            z = z + fuse_bias.float()
        g = torch.sigmoid(z)
        grad_z = grad * (e - s) * g * (1 - g)
        grad_e, grad_s = (grad_z @ fw).split(e.shape[1], dim=1)
        grad_e = grad_e + grad * g
        grad_s = grad_s + grad * (1 - g)
    return grad_e, grad_s, grad_z.t() @ es, grad_z.sum(0)


def _backward(ctx, grad_out, grad_rows, grad_inverse, grad_reduced):
    rows, inverse, reduced, id_table, semantic_table, fuse_weight, fuse_bias = ctx.saved_tensors
    needs = ctx.needs_input_grad
    u, d = reduced.shape
    none = [None] * 10
    if grad_out is None:
        return tuple(none)
    # sum the output gradient per unique item (padding lookups go to a dropped extra row)
    inv = inverse.reshape(-1)
    slot = torch.where(inv >= 0, inv, u)
    grad_items = torch.zeros(u + 1, d, dtype=torch.float32, device=reduced.device)
    grad_items = grad_items.index_add_(0, slot, grad_out.reshape(-1, d).float())[:u]
    e = id_table[rows].float()  # gather, then convert (not the whole [I, d] table)
    grad_e, grad_s, grad_fw, grad_fb = _fusion_backward(ctx.mode, grad_items, e, reduced, fuse_weight, fuse_bias)
    if grad_reduced is not None:
        grad_s = grad_s + grad_reduced
    dt_id, dt_w, dt_b, dt_fw, dt_fb = ctx.dtypes
    out = none
    if needs[1]:
        # rows are unique but for DEVICE_UNIQUE's spare slots, whose gradient is exactly zero: adding into
        # zeros is then exact (and in place: an out-of-place index_add would clone the [I, d] zeros)
        out[1] = torch.zeros(id_table.shape, dtype=dt_id, device=e.device).index_add_(0, rows, grad_e.to(dt_id))
    if needs[3]:
        out[3] = torch.ops.fastrec.semantic_fusion_weight_grad(rows, grad_s, semantic_table).to(dt_w)
    if needs[4]:
        out[4] = grad_s.sum(0).to(dt_b)
    if needs[5] and grad_fw is not None:
        out[5] = grad_fw.to(dt_fw)
    if needs[6] and grad_fb is not None:
        out[6] = grad_fb.to(dt_fb)
    return tuple(out)


torch.library.register_autograd("fastrec::semantic_fusion_lookup", _backward, setup_context=_setup)


def _check(item_ids, id_table, semantic_table, weight, bias, fuse_weight, fuse_bias, mode, padding_idx,
           validate=True):
    _checks.tensor("item_ids", item_ids, None, _checks.INDEX_DTYPES)
    _checks.tensor("id_table", id_table, 2, _checks.FLOAT_DTYPES)
    _checks.tensor("semantic_table", semantic_table, 2, _checks.FLOAT_DTYPES)
    _checks.tensor("weight", weight, 2, _checks.FLOAT_DTYPES)
    params = {"id_table": id_table, "weight": weight}
    if bias is not None:
        params["bias"] = _checks.tensor("bias", bias, 1, _checks.FLOAT_DTYPES)
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if mode == "add" and (fuse_weight is not None or fuse_bias is not None):
        raise ValueError("fuse_weight and fuse_bias must be None for mode 'add'")
    if mode != "add":
        if fuse_weight is None:
            raise ValueError(f"fuse_weight [d, 2d] is required for mode {mode!r}")
        params["fuse_weight"] = _checks.tensor("fuse_weight", fuse_weight, 2, _checks.FLOAT_DTYPES)
        if fuse_bias is not None:
            params["fuse_bias"] = _checks.tensor("fuse_bias", fuse_bias, 1, _checks.FLOAT_DTYPES)
    _checks.same_device(item_ids=item_ids, semantic_table=semantic_table, **params)
    _checks.same_dtype(**params)
    num_items, d = id_table.shape
    if semantic_table.shape[0] != num_items:
        raise ValueError(f"semantic_table has {semantic_table.shape[0]} rows but id_table has {num_items}")
    if weight.shape[1] != semantic_table.shape[1]:
        raise ValueError(f"weight has D={weight.shape[1]} but semantic_table has D={semantic_table.shape[1]}")
    if weight.shape[0] != d:
        raise ValueError(f"weight has d={weight.shape[0]} but id_table has d={d}")
    if bias is not None and bias.shape[0] != d:
        raise ValueError(f"bias has {bias.shape[0]} entries, expected d={d}")
    if fuse_weight is not None and tuple(fuse_weight.shape) != (d, 2 * d):
        raise ValueError(f"fuse_weight must be [d, 2d] = [{d}, {2 * d}], got {tuple(fuse_weight.shape)}")
    if fuse_bias is not None and fuse_bias.shape[0] != d:
        raise ValueError(f"fuse_bias has {fuse_bias.shape[0]} entries, expected d={d}")
    if isinstance(padding_idx, bool) or not isinstance(padding_idx, int) or not -1 <= padding_idx < num_items:
        raise ValueError(f"padding_idx must be an int in [-1, {num_items}), got {padding_idx!r}")
    if not validate and item_ids.device.type != "cpu":  # no value check reads device memory
        return
    for name in ("fuse_weight", "fuse_bias"):  # weight and bias are checked through the reduced rows
        if name in params:
            _checks.finite(name, params[name])
    compiled = item_ids.device.type == "cpu" and cpu_is_compiled("semantic_fusion_lookup")
    if not compiled and _checks.can_read(item_ids) and item_ids.numel():
        lo, hi = int(item_ids.min()), int(item_ids.max())  # the C++ kernel checks this in its pass
        if lo < 0 or hi >= num_items:
            raise IndexError(f"item_ids out of range: values in [{lo}, {hi}] but the catalogue is [0, {num_items})")


def semantic_fusion_lookup(
    item_ids: torch.Tensor,
    id_table: torch.Tensor,
    semantic_table: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    mode: str = "add",
    fuse_weight: torch.Tensor | None = None,
    fuse_bias: torch.Tensor | None = None,
    padding_idx: int | None = None,
    strategy: str = "auto",
    validate: bool = True,
) -> torch.Tensor:
    """Fused ID + semantic lookup, reduction and fusion: item_ids [...] -> [..., d] in id_table's dtype.

    Args:
        item_ids: int32/int64 ids of any shape (typically [B, L]), each in [0, I).
        id_table: [I, d] learnable item-ID embeddings.
        semantic_table: [I, D] frozen semantic (LLM attribute) embeddings, any float dtype.
        weight, bias: the reduction Linear(D -> d): weight [d, D], bias [d] or None.
        mode: "add", "gate" or "concat" (see the module docstring).
        fuse_weight, fuse_bias: [d, 2d] and [d] for "gate" / "concat"; None for "add".
        padding_idx: id whose lookups give zero rows and no gradient (SASRec pads with 0); None for none.
        strategy: "auto" (cost rule), "unique" (reduce the unique ids of the batch) or "table" (reduce
            the whole catalogue); every choice gives the same values.
        validate: on CUDA, check the ids' range and NaN/Inf in the parameters and the looked-up rows (host
            syncs). With False (or under torch.compile / CUDA-graph capture) nothing is read on the host:
            forward and backward run without a sync, "unique" becomes a device sort into N static slots
            and "auto" decides by shapes only (the table when N >= 7/8 I); out-of-range ids are clamped
            inside the kernels. On the CPU the checks run inside the C++ pass either way.

    Raises:
        IndexError: an id is negative or >= I.
        ValueError: shape/dtype/device mismatch (naming the argument), unknown mode, NaN/Inf in a
            parameter or in a looked-up semantic row.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {tuple(STRATEGIES)}, got {strategy!r}")
    padding_idx = -1 if padding_idx is None else padding_idx
    _check(item_ids, id_table, semantic_table, weight, bias, fuse_weight, fuse_bias, mode, padding_idx, validate)
    code = STRATEGIES[strategy]
    if item_ids.device.type != "cpu" and not (validate and _checks.can_read(item_ids)) and code != 2:
        code = 2 if code == 0 and 8 * item_ids.numel() >= 7 * id_table.shape[0] else DEVICE_UNIQUE
    out, _, _, reduced = torch.ops.fastrec.semantic_fusion_lookup(
        item_ids, id_table, semantic_table, weight, bias, fuse_weight, fuse_bias, mode, padding_idx, code)
    if not validate and item_ids.device.type != "cpu":
        return out
    # The semantic table is too large to scan every call; the rows actually used are checked through their
    # reduction (U x d values), which is non-finite when a used row, the weight or the bias is.
    if _checks.can_read(reduced) and reduced.numel() and not bool(torch.isfinite(reduced).all()):
        for name, t in (("weight", weight), ("bias", bias)):
            if t is not None:
                _checks.finite(name, t)
        raise ValueError("semantic_table contains NaN or Inf in a looked-up row (its reduction is not finite)")
    return out


def semantic_fusion_weight_grad(rows: torch.Tensor, grad_reduced: torch.Tensor,
                                semantic_table: torch.Tensor) -> torch.Tensor:
    """grad_reduced [U, d]^T @ semantic_table[rows] -> [d, D] fp32, streamed in gathered blocks."""
    _checks.tensor("rows", rows, 1, _checks.INDEX_DTYPES)
    _checks.tensor("grad_reduced", grad_reduced, 2, _checks.FLOAT_DTYPES)
    _checks.tensor("semantic_table", semantic_table, 2, _checks.FLOAT_DTYPES)
    if rows.shape[0] != grad_reduced.shape[0]:
        raise ValueError(f"rows has {rows.shape[0]} entries but grad_reduced has {grad_reduced.shape[0]} rows")
    if rows.numel() and (int(rows.min()) < 0 or int(rows.max()) >= semantic_table.shape[0]):
        raise IndexError(f"rows out of range [0, {semantic_table.shape[0]})")
    return torch.ops.fastrec.semantic_fusion_weight_grad(rows, grad_reduced, semantic_table)
