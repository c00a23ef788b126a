"""Triton kernel of the collaborative-token family: splice_collab_tokens.

The slot row of each position is a prefix count over the flattened placeholder mask (cumsum, on the
device: no host sync); then one program per (row block, H block) copies either the token row or the slot
row into the output, so every output row is written exactly once. Ids and slots are clamped before any
load, so even bad input never reads out of bounds (the count check lives in fastrec.ops).

gather_linear (SeLLa-Rec's projections of gathered rows): dots by kernels.dot_scheme (bf16/fp16 operands of
one dtype natively on tensor cores, a half operand against an fp32 one as tf32x3, fp32 against fp32 IEEE;
FASTREC_TF32=1: TF32, about 1e-3 relative), fp32 accumulation. On a GPU @triton.autotune picks the blocks per
(K, OUT) and dot scheme.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from fastrec.kernels import device_guard, dot_scheme, interpret, launch_autotuned


@triton.jit(do_not_specialize=["n"])
def splice_kernel(ids_ptr, slot_ptr, ph_ptr, pos_ptr, w_ptr, v_ptr, out_ptr, n, H, V, N, S,
                  FROM_RANK: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_H: tl.constexpr):
    """Rows [BLOCK_R] x columns [BLOCK_H] of the output. FROM_RANK: slot_ptr holds the inclusive prefix count of
    placeholders, and a position is a slot when its id is one of the S placeholder ids (and its rank < N);
    else slot_ptr holds the slot row (-1 for tokens). The first column block also writes pos[slot] = position
    (one writer per slot). One grid axis, column blocks fastest: programs launched together write one
    contiguous band of rows (a 2-D grid, row blocks fastest, had them write 512-byte pieces a row apart)."""
    col_blocks = tl.cdiv(H, BLOCK_H)
    pid = tl.program_id(0).to(tl.int64)
    rows = (pid // col_blocks) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = (pid % col_blocks) * BLOCK_H + tl.arange(0, BLOCK_H)
    rmask = rows < n
    ids = tl.load(ids_ptr + rows, mask=rmask, other=0).to(tl.int64)
    if FROM_RANK:
        is_ph = rows < 0
        for s in range(S):
            is_ph = is_ph | (ids == tl.load(ph_ptr + s).to(tl.int64))
        slot = tl.load(slot_ptr + rows, mask=rmask, other=0) - 1
        slot = tl.where(is_ph & (slot < N), slot, -1)
    else:
        slot = tl.load(slot_ptr + rows, mask=rmask, other=-1)
    is_slot = (slot >= 0) & (slot < N)
    if pid % col_blocks == 0:
        tl.store(pos_ptr + slot, rows, mask=rmask & is_slot)
    ids = tl.minimum(tl.maximum(ids, 0), V - 1)
    slot = tl.minimum(tl.maximum(slot, 0), tl.maximum(N - 1, 0))
    m = rmask[:, None] & (cols < H)[None, :]
    tok = tl.load(w_ptr + ids[:, None] * H + cols[None, :], mask=m & ~is_slot[:, None], other=0.0)
    val = tl.load(v_ptr + slot[:, None] * H + cols[None, :], mask=m & is_slot[:, None], other=0.0)
    tl.store(out_ptr + rows[:, None] * H + cols[None, :], tl.where(is_slot[:, None], val, tok), mask=m)


def slot_index(input_ids: torch.Tensor, placeholder_ids: torch.Tensor, n_rows: int,
               type_counts: list[int] | None) -> torch.Tensor:
    """The splice kernel's slot_ptr input [B*T] int64: the inclusive prefix count of placeholders (FROM_RANK)
    without type_counts, else the slot row of each position (-1 for tokens and for occurrences past a type's
    rows). Device ops only: no host sync."""
    flat = input_ids.reshape(-1)
    onehot = flat[:, None] == placeholder_ids[None, :]  # [B*T, S]
    if type_counts is None:
        return onehot.any(1).cumsum(0)
    # type s owns rows from sum(type_counts[:s]): added per column as Python scalars, because a tensor
    # built from the list here would be a host-to-device copy (no CUDA-graph capture)
    ranks = onehot.long().cumsum(0) - 1
    start = 0
    for s, count in enumerate(type_counts):
        if start:
            ranks[:, s] += start
        start += int(count)
    slot = ranks.gather(1, onehot.long().argmax(1, keepdim=True)).reshape(-1)
    return torch.where(onehot.any(1) & (slot < n_rows), slot, -1)


def splice_collab_tokens(input_ids: torch.Tensor, token_weight: torch.Tensor, placeholder_ids: torch.Tensor,
                         slot_values: torch.Tensor, type_counts: list[int] | None = None,
                         blocks: tuple[int, int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton splice; arguments checked by fastrec.ops. Returns (inputs_embeds, slot_pos [N]: the flat
    position each slot row went to, 0 for rows no placeholder took). blocks (BLOCK_R, BLOCK_H): tests only."""
    weight, values = token_weight.contiguous(), slot_values.contiguous()
    V, H = weight.shape
    N = values.shape[0]
    ph = placeholder_ids.contiguous()
    slot = slot_index(input_ids, ph, N, type_counts)
    ids = input_ids.reshape(-1).contiguous()
    out = torch.empty(*input_ids.shape, H, dtype=weight.dtype, device=weight.device)
    slot_pos = torch.zeros(N, dtype=torch.int64, device=weight.device)
    n = ids.numel()
    if n == 0 or H == 0:  # nothing to write (with H = 0 no gradient reads slot_pos)
        return out, slot_pos
    if blocks is None:  # the interpreter: few, large programs; a GPU: 16 rows x 256 columns a program
        wide = triton.next_power_of_2(H)
        blocks = (64, min(1024, wide)) if interpret() else (16, min(256, wide))
    block_r, block_h = blocks
    grid = (triton.cdiv(n, block_r) * triton.cdiv(H, block_h),)
    with device_guard(out):
        splice_kernel[grid](ids, slot, ph, slot_pos, weight, values, out, n, H, V, N, ph.numel(),
                            FROM_RANK=type_counts is None, BLOCK_R=block_r, BLOCK_H=block_h)
    return out, slot_pos


@triton.jit(do_not_specialize=["N", "ROWS"])
def gather_linear_kernel(ids_ptr, x_ptr, w_ptr, b_ptr, out_ptr, N, K, OUT, ROWS,
                         HAS_IDS: tl.constexpr, HAS_BIAS: tl.constexpr, GELU: tl.constexpr, UPCAST: tl.constexpr,
                         PRECISION: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_O: tl.constexpr,
                         BLOCK_K: tl.constexpr):
    """out[n] = act(x[ids[n]] @ W^T + b): the row gather is fused into the GEMM's A loads (fp32 accumulation)."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.program_id(1).to(tl.int64) * BLOCK_O + tl.arange(0, BLOCK_O)
    rmask, cmask = rows < N, cols < OUT
    src = rows
    if HAS_IDS:
        src = tl.load(ids_ptr + rows, mask=rmask, other=0).to(tl.int64)
        src = tl.minimum(tl.maximum(src, 0), ROWS - 1)
    acc = tl.zeros([BLOCK_N, BLOCK_O], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        kmask = ks < K
        a = tl.load(x_ptr + src[:, None] * K + ks[None, :], mask=rmask[:, None] & kmask[None, :], other=0.0)
        w = tl.load(w_ptr + cols[:, None] * K + ks[None, :], mask=cmask[:, None] & kmask[None, :], other=0.0)
        if UPCAST:
            a = a.to(tl.float32)
            w = w.to(tl.float32)
        acc = tl.dot(a, tl.trans(w), acc, input_precision=PRECISION)
    if HAS_BIAS:
        acc += tl.load(b_ptr + cols, mask=cmask, other=0.0).to(tl.float32)[None, :]
    if GELU:
        acc = 0.5 * acc * (1.0 + tl.math.erf(acc * 0.7071067811865476))
    tl.store(out_ptr + rows[:, None] * OUT + cols[None, :], acc, mask=rmask[:, None] & cmask[None, :])


_LINEAR_CONFIGS = [triton.Config({"BLOCK_N": bn, "BLOCK_O": bo, "BLOCK_K": bk}, num_warps=w, num_stages=st)
                   for bn, bo, bk, w, st in [(16, 64, 32, 4, 3), (32, 64, 32, 4, 3), (64, 64, 32, 4, 3),
                                             (64, 128, 32, 8, 3), (128, 128, 32, 8, 3), (64, 64, 64, 4, 3)]]


def _prune_linear(configs, named_args, **kwargs):
    """fp32 (upcast) operands go through FMA dots that hold both operand tiles in each thread: BLOCK_K = 64 then
    spilled 12 KB a thread (ptxas -v, sm_90, Triton 3.6), so they keep BLOCK_K <= 32."""
    if not kwargs.get("UPCAST", named_args.get("UPCAST", False)):
        return configs
    return [c for c in configs if c.kwargs["BLOCK_K"] <= 32] or configs[:1]


gather_linear_tuned = triton.autotune(_LINEAR_CONFIGS, key=["K", "OUT", "UPCAST", "PRECISION"],
                                      prune_configs_by={"early_config_prune": _prune_linear})(gather_linear_kernel)


def gather_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, ids: torch.Tensor | None = None,
                  gelu: bool = False) -> torch.Tensor:
    """act(x[ids] @ weight^T + bias) in one kernel ([N, O] in x's dtype); ids None means every row of x."""
    x, weight = x.contiguous(), weight.contiguous()
    n = ids.numel() if ids is not None else x.shape[0]
    k, o = x.shape[1], weight.shape[0]
    out = torch.empty(n, o, dtype=x.dtype, device=x.device)
    if n == 0 or o == 0:
        return out
    args = (ids if ids is not None else x, x, weight, bias if bias is not None else weight, out, n, k, o, x.shape[0])
    upcast, prec = dot_scheme(x.dtype, weight.dtype)
    flags = dict(HAS_IDS=ids is not None, HAS_BIAS=bias is not None, GELU=gelu, UPCAST=upcast, PRECISION=prec)
    with device_guard(out):
        if interpret():
            gather_linear_kernel[(triton.cdiv(n, 16), triton.cdiv(o, 64))](*args, **flags, BLOCK_N=16, BLOCK_O=64,
                                                                           BLOCK_K=64)
        else:
            grid = lambda meta: (triton.cdiv(n, meta["BLOCK_N"]), triton.cdiv(o, meta["BLOCK_O"]))  # noqa: E731
            launch_autotuned(gather_linear_tuned, grid, *args, **flags)
    return out


def project_gathered(table: torch.Tensor, ids: torch.Tensor, projection) -> torch.Tensor:
    """SeLLa-Rec's per-type projection of gathered rows: (W, b) Linear or (W1, b1, W2, b2) with GELU between."""
    if len(projection) == 2:
        return gather_linear(table, projection[0], projection[1], ids)
    hidden = gather_linear(table, projection[0], projection[1], ids, gelu=True)
    return gather_linear(hidden, projection[2], projection[3])
