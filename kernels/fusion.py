"""Triton kernels of the semantic-fusion family (KIRec).

gather_reduce: reduced[u] = semantic_table[rows[u]] @ W^T + b, a gathered-row GEMM: a program owns
BLOCK_U unique rows and walks D in BLOCK_D slices with tl.dot (fp32, IEEE), so [U, D] never exists.
fuse_gather: one pass per output row block: gathers the item's ID row and reduced row, fuses them
(add / gate / concat+project, the fusion matrix product by tl.dot) and writes out (zero for padding).
weight_grad: grad_W [d, D] = G^T @ semantic_table[rows]; a program owns BLOCK_D columns and loops
over the unique rows, so there are no atomics and the sum order is fixed (deterministic).
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from fastrec.kernels import device_guard

MODE_ID = {"add": 0, "gate": 1, "concat": 2}


@triton.jit
def gather_reduce_kernel(sem_ptr, rows_ptr, w_ptr, b_ptr, out_ptr, U, D, d, HAS_BIAS: tl.constexpr,
                         BLOCK_U: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DM: tl.constexpr):
    us = tl.program_id(0).to(tl.int64) * BLOCK_U + tl.arange(0, BLOCK_U)
    umask = us < U
    rows = tl.load(rows_ptr + us, mask=umask, other=0)
    ks = tl.arange(0, BLOCK_DM)
    kmask = ks < d
    acc = tl.zeros([BLOCK_U, BLOCK_DM], dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        dims = d0 + tl.arange(0, BLOCK_D)
        dmask = dims < D
        s = tl.load(sem_ptr + rows[:, None] * D + dims[None, :], mask=umask[:, None] & dmask[None, :],
                    other=0.0).to(tl.float32)
        w = tl.load(w_ptr + ks[:, None] * D + dims[None, :], mask=kmask[:, None] & dmask[None, :],
                    other=0.0).to(tl.float32)
        acc += tl.dot(s, tl.trans(w), input_precision="ieee")
    if HAS_BIAS:
        acc += tl.load(b_ptr + ks, mask=kmask, other=0.0).to(tl.float32)[None, :]
    tl.store(out_ptr + us[:, None] * d + ks[None, :], acc, mask=umask[:, None] & kmask[None, :])


@triton.jit
def fuse_gather_kernel(inv_ptr, rows_ptr, id_ptr, red_ptr, fw_ptr, fb_ptr, out_ptr, N, d,
                       MODE: tl.constexpr, HAS_FB: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_DM: tl.constexpr):
    ns = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    nmask = ns < N
    inv = tl.load(inv_ptr + ns, mask=nmask, other=-1)
    valid = nmask & (inv >= 0)
    r = tl.where(valid, inv, 0)
    item = tl.load(rows_ptr + r, mask=valid, other=0)
    ks = tl.arange(0, BLOCK_DM)
    kmask = ks < d
    m2 = valid[:, None] & kmask[None, :]
    e = tl.load(id_ptr + item[:, None] * d + ks[None, :], mask=m2, other=0.0).to(tl.float32)
    s = tl.load(red_ptr + r[:, None] * d + ks[None, :], mask=m2, other=0.0)
    if MODE == 0:
        out = e + s
    else:
        wm = kmask[:, None] & kmask[None, :]
        # fuse_weight [d, 2d]: z[n, j] = sum_k e[n, k] fw[j, k] + s[n, k] fw[j, d + k]
        we = tl.load(fw_ptr + ks[None, :] * (2 * d) + ks[:, None], mask=wm, other=0.0).to(tl.float32)
        ws = tl.load(fw_ptr + ks[None, :] * (2 * d) + d + ks[:, None], mask=wm, other=0.0).to(tl.float32)
        z = tl.dot(e, we, input_precision="ieee") + tl.dot(s, ws, input_precision="ieee")
        if HAS_FB:
            z += tl.load(fb_ptr + ks, mask=kmask, other=0.0).to(tl.float32)[None, :]
        if MODE == 2:
            out = z
        else:
            g = tl.sigmoid(z)
            out = s + g * (e - s)
    out = tl.where(m2, out, 0.0)
    tl.store(out_ptr + ns[:, None] * d + ks[None, :], out.to(out_ptr.dtype.element_ty),
             mask=nmask[:, None] & kmask[None, :])


@triton.jit
def weight_grad_kernel(sem_ptr, rows_ptr, g_ptr, out_ptr, U, D, d, BLOCK_U: tl.constexpr, BLOCK_D: tl.constexpr,
                       BLOCK_DM: tl.constexpr):
    dims = tl.program_id(0).to(tl.int64) * BLOCK_D + tl.arange(0, BLOCK_D)
    dmask = dims < D
    ks = tl.arange(0, BLOCK_DM)
    kmask = ks < d
    acc = tl.zeros([BLOCK_DM, BLOCK_D], dtype=tl.float32)
    for u0 in range(0, U, BLOCK_U):
        us = u0 + tl.arange(0, BLOCK_U)
        umask = us < U
        rows = tl.load(rows_ptr + us, mask=umask, other=0)
        s = tl.load(sem_ptr + rows[:, None] * D + dims[None, :], mask=umask[:, None] & dmask[None, :],
                    other=0.0).to(tl.float32)
        g = tl.load(g_ptr + us[:, None] * d + ks[None, :], mask=umask[:, None] & kmask[None, :], other=0.0)
        acc += tl.dot(tl.trans(g), s, input_precision="ieee")
    tl.store(out_ptr + ks[:, None] * D + dims[None, :], acc, mask=kmask[:, None] & dmask[None, :])


def _interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def _bdm(d: int) -> int:
    return max(16, triton.next_power_of_2(d))


def gather_reduce(sem: torch.Tensor, rows: torch.Tensor, weight: torch.Tensor,
                  bias: torch.Tensor | None) -> torch.Tensor:
    """reduced [U, d] fp32 = sem[rows] @ weight^T + bias, without a [U, D] buffer."""
    sem, weight = sem.contiguous(), weight.contiguous()
    U, D, d = rows.numel(), sem.shape[1], weight.shape[0]
    out = torch.empty(U, d, dtype=torch.float32, device=sem.device)
    if U == 0:
        return out
    if D == 0:  # an empty product: the bias alone (and no empty tensor's pointer goes to the launch)
        return out.copy_(bias.float().expand(U, d)) if bias is not None else out.zero_()
    block_u = 64 if _interpret() else 32
    grid = (triton.cdiv(U, block_u),)
    with device_guard(sem):
        gather_reduce_kernel[grid](sem, rows.contiguous(), weight, bias if bias is not None else weight, out, U, D,
                                   d, HAS_BIAS=bias is not None, BLOCK_U=block_u, BLOCK_D=32, BLOCK_DM=_bdm(d))
    return out


def fuse_gather(inverse: torch.Tensor, rows: torch.Tensor, id_table: torch.Tensor, reduced: torch.Tensor,
                fuse_weight: torch.Tensor | None, fuse_bias: torch.Tensor | None, mode: str) -> torch.Tensor:
    """out [N, d] (id_table dtype): fuse(id_table[rows[inv]], reduced[inv]) per lookup, zero where inv < 0."""
    N, d = inverse.numel(), id_table.shape[1]
    out = torch.empty(N, d, dtype=id_table.dtype, device=id_table.device)
    if N == 0:
        return out
    block_n = 128 if _interpret() else 32
    fw = fuse_weight.contiguous() if fuse_weight is not None else reduced
    with device_guard(out):
        fuse_gather_kernel[(triton.cdiv(N, block_n),)](
            inverse.contiguous(), rows.contiguous(), id_table.contiguous(), reduced.contiguous(), fw,
            fuse_bias if fuse_bias is not None else reduced, out, N, d, MODE=MODE_ID[mode],
            HAS_FB=fuse_bias is not None, BLOCK_N=block_n, BLOCK_DM=_bdm(d))
    return out


def weight_grad(rows: torch.Tensor, grad_reduced: torch.Tensor, sem: torch.Tensor) -> torch.Tensor:
    """grad_W [d, D] fp32 = grad_reduced^T @ sem[rows]."""
    U, d, D = rows.numel(), grad_reduced.shape[1], sem.shape[1]
    out = torch.zeros(d, D, dtype=torch.float32, device=sem.device)
    if U == 0:
        return out
    if D == 0:
        return out
    block_d = 64
    with device_guard(out):
        weight_grad_kernel[(triton.cdiv(D, block_d),)](
            sem.contiguous(), rows.contiguous(), grad_reduced.float().contiguous(), out, U, D, d,
            BLOCK_U=64 if _interpret() else 32, BLOCK_D=block_d, BLOCK_DM=_bdm(d))
    return out
