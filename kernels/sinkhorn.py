"""Triton kernel of LC-Rec's uniform semantic mapping: sinkhorn_assign, batched on the device.

The algebra is the CPU kernel's (csrc/cpu/sinkhorn.cpp), which is the reference's with the N x K matrix
factored out: after the global rescale to [-1, 1] the transport plan is always Q = diag(u) E diag(v) with
E_ij = exp(-(d_ij - min_k d_ik) * scale), scale = 1 / (amplitude * epsilon). The row shift and the
reference's global 1/sum(Q) are positive per-row factors: the first row pass recomputes u from scratch, so
they only keep exp() from overflowing, and a row's argmax of E_ij v_j never depends on u. Each iteration:

- row pass, one program per ROWS rows (in blocks of BLOCK_N): r_i = sum_j E_ij v_j, u_i = 1 / (N r_i),
  then the program's partial column sums sum_i u_i E_ij go to row `pid` of a [programs, K] float64 buffer;
- column reduce, one program per BLOCK_K columns: c_j = the partial sums added in program order (fixed
  tree inside a tile, fixed order across tiles: deterministic, no float atomics), v_j = 1 / (K c_j)
  (0 for a column no row reaches, as on the CPU).

E is recomputed from `distances` in every pass and never stored: the only N x K access is reading the
input (any strides, int64 offsets). Besides it the kernel keeps the row minima [N] and v [K] in float64,
u [N] when K spans several tiles (K > 1024), and the [programs, K] partial sums. The global min/max and
the scale are computed on the device, so the iteration loop is kernel launches only: no host sync
anywhere (it runs under CUDA-graph capture). The final pass takes each row's argmax of E_ij v_j, ties to
the lowest index.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from fastrec.kernels import device_guard
from fastrec.kernels import interpret as _interpret


@triton.jit
def _load_tile(d_ptr, rows, ks, N, K, s0, s1):
    """distances[rows, ks] as float64, and the in-bounds mask."""
    m = (rows < N)[:, None] & (ks < K)[None, :]
    x = tl.load(d_ptr + rows[:, None] * s0 + ks[None, :].to(tl.int64) * s1, mask=m, other=0.0)
    if x.dtype == tl.bfloat16:  # bf16 goes through fp32 (the interpreter has no bf16 -> fp64); exact
        x = x.to(tl.float32)
    return x.to(tl.float64), m


@triton.jit
def _e_tile(d_ptr, rows, ks, rmin, scale, N, K, s0, s1):
    """E = exp(-(d - row min) * scale), 0 outside the matrix."""
    x, m = _load_tile(d_ptr, rows, ks, N, K, s0, s1)
    e = tl.exp(-(tl.where(m, x, rmin[:, None]) - rmin[:, None]) * scale)  # exp(0) outside: no inf there
    return tl.where(m, e, 0.0)


@triton.jit(do_not_specialize=["N"])
def minmax_kernel(d_ptr, rmin_ptr, lo_ptr, hi_ptr, N, K, s0, s1,
                  ROWS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """Row minima (float64) and this program's min / max over its rows (for the global rescale)."""
    pid = tl.program_id(0)
    lo = tl.full([BLOCK_N], float("inf"), tl.float64)
    hi = tl.full([BLOCK_N], float("-inf"), tl.float64)
    for r0 in range(0, ROWS, BLOCK_N):
        rows = pid.to(tl.int64) * ROWS + r0 + tl.arange(0, BLOCK_N)
        row_lo = tl.full([BLOCK_N], float("inf"), tl.float64)
        for k0 in range(0, K, BLOCK_K):
            ks = k0 + tl.arange(0, BLOCK_K)
            x, m = _load_tile(d_ptr, rows, ks, N, K, s0, s1)
            row_lo = tl.minimum(row_lo, tl.min(tl.where(m, x, float("inf")), axis=1))
            hi = tl.maximum(hi, tl.max(tl.where(m, x, float("-inf")), axis=1))
        lo = tl.minimum(lo, row_lo)
        tl.store(rmin_ptr + rows, row_lo, mask=rows < N)
    tl.store(lo_ptr + pid, tl.min(lo, axis=0))
    tl.store(hi_ptr + pid, tl.max(hi, axis=0))


@triton.jit
def scale_kernel(lo_ptr, hi_ptr, eps_ptr, scale_ptr, P, BLOCK: tl.constexpr):
    """scale = 1 / (amplitude * epsilon) from the programs' min / max, as LC-Rec rescales to [-1, 1].
    epsilon comes in as a float64 tensor (a Python float argument would be rounded to fp32)."""
    epsilon = tl.load(eps_ptr)
    lo = tl.full([BLOCK], float("inf"), tl.float64)
    hi = tl.full([BLOCK], float("-inf"), tl.float64)
    for p0 in range(0, P, BLOCK):
        ps = p0 + tl.arange(0, BLOCK)
        lo = tl.minimum(lo, tl.load(lo_ptr + ps, mask=ps < P, other=float("inf")))
        hi = tl.maximum(hi, tl.load(hi_ptr + ps, mask=ps < P, other=float("-inf")))
    lo_all = tl.min(lo, axis=0)
    hi_all = tl.max(hi, axis=0)
    middle = (hi_all + lo_all) / 2
    amplitude = hi_all - middle + 1e-5
    tl.store(scale_ptr, 1.0 / (amplitude * epsilon))


@triton.jit(do_not_specialize=["N"])
def row_pass_kernel(d_ptr, rmin_ptr, scale_ptr, v_ptr, u_ptr, part_ptr, N, K, s0, s1,
                    ROWS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, ONE_TILE: tl.constexpr):
    """u_i = 1 / (N sum_j E_ij v_j) for this program's rows, then its partial column sums sum_i u_i E_ij."""
    pid = tl.program_id(0)
    scale = tl.load(scale_ptr)
    n = tl.cast(N, tl.float64)
    if ONE_TILE:  # K fits one tile: E stays in registers between the row sum and the column sums
        ks = tl.arange(0, BLOCK_K)
        v = tl.load(v_ptr + ks, mask=ks < K, other=0.0)
        col = tl.zeros([BLOCK_K], dtype=tl.float64)
        for r0 in range(0, ROWS, BLOCK_N):
            rows = pid.to(tl.int64) * ROWS + r0 + tl.arange(0, BLOCK_N)
            rmin = tl.load(rmin_ptr + rows, mask=rows < N, other=0.0)
            e = _e_tile(d_ptr, rows, ks, rmin, scale, N, K, s0, s1)
            r = tl.where(rows < N, tl.sum(e * v[None, :], axis=1), 1.0)
            u = tl.where(rows < N, 1.0 / (n * r), 0.0)
            col += tl.sum(u[:, None] * e, axis=0)
        tl.store(part_ptr + pid.to(tl.int64) * K + ks, col, mask=ks < K)
    else:  # two sweeps over the row: u (to memory) first, then the column sums tile by tile
        for r0 in range(0, ROWS, BLOCK_N):
            rows = pid.to(tl.int64) * ROWS + r0 + tl.arange(0, BLOCK_N)
            rmin = tl.load(rmin_ptr + rows, mask=rows < N, other=0.0)
            r = tl.zeros([BLOCK_N], dtype=tl.float64)
            for k0 in range(0, K, BLOCK_K):
                ks = k0 + tl.arange(0, BLOCK_K)
                v = tl.load(v_ptr + ks, mask=ks < K, other=0.0)
                r += tl.sum(_e_tile(d_ptr, rows, ks, rmin, scale, N, K, s0, s1) * v[None, :], axis=1)
            tl.store(u_ptr + rows, 1.0 / (n * tl.where(rows < N, r, 1.0)), mask=rows < N)
        tl.debug_barrier()  # u written by one thread is read by another below
        for k0 in range(0, K, BLOCK_K):
            ks = k0 + tl.arange(0, BLOCK_K)
            col = tl.zeros([BLOCK_K], dtype=tl.float64)
            for r0 in range(0, ROWS, BLOCK_N):
                rows = pid.to(tl.int64) * ROWS + r0 + tl.arange(0, BLOCK_N)
                rmin = tl.load(rmin_ptr + rows, mask=rows < N, other=0.0)
                u = tl.load(u_ptr + rows, mask=rows < N, other=0.0)
                col += tl.sum(u[:, None] * _e_tile(d_ptr, rows, ks, rmin, scale, N, K, s0, s1), axis=0)
            tl.store(part_ptr + pid.to(tl.int64) * K + ks, col, mask=ks < K)


@triton.jit
def column_reduce_kernel(part_ptr, v_ptr, P, K, BLOCK_P: tl.constexpr, BLOCK_K: tl.constexpr):
    """v_j = 1 / (K sum_p part[p, j]), the programs' sums added in a fixed order; 0 where no row reaches."""
    ks = tl.program_id(0) * BLOCK_K + tl.arange(0, BLOCK_K)
    c = tl.zeros([BLOCK_K], dtype=tl.float64)
    for p0 in range(0, P, BLOCK_P):
        ps = p0 + tl.arange(0, BLOCK_P)
        m = (ps < P)[:, None] & (ks < K)[None, :]
        c += tl.sum(tl.load(part_ptr + ps[:, None].to(tl.int64) * K + ks[None, :], mask=m, other=0.0), axis=0)
    v = 1.0 / (tl.cast(K, tl.float64) * tl.where(ks < K, c, 1.0))
    v = tl.where((v == v) & (tl.abs(v) < float("inf")), v, 0.0)
    tl.store(v_ptr + ks, v, mask=ks < K)


@triton.jit(do_not_specialize=["N"])
def argmax_kernel(d_ptr, rmin_ptr, scale_ptr, v_ptr, codes_ptr, N, K, s0, s1,
                  ROWS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """codes_i = argmax_j E_ij v_j: strict '>' across tiles, tie_break_left inside one (lowest index)."""
    pid = tl.program_id(0)
    scale = tl.load(scale_ptr)
    for r0 in range(0, ROWS, BLOCK_N):
        rows = pid.to(tl.int64) * ROWS + r0 + tl.arange(0, BLOCK_N)
        rmin = tl.load(rmin_ptr + rows, mask=rows < N, other=0.0)
        best = tl.full([BLOCK_N], -1.0, tl.float64)
        best_k = tl.zeros([BLOCK_N], dtype=tl.int64)
        for k0 in range(0, K, BLOCK_K):
            ks = k0 + tl.arange(0, BLOCK_K)
            v = tl.load(v_ptr + ks, mask=ks < K, other=0.0)
            m = (rows < N)[:, None] & (ks < K)[None, :]
            p = _e_tile(d_ptr, rows, ks, rmin, scale, N, K, s0, s1) * v[None, :]
            p = tl.where(m & (p == p), p, -1.0)  # outside the matrix and NaN never win
            tile_best = tl.max(p, axis=1)
            tile_k = tl.argmax(p, axis=1, tie_break_left=True).to(tl.int64) + k0
            take = tile_best > best
            best = tl.where(take, tile_best, best)
            best_k = tl.where(take, tile_k, best_k)
        tl.store(codes_ptr + rows, best_k, mask=rows < N)


# 2,048 float64 values per tile over 8 warps: ptxas -v (sm_90) gives the row pass 80 registers at K = 256 and
# 98 at K = 1024, no spill (4,096 values over 4 warps took 178 / 244: two CTAs per SM, too few to hide latency).
TILE_ELEMS, NUM_WARPS = 2048, 8


def blocks(K: int, interpret: bool) -> tuple[int, int, int]:
    """(ROWS per program, BLOCK_N, BLOCK_K). Fixed per shape (not per GPU), so the column sums' order, and
    with it every code, is the same on any device. Under the interpreter: few, large programs."""
    block_k = min(1024, max(16, triton.next_power_of_2(K)))  # K <= 1024 (LC-Rec: 256 or 512): E in registers
    block_n = (16384 if interpret else TILE_ELEMS) // block_k  # a [BLOCK_N, BLOCK_K] float64 tile per step
    return (1024 if interpret else 512), block_n, block_k


def sinkhorn_assign(distances: torch.Tensor, epsilon: float, iters: int,
                    block_k: int | None = None) -> torch.Tensor:
    """Triton Sinkhorn-Knopp assignment; distances [N, K] (checked by fastrec.ops), any strides.

    `block_k` overrides the column tile (tests use it to run the several-tiles path on small K).
    """
    N, K = distances.shape
    dev = distances.device
    codes = torch.empty(N, dtype=torch.int64, device=dev)
    if N == 0:
        return codes
    interpret = _interpret()
    rows, block_n, bk = blocks(K, interpret)
    if block_k is not None:
        bk, block_n = block_k, (16384 if interpret else TILE_ELEMS) // block_k
    block_n = min(block_n, rows)
    one_tile = K <= bk
    P = triton.cdiv(N, rows)
    f64 = dict(dtype=torch.float64, device=dev)
    s0, s1 = distances.stride()
    rmin, lo, hi = torch.empty(N, **f64), torch.empty(P, **f64), torch.empty(P, **f64)
    eps, scale, v = torch.full((1,), float(epsilon), **f64), torch.empty(1, **f64), torch.ones(K, **f64)
    part = torch.empty(P, K, **f64)
    u = rmin if one_tile else torch.empty(N, **f64)  # only the several-tiles path keeps u
    shape = (N, K, s0, s1)
    tiles = dict(ROWS=rows, BLOCK_N=block_n, BLOCK_K=bk, num_warps=NUM_WARPS)
    with device_guard(distances):
        minmax_kernel[(P,)](distances, rmin, lo, hi, *shape, **tiles)
        scale_kernel[(1,)](lo, hi, eps, scale, P, BLOCK=256)
        for _ in range(iters):
            row_pass_kernel[(P,)](distances, rmin, scale, v, u, part, *shape, **tiles, ONE_TILE=one_tile)
            column_reduce_kernel[(triton.cdiv(K, 64),)](part, v, P, K, BLOCK_P=64, BLOCK_K=64)
        argmax_kernel[(P,)](distances, rmin, scale, v, codes, *shape, **tiles)
    return codes
