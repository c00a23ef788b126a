"""Triton kernels of the semantic-fusion family (KIRec).

gather_reduce: reduced[u] = semantic_table[rows[u]] @ W^T + b, a gathered-row GEMM: a program owns
BLOCK_U unique rows and walks D in BLOCK_D slices with tl.dot (fp32 accumulation), so [U, D] never exists.
fuse_gather: one program per (lookup block, output column block): gathers the item's ID row and reduced
row, fuses them (add / gate / concat+project; the fusion matrix product is a GEMM tiled over k with tl.dot,
so no [d, d] weight tile sits in registers) and writes out (zero for padding).
weight_grad: grad_W [d, D] = G^T @ semantic_table[rows]; a program owns BLOCK_D columns and loops
over the unique rows, so there are no atomics and the sum order is fixed (deterministic).

Dots (fusion_dot): both operands fp16 or both bf16 run natively on tensor cores with fp32 accumulation. A bf16
semantic table against an fp32 weight (the usual KIRec case: a bf16 table of LLM embeddings, an fp32 Linear;
backward, the fp32 gradient) runs "bf16x3": the fp32 operand goes in as three bf16 planes that sum to it exactly
(kernels.bf16x3_planes, once a call), so three native bf16 dots give exact products and only the fp32
accumulation rounds; the table's tile is never converted. An fp16 table against fp32 runs tf32x3 (the half
operand is exact in tf32, so only the fp32 one is really split: product error <= 2^-22); fp32 against fp32 IEEE
fp32 dots. FASTREC_TF32=1 opts every fp32 operand into one TF32 dot (about 1e-3 relative). On a GPU the block
sizes of gather_reduce and weight_grad are chosen by @triton.autotune per (d, D, dot scheme) among a few
configs, pruned so the fp32 accumulator stays in registers at d = 256; under the interpreter one small config
runs.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from fastrec.kernels import bf16x3_planes, device_guard, dot_scheme, env_choice, launch_autotuned
from fastrec.kernels import interpret as _interpret

MODE_ID = {"add": 0, "gate": 1, "concat": 2}


@triton.jit(do_not_specialize=["U"])
def gather_reduce_kernel(sem_ptr, rows_ptr, w_ptr, b_ptr, live_ptr, out_ptr, U, D, d, HAS_BIAS: tl.constexpr,
                         HAS_LIVE: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
                         BLOCK_U: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DM: tl.constexpr):
    """HAS_LIVE: rows from *live_ptr on are spare slots (the device-unique layout: no lookup reads them); their
    output is zero, and a block of them only writes it (no loads, no dots). PRECISION "bf16x3": w_ptr holds the
    fp32 weight's three bf16 planes and each slice takes three bf16 dots (a bf16 table: exact products)."""
    start = tl.program_id(0).to(tl.int64) * BLOCK_U
    us = start + tl.arange(0, BLOCK_U)
    umask = us < U
    use = umask
    d_end = D
    if HAS_LIVE:
        live = tl.load(live_ptr)
        use = umask & (us < live)
        d_end = tl.where(start < live, D, 0)
    rows = tl.load(rows_ptr + us, mask=use, other=0)
    ks = tl.arange(0, BLOCK_DM)
    kmask = ks < d
    acc = tl.zeros([BLOCK_U, BLOCK_DM], dtype=tl.float32)
    for d0 in range(0, d_end, BLOCK_D):
        dims = d0 + tl.arange(0, BLOCK_D)
        dmask = dims < D
        s = tl.load(sem_ptr + rows[:, None] * D + dims[None, :], mask=use[:, None] & dmask[None, :], other=0.0)
        wmask = kmask[:, None] & dmask[None, :]
        if UPCAST:
            s = s.to(tl.float32)
        if PRECISION == "bf16x3":  # w_ptr: the weight's planes [3, d, D] (bf16x3_planes), the smallest first
            for p in tl.static_range(3):
                w = tl.load(w_ptr + ((2 - p) * d + ks).to(tl.int64)[:, None] * D + dims[None, :], mask=wmask,
                            other=0.0)
                if UPCAST:
                    w = w.to(tl.float32)
                acc = tl.dot(s, tl.trans(w), acc, input_precision="ieee")  # bf16: native; upcast: fp32
        else:
            w = tl.load(w_ptr + ks[:, None] * D + dims[None, :], mask=wmask, other=0.0)
            if UPCAST:
                w = w.to(tl.float32)
            acc = tl.dot(s, tl.trans(w), acc, input_precision=PRECISION)
    if HAS_BIAS:
        acc += tl.load(b_ptr + ks, mask=kmask, other=0.0).to(tl.float32)[None, :]
    if HAS_LIVE:
        acc = tl.where(use[:, None], acc, 0.0)
    tl.store(out_ptr + us[:, None] * d + ks[None, :], acc, mask=umask[:, None] & kmask[None, :])


@triton.jit(do_not_specialize=["N"])
def fuse_gather_kernel(inv_ptr, rows_ptr, id_ptr, red_ptr, fw_ptr, fb_ptr, out_ptr, N, d,
                       MODE: tl.constexpr, HAS_FB: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_J: tl.constexpr,
                       BLOCK_K: tl.constexpr):
    """Output columns [BLOCK_J] of BLOCK_N lookups. Gate/concat: z = [e, s] @ fuse_weight^T as a GEMM tiled over
    k (BLOCK_K), so no [d, d] weight tile is ever held in registers (that spilled ~500 bytes at d = 64, and at
    d = 256 its compile had not finished after 14 minutes)."""
    ns = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    nmask = ns < N
    inv = tl.load(inv_ptr + ns, mask=nmask, other=-1)
    valid = nmask & (inv >= 0)
    r = tl.where(valid, inv, 0)
    item = tl.load(rows_ptr + r, mask=valid, other=0)
    js = tl.program_id(1).to(tl.int64) * BLOCK_J + tl.arange(0, BLOCK_J)
    jmask = js < d
    m2 = valid[:, None] & jmask[None, :]
    e = tl.load(id_ptr + item[:, None] * d + js[None, :], mask=m2, other=0.0).to(tl.float32)
    s = tl.load(red_ptr + r[:, None] * d + js[None, :], mask=m2, other=0.0)
    if MODE == 0:
        out = e + s
    else:
        # fuse_weight [d, 2d]: z[n, j] = sum_k e[n, k] fw[j, k] + s[n, k] fw[j, d + k]
        z = tl.zeros([BLOCK_N, BLOCK_J], dtype=tl.float32)
        for k0 in range(0, d, BLOCK_K):
            ks = k0 + tl.arange(0, BLOCK_K)
            kmask = ks < d
            mk = valid[:, None] & kmask[None, :]
            ek = tl.load(id_ptr + item[:, None] * d + ks[None, :], mask=mk, other=0.0).to(tl.float32)
            sk = tl.load(red_ptr + r[:, None] * d + ks[None, :], mask=mk, other=0.0)
            wm = kmask[:, None] & jmask[None, :]
            we = tl.load(fw_ptr + js[None, :] * (2 * d) + ks[:, None], mask=wm, other=0.0).to(tl.float32)
            ws = tl.load(fw_ptr + js[None, :] * (2 * d) + d + ks[:, None], mask=wm, other=0.0).to(tl.float32)
            z = tl.dot(ek, we, z, input_precision="ieee")
            z = tl.dot(sk, ws, z, input_precision="ieee")
        if HAS_FB:
            z += tl.load(fb_ptr + js, mask=jmask, other=0.0).to(tl.float32)[None, :]
        if MODE == 2:
            out = z
        else:
            g = tl.sigmoid(z)
            out = s + g * (e - s)
    out = tl.where(m2, out, 0.0)
    tl.store(out_ptr + ns[:, None] * d + js[None, :], out.to(out_ptr.dtype.element_ty),
             mask=nmask[:, None] & jmask[None, :])


@triton.jit(do_not_specialize=["U"])
def weight_grad_kernel(sem_ptr, rows_ptr, g_ptr, out_ptr, U, D, d, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
                       BLOCK_U: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DM: tl.constexpr):
    """out[split] [d, D] (columns of this program's block) = g^T sem[rows] over this split's share of the U rows
    (grid axis 1: the splits; the caller sums them in a fixed order). PRECISION "bf16x3": g_ptr holds the fp32
    gradient's three bf16 planes [3, U, d] against a bf16 table (three bf16 dots a tile, exact products); else
    g is fp32 and the table's tile is upcast (UPCAST is then always set)."""
    dims = tl.program_id(0).to(tl.int64) * BLOCK_D + tl.arange(0, BLOCK_D)
    dmask = dims < D
    ks = tl.arange(0, BLOCK_DM)
    kmask = ks < d
    share = tl.cdiv(tl.cdiv(U, tl.num_programs(1)), BLOCK_U) * BLOCK_U
    lo = tl.program_id(1) * share
    hi = tl.minimum(lo + share, U)
    acc = tl.zeros([BLOCK_DM, BLOCK_D], dtype=tl.float32)
    for u0 in range(lo, hi, BLOCK_U):
        us = (u0 + tl.arange(0, BLOCK_U)).to(tl.int64)  # us * d below: int64 offsets
        umask = us < hi
        rows = tl.load(rows_ptr + us, mask=umask, other=0)
        s = tl.load(sem_ptr + rows[:, None] * D + dims[None, :], mask=umask[:, None] & dmask[None, :], other=0.0)
        gmask = umask[:, None] & kmask[None, :]
        if UPCAST:
            s = s.to(tl.float32)
        if PRECISION == "bf16x3":  # the smallest plane first
            for p in tl.static_range(3):
                g = tl.load(g_ptr + (us + (2 - p) * U.to(tl.int64))[:, None] * d + ks[None, :], mask=gmask, other=0.0)
                if UPCAST:
                    g = g.to(tl.float32)
                acc = tl.dot(tl.trans(g), s, acc, input_precision="ieee")
        else:
            g = tl.load(g_ptr + us[:, None] * d + ks[None, :], mask=gmask, other=0.0)
            acc = tl.dot(tl.trans(g), s, acc, input_precision=PRECISION)
    out = out_ptr + tl.program_id(1).to(tl.int64) * d * D
    tl.store(out + ks[:, None] * D + dims[None, :], acc, mask=kmask[:, None] & dmask[None, :])


def _fits(acc: int, tile_bytes: int, config, per_thread: int = 32) -> bool:
    """An fp32 accumulator of `acc` values stays in registers (`per_thread` a thread) and the operand tiles of a
    pipeline stage (`tile_bytes`) fit in shared memory. ptxas -v on sm_90 (offline): the configs kept at d = 64
    and 256 spill nothing with bf16 operands and at most 8 bytes with fp32 ones."""
    return acc <= per_thread * 32 * config.num_warps and tile_bytes * config.num_stages <= 160 * 1024


def _operands(kwargs: dict, named_args: dict) -> tuple[int, int, int]:
    """(planes of the fp32 operand, bytes an operand element, accumulator values a thread) of a launch's scheme:
    bf16x3 keeps both tiles bf16 (three planes of the fp32 one); upcast tiles take 4 bytes and twice the
    registers."""
    prec = kwargs.get("PRECISION", named_args.get("PRECISION", "ieee"))
    upcast = kwargs.get("UPCAST", named_args.get("UPCAST", True))
    if prec == "bf16x3":
        return 3, 2, 32
    return 1, 4, 16 if upcast else 32


def _scheme_configs(configs, planes: int) -> list:
    """The wide slices (_BF16X3_CONFIGS) only for bf16x3, whose tiles stay bf16 and are never split in registers:
    with upcast tf32x3 tiles (32, 128) spilled 40 bytes at 255 registers (ptxas -v, sm_90, Triton 3.6)."""
    return configs if planes == 3 else [c for c in configs if not any(c is w for w in _BF16X3_CONFIGS)]


def _prune_reduce(configs, named_args, **kwargs):  # accumulator [BLOCK_U, d], tiles [BLOCK_U + planes d, BLOCK_D]
    dm = _bdm(named_args["d"])
    planes, size, per_thread = _operands(kwargs, named_args)
    configs = _scheme_configs(configs, planes)
    fit = [c for c in configs if _fits(c.kwargs["BLOCK_U"] * dm,
                                       (c.kwargs["BLOCK_U"] + planes * dm) * c.kwargs["BLOCK_D"] * size, c, per_thread)]
    return fit or configs[:1]


def _prune_grad(configs, named_args, **kwargs):  # accumulator [d, BLOCK_D], tiles [BLOCK_U, planes d + BLOCK_D]
    dm = _bdm(named_args["d"])
    planes, size, _ = _operands(kwargs, named_args)
    configs = _scheme_configs(configs, planes)
    fit = [c for c in configs if _fits(dm * c.kwargs["BLOCK_D"],
                                       c.kwargs["BLOCK_U"] * (planes * dm + c.kwargs["BLOCK_D"]) * size, c)]
    return fit or configs[:1]


_CONFIGS = [triton.Config({"BLOCK_U": bu, "BLOCK_D": bd}, num_warps=w, num_stages=st)
            for bu, bd, w, st in [(16, 32, 4, 3), (32, 32, 4, 3), (64, 32, 4, 3), (16, 32, 8, 3), (32, 32, 8, 3),
                                  (32, 64, 8, 3), (64, 64, 8, 3), (128, 32, 8, 3)]]
# wider slices a program for bf16x3 only (more rows a weight slice in the reduction, more columns a gradient tile)
_BF16X3_CONFIGS = [triton.Config({"BLOCK_U": bu, "BLOCK_D": bd}, num_warps=8, num_stages=3)
                   for bu, bd in [(128, 64), (32, 128)]]
gather_reduce_tuned = triton.autotune(_CONFIGS + _BF16X3_CONFIGS, key=["d", "D", "UPCAST", "PRECISION"],
                                      prune_configs_by={"early_config_prune": _prune_reduce})(gather_reduce_kernel)
weight_grad_tuned = triton.autotune(_CONFIGS + _BF16X3_CONFIGS, key=["d", "D", "UPCAST", "PRECISION"],
                                    prune_configs_by={"early_config_prune": _prune_grad})(weight_grad_kernel)


def _bdm(d: int) -> int:
    return max(16, triton.next_power_of_2(d))


FUSION_DOTS = ("bf16x3", "tf32x3")


def fusion_dot(sem: torch.dtype, other: torch.dtype) -> tuple[bool, str]:
    """(upcast, input precision) of the reduction's dots, a semantic table of dtype `sem` against `other` (the
    weight forward, the fp32 gradient backward). A bf16 table against fp32 runs "bf16x3": the fp32 operand as
    three bf16 planes (kernels.bf16x3_planes), three native bf16 dots, exact products (Triton's tf32x3 upcasts
    the table's tile, splits both operands on every tile and runs three tf32 dots, each half bf16's rate; its
    products are off by up to 2^-22). FASTREC_FUSION_DOT=tf32x3 takes that scheme instead (to compare them on a
    GPU); FASTREC_TF32=1 one tf32 dot. The interpreter computes the bf16x3 dots in fp32 (upcast: still exact).
    Every other pair of dtypes: kernels.dot_scheme."""
    choice = env_choice("FASTREC_FUSION_DOT", FUSION_DOTS)
    tf32 = os.environ.get("FASTREC_TF32") == "1"
    if sem == torch.bfloat16 and other == torch.float32 and choice == "bf16x3" and not tf32:
        return _interpret(), "bf16x3"
    return dot_scheme(sem, other)


def gather_reduce(sem: torch.Tensor, rows: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                  live: torch.Tensor | None = None) -> torch.Tensor:
    """reduced [U, d] fp32 = sem[rows] @ weight^T + bias, without a [U, D] buffer. live (a 0-d int64 device
    tensor, read by the kernel: no host sync): rows from live on are spare slots, reduced to zero at no cost."""
    sem, weight = sem.contiguous(), weight.contiguous()
    U, D, d = rows.numel(), sem.shape[1], weight.shape[0]
    out = torch.empty(U, d, dtype=torch.float32, device=sem.device)
    if U == 0:
        return out
    if D == 0:  # an empty product: the bias alone (and no empty tensor's pointer goes to the launch)
        if bias is not None:
            out.copy_(bias.float().expand(U, d))
        else:
            out.zero_()
        if live is not None:
            out.masked_fill_((torch.arange(U, device=out.device) >= live)[:, None], 0.0)
        return out
    upcast, prec = fusion_dot(sem.dtype, weight.dtype)
    args = (sem, rows.contiguous(), bf16x3_planes(weight) if prec == "bf16x3" else weight,
            bias if bias is not None else weight, live if live is not None else rows, out, U, D, d)
    flags = dict(HAS_BIAS=bias is not None, HAS_LIVE=live is not None, UPCAST=upcast, PRECISION=prec,
                 BLOCK_DM=_bdm(d))
    with device_guard(sem):
        if _interpret():
            gather_reduce_kernel[(triton.cdiv(U, 64),)](*args, **flags, BLOCK_U=64, BLOCK_D=32)
        else:
            launch_autotuned(gather_reduce_tuned, lambda meta: (triton.cdiv(U, meta["BLOCK_U"]),), *args, **flags)
    return out


def fuse_blocks(d: int) -> tuple[int, int, int, int, int]:
    """fuse_gather's (BLOCK_N, BLOCK_J, BLOCK_K, num_warps, num_stages). The interpreter: few, large programs.
    A GPU: register-sized tiles in one stage; ptxas -v (sm_90, Triton 3.6 and 3.8, fp32 and bf16, every mode,
    tests/test_triton_compile.py) shows no spill, where (32, 64, 32) in 3 stages spilled 336 bytes."""
    if _interpret():
        return 128, min(256, _bdm(d)), min(256, _bdm(d)), 4, 1
    return 32, 32, 16, 4, 1


def fuse_gather(inverse: torch.Tensor, rows: torch.Tensor, id_table: torch.Tensor, reduced: torch.Tensor,
                fuse_weight: torch.Tensor | None, fuse_bias: torch.Tensor | None, mode: str) -> torch.Tensor:
    """out [N, d] (id_table dtype): fuse(id_table[rows[inv]], reduced[inv]) per lookup, zero where inv < 0."""
    N, d = inverse.numel(), id_table.shape[1]
    out = torch.empty(N, d, dtype=id_table.dtype, device=id_table.device)
    if N == 0 or d == 0:
        return out
    block_n, block_j, block_k, warps, stages = fuse_blocks(d)
    fw = fuse_weight.contiguous() if fuse_weight is not None else reduced
    grid = (triton.cdiv(N, block_n), triton.cdiv(d, block_j))
    with device_guard(out):
        fuse_gather_kernel[grid](
            inverse.contiguous(), rows.contiguous(), id_table.contiguous(), reduced.contiguous(), fw,
            fuse_bias if fuse_bias is not None else reduced, out, N, d, MODE=MODE_ID[mode],
            HAS_FB=fuse_bias is not None, BLOCK_N=block_n, BLOCK_J=block_j, BLOCK_K=block_k, num_warps=warps,
            num_stages=stages)
    return out


def _grad_splits(U: int) -> int:
    """Splits of the U rows (grid axis 1): D / BLOCK_D programs alone (64 at D = 4096) would leave most of a GPU
    idle, each walking every row; up to 16 splits of at least 1024 rows, summed after in a fixed order."""
    return max(1, min(16, triton.cdiv(U, 1024)))


def weight_grad(rows: torch.Tensor, grad_reduced: torch.Tensor, sem: torch.Tensor) -> torch.Tensor:
    """grad_W [d, D] fp32 = grad_reduced^T @ sem[rows]. Deterministic: no atomics, splits summed in order.

    The dot follows fusion_dot (grad_reduced is fp32): bf16x3 for a bf16 table (the gradient's three bf16 planes:
    exact products), tf32x3 for an fp16 one, IEEE fp32 for an fp32 one (one tf32 dot with FASTREC_TF32=1)."""
    U, d, D = rows.numel(), grad_reduced.shape[1], sem.shape[1]
    if U == 0 or D == 0:
        return torch.zeros(d, D, dtype=torch.float32, device=sem.device)
    splits = _grad_splits(U)
    out = torch.empty(splits, d, D, dtype=torch.float32, device=sem.device)
    grad = grad_reduced.float().contiguous()
    upcast, prec = fusion_dot(sem.dtype, torch.float32)
    args = (sem.contiguous(), rows.contiguous(), bf16x3_planes(grad) if prec == "bf16x3" else grad, out, U, D, d)
    flags = dict(UPCAST=upcast or prec != "bf16x3", PRECISION=prec, BLOCK_DM=_bdm(d))
    with device_guard(out):
        if _interpret():
            weight_grad_kernel[(triton.cdiv(D, 64), splits)](*args, **flags, BLOCK_U=64, BLOCK_D=64)
        else:
            launch_autotuned(weight_grad_tuned, lambda meta: (triton.cdiv(D, meta["BLOCK_D"]), splits), *args,
                             **flags)
    return out[0] if splits == 1 else out.sum(0)
