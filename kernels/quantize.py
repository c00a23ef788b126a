"""Triton kernels of the residual-quantization family.

nearest_code: a program owns BLOCK_N rows; it walks the codebook in BLOCK_K tiles, computes the ranking
||c||^2 - 2 x.c with tl.dot in fp32 (IEEE, not TF32, so ranks match the reference), keeps a running
argmin (strict '<' across tiles and tie_break_left inside a tile: ties go to the lowest index), and
finally recomputes the exact squared distance of the winner. The N x K matrix never exists.
A NaN row never beats the start value, so it gets code 0 and a NaN distance, as in every backend.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from fastrec.kernels import device_guard


@triton.jit
def _dot_tile(x_ptr, c_ptr, rows, ks, N, K, D, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
              BLOCK_D: tl.constexpr):
    """x[rows] . c[ks]^T accumulated over D in BLOCK_D slices, fp32."""
    acc = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        dims = d0 + tl.arange(0, BLOCK_D)
        dmask = dims < D
        xt = tl.load(x_ptr + rows[:, None] * D + dims[None, :], mask=(rows < N)[:, None] & dmask[None, :],
                     other=0.0).to(tl.float32)
        ct = tl.load(c_ptr + ks[:, None] * D + dims[None, :], mask=(ks < K)[:, None] & dmask[None, :],
                     other=0.0).to(tl.float32)
        acc += tl.dot(xt, tl.trans(ct), input_precision="ieee")
    return acc


@triton.jit
def nearest_code_kernel(x_ptr, c_ptr, norm_ptr, index_ptr, dist_ptr, N, K, D,
                        BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    best = tl.full([BLOCK_N], float("inf"), tl.float32)
    best_k = tl.zeros([BLOCK_N], dtype=tl.int64)
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K).to(tl.int64)
        dot = _dot_tile(x_ptr, c_ptr, rows, ks, N, K, D, BLOCK_N, BLOCK_K, BLOCK_D)
        norms = tl.load(norm_ptr + ks, mask=ks < K, other=float("inf"))
        dist = norms[None, :] - 2.0 * dot
        dist = tl.where(dist == dist, dist, float("inf"))  # NaN never wins (a NaN row keeps code 0)
        tile_best = tl.min(dist, axis=1)
        tile_k = tl.argmin(dist, axis=1, tie_break_left=True).to(tl.int64) + k0
        take = tile_best < best
        best = tl.where(take, tile_best, best)
        best_k = tl.where(take, tile_k, best_k)
    # exact distance of the winner (the expanded form cancels badly when x is close to c)
    exact = tl.zeros([BLOCK_N], dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        dims = d0 + tl.arange(0, BLOCK_D)
        m = (rows < N)[:, None] & (dims < D)[None, :]
        xt = tl.load(x_ptr + rows[:, None] * D + dims[None, :], mask=m, other=0.0).to(tl.float32)
        ct = tl.load(c_ptr + best_k[:, None] * D + dims[None, :], mask=m, other=0.0).to(tl.float32)
        diff = xt - ct
        exact += tl.sum(diff * diff, axis=1)
    tl.store(index_ptr + rows, best_k, mask=rows < N)
    tl.store(dist_ptr + rows, exact, mask=rows < N)


def _blocks(D: int, interpret: bool) -> tuple[int, int, int]:
    block_d = min(64, max(16, triton.next_power_of_2(D)))
    # Under the interpreter every program costs milliseconds: few, large programs.
    return (128 if interpret else 64), 64, block_d


def nearest_code(x: torch.Tensor, codebook: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton nearest-code search; x [N, D], codebook [K, D] (checked by fastrec.ops)."""
    import os

    x = x.contiguous()
    codebook = codebook.contiguous()
    N, D = x.shape
    K = codebook.shape[0]
    index = torch.empty(N, dtype=torch.int64, device=x.device)
    dist = torch.empty(N, dtype=torch.float32, device=x.device)
    if N == 0 or D == 0:  # D = 0: every distance is 0, code 0 wins (and an empty row has no pointer to pass)
        return index.zero_(), dist.zero_()
    norms = codebook.float().pow(2).sum(1).contiguous()
    block_n, block_k, block_d = _blocks(D, os.environ.get("TRITON_INTERPRET") == "1")
    grid = (triton.cdiv(N, block_n),)
    with device_guard(x):
        nearest_code_kernel[grid](x, codebook, norms, index, dist, N, K, D,
                                  BLOCK_N=block_n, BLOCK_K=block_k, BLOCK_D=block_d)
    return index, dist


def residual_encode(x: torch.Tensor, codebooks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy residual quantization, one nearest_code launch per level on an fp32 residual."""
    residual = x.to(torch.float32, copy=True).contiguous()
    quantized = torch.zeros_like(residual)
    codes = torch.empty(x.shape[0], codebooks.shape[0], dtype=torch.int64, device=x.device)
    for level, codebook in enumerate(codebooks.float()):
        index, _ = nearest_code(residual, codebook)
        chosen = codebook[index]
        residual -= chosen
        quantized += chosen
        codes[:, level] = index
    return codes, quantized.to(x.dtype)
