"""Triton kernels of the residual-quantization family: nearest_code and residual_encode, the CUDA backend of both.

One kernel, `encode_kernel`, serves both ops (nearest_code is one level without `quantized`). A program owns
BLOCK_N rows and walks all L levels in one launch; each row's fp32 residual stays in registers when D <= 128
(otherwise in an fp32 scratch buffer it alone reads and writes). Per level:

  pass 1  over BLOCK_K code tiles: the distance GEMM on tensor cores gives A_j = ||c_j||^2 - 2 r.c_j, by
          tl.dot(input_precision="tf32x3") (three tf32 dots over a hi/lo split of both operands: an error
          near fp32's; FASTREC_QUANTIZE_DOT=tf32 takes one tf32 dot); with a per-(row, code) error bound B_j
          it keeps U = min_j (A_j + B_j) and the three smallest A_j - B_j, the first two with their codes
          (each per column slot of the tile, elementwise in registers, merged across the slots once at the
          end: the loop body has no cross-thread reduction).
          Every code with A_j - B_j <= U is a candidate, and the exact winner is always one (below). B_j is
          split into a per-row, a per-code and a product term (`_approx`), so A_j -+ B_j cost two FMAs an
          element each (and few live tiles: register pressure sets how many programs share a multiprocessor);
  resolve when every row of the block has its third smallest A - B above U, a row's candidates are its first
          code (always one) and its second (when <= U): their exact fp32 distances E_j = sum_d (r_d - c_jd)^2
          (the gathered code rows) decide, ties to the lower index (fastrec::better in
          csrc/common/quantize.h, torch.argmin in the reference). With tf32x3 dots most blocks end here
          (the bound simulated in float64 on random data, D = 64, K = 512: ~4% of 64-row blocks go on to
          pass 2; with one tf32 dot ~90% would);
  pass 2  otherwise recomputes the tiles and computes E_j of every candidate, lowest index first.

Why the codes equal exact fp32 search. Let E_j be the fp32 distance a code would get from the exact search.
If |A_j + ||r||^2 - E_j| <= B_j for every j, the exact winner w (E_w <= E_i for all i) satisfies
A_w - B_w <= E_w - ||r||^2 <= E_i - ||r||^2 <= A_i + B_i for every i, so A_w - B_w <= U: the winner is always a
candidate, and among candidates the exact E decides. The ||r||^2 term cancels (it is never computed in A).
B_j = 2 * (2 p ||r|| ||c_j|| + g (||r|| + ||c_j||)^2), u = 2^-10, g = (2D + 16) 2^-20, p = 2u + u^2 for one tf32
dot and 3u^2 + 4u^3 for tf32x3, bounds:
  - tf32 operands: each rounded operand carries a relative error <= u (2^-11 for round-to-nearest; 2^-10 also
    covers truncation), so |r~.c~ - r.c| <= (2u + u^2) sum_d |r_d c_jd| <= (2u + u^2) ||r|| ||c_j||
    (Cauchy-Schwarz), twice in A; tf32x3 (r = hi + lo + e, |lo| <= (1 + u) u |r|, |e| <= u^2 |r|; the
    products hi hi, hi lo and lo hi are exact in fp32) misses lo lo and the e terms: <= (3u^2 + 4u^3) |r| |c|;
  - fp32 accumulation of the dot (<= D 2^-23 sum |r_d c_jd|, 2^-23 a step covers a truncating accumulator;
    g allows 2^-20 a step, so an accumulator up to 3 bits worse than fp32 is still covered, at no cost: the
    tf32 term dominates B by two orders of magnitude),
    of ||c_j||^2 (torch, <= D 2^-24 ||c_j||^2), of A itself and of E (<= (D + 3) 2^-24 E), and the fp32
    roundings of A - B, A + B (each a few operations on its split terms) and the min, all below
    g (||r|| + ||c_j||)^2 (every quantity involved is at most (||r|| + ||c_j||)^2 in size, and
    2 ||r|| ||c_j|| <= (||r|| + ||c_j||)^2);
  - the leading 2 is a safety factor (it also absorbs the rounding of ||r|| and ||c_j|| themselves; with
    tf32x3 the accumulation term dominates, and g covers 3D products as it covers 2D).
E itself is computed in one fixed order (a tree over D inside a tile, tiles in order); the search is exact with
respect to that E. Two codes whose distances agree to within fp32 rounding of the sum order (~D 2^-24 E)
may rank differently in another summation order (torch's); exact ties (duplicate codes, points equidistant
in exact arithmetic) are bitwise ties in every order and go to the lowest index.

Rows whose ||r||^2 is NaN or Inf get code 0 and that NaN/Inf as distance (never an out-of-range index), as in
every backend; D = 0 gives code 0 at distance 0; N = 0 gives empty outputs. `quantized` is the fp32 sum of
the chosen code rows (level order), cast to x's dtype, as the C++ kernels do.

EMULATE_TF32 (on under the interpreter, off on a GPU): the interpreter's tl.dot computes in full fp32, so the
candidate path would never see a tf32 error; with it both dot operands are rounded to tf32 (10 mantissa bits,
to nearest; for tf32x3 the hi/lo split too) before the dot, so every interpreter test runs the re-rank against
a real tf32 ranking. RESOLVE=False (tests, benchmark) sends every block to pass 2, the kernel's first scheme.
APPROX_ONLY (tests only): returns the argmin of A (no re-rank), to show that emulation changes the ranking.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from fastrec.kernels import device_guard, env_choice, launch_autotuned
from fastrec.kernels import interpret as _interpret

REGS_MAX_D = 128  # up to this D the residual lives in registers
_U_TF32 = 2.0 ** -10


@triton.jit
def _tf32(v, EMULATE: tl.constexpr):
    """v rounded to tf32 (10 mantissa bits, to nearest) when EMULATE, else v (the tensor core rounds it)."""
    if EMULATE:
        bits = v.to(tl.int32, bitcast=True)
        bits = (bits + 0x1000) & -8192  # add half an ulp of tf32, clear the 13 low mantissa bits
        v = bits.to(tl.float32, bitcast=True)
    return v


@triton.jit
def _dot(r, c, acc, EMULATE: tl.constexpr, PRECISION: tl.constexpr):
    """acc + r c^T on tensor cores: "tf32" (one dot) or "tf32x3" (hi/lo split, three dots: fp32-like error).
    EMULATE: the interpreter's dot is full fp32, so the tf32 rounding (and split) is done here instead."""
    if EMULATE:
        r_hi = _tf32(r, True)
        c_hi = _tf32(c, True)
        if PRECISION == "tf32x3":
            acc = tl.dot(r_hi, tl.trans(_tf32(c - c_hi, True)), acc, input_precision="ieee")
            acc = tl.dot(_tf32(r - r_hi, True), tl.trans(c_hi), acc, input_precision="ieee")
        return tl.dot(r_hi, tl.trans(c_hi), acc, input_precision="ieee")
    return tl.dot(r, tl.trans(c), acc, input_precision=PRECISION)


@triton.jit
def _approx(r, res_ptr, cb, nb, rows, live, ks, rn, K, D, eps_dot, eps_acc, IN_REGS: tl.constexpr,
            EMULATE: tl.constexpr, PRECISION: tl.constexpr, APPROX_ONLY: tl.constexpr, BLOCK_N: tl.constexpr,
            BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr):
    """(lo, hi, a) of a [BLOCK_N, BLOCK_K] tile: lo = A - B + alpha and hi = A + B - alpha, where A = ||c||^2 - 2 r.c
    (a tensor-core dot) and B its error bound, split as B = alpha + ||r|| beta_j + gamma_j (alpha = 2 eps_acc
    ||r||^2 per row, beta_j = 2 (eps_dot + 2 eps_acc) ||c_j||, gamma_j = 2 eps_acc ||c_j||^2 per code): two FMAs an
    element for each, the per-row alpha added after the row reductions. a = A (APPROX_ONLY; otherwise lo).
    Codes past K get +inf in all three. The scratch path reads only the `live` rows' residual (zeros for the
    others; in registers the caller passes r with those rows zeroed)."""
    kmask = ks < K
    koff = ks.to(tl.int64) * D
    dims = tl.arange(0, BLOCK_D)
    dot = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
    if IN_REGS:
        c = tl.load(cb + koff[:, None] + dims[None, :], mask=kmask[:, None] & (dims < D)[None, :],
                    other=0.0).to(tl.float32)
        dot = _dot(r, c, dot, EMULATE, PRECISION)
    else:
        for d0 in range(0, D, BLOCK_D):
            dd = d0 + dims
            dm = dd < D
            rt = tl.load(res_ptr + rows[:, None] * D + dd[None, :], mask=live[:, None] & dm[None, :], other=0.0)
            c = tl.load(cb + koff[:, None] + dd[None, :], mask=kmask[:, None] & dm[None, :],
                        other=0.0).to(tl.float32)
            dot = _dot(rt, c, dot, EMULATE, PRECISION)
    norms = tl.load(nb + ks, mask=kmask, other=0.0)
    cn = tl.sqrt(norms)
    beta = 2.0 * (eps_dot + 2.0 * eps_acc) * cn
    gamma = 2.0 * eps_acc * norms
    # per-code terms on [BLOCK_K] only; +inf past K (never inf * 0 in an element: rn may be 0)
    p_lo = tl.where(kmask, norms - gamma, float("inf"))
    p_hi = tl.where(kmask, norms + gamma, float("inf"))
    rb = rn[:, None] * beta[None, :]
    lo = p_lo[None, :] - 2.0 * dot - rb
    hi = p_hi[None, :] - 2.0 * dot + rb
    a = lo
    if APPROX_ONLY:
        a = tl.where(kmask[None, :], norms[None, :] - 2.0 * dot, float("inf"))
    return lo, hi, a


@triton.jit
def _exact(r, res_ptr, cb, rows, rmask, j, D, IN_REGS: tl.constexpr, BLOCK_D: tl.constexpr):
    """Exact fp32 sum_d (r_d - c_jd)^2 of every row against its own code j (a gathered code row)."""
    dims = tl.arange(0, BLOCK_D)
    joff = j.to(tl.int64) * D
    if IN_REGS:
        m = rmask[:, None] & (dims < D)[None, :]
        c = tl.load(cb + joff[:, None] + dims[None, :], mask=m, other=0.0).to(tl.float32)
        diff = r - c
        e = tl.sum(diff * diff, axis=1)
    else:
        e = tl.zeros([rows.shape[0]], dtype=tl.float32)
        for d0 in range(0, D, BLOCK_D):
            dd = d0 + dims
            m = rmask[:, None] & (dd < D)[None, :]
            rt = tl.load(res_ptr + rows[:, None] * D + dd[None, :], mask=m, other=0.0)
            c = tl.load(cb + joff[:, None] + dd[None, :], mask=m, other=0.0).to(tl.float32)
            diff = rt - c
            e += tl.sum(diff * diff, axis=1)
    return e


@triton.jit
def _empty_slots(BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """(s1, i1, s2, i2, s3) of _slot_insert before the first tile: every value +inf."""
    inf = tl.full([BLOCK_N, BLOCK_K], float("inf"), tl.float32)
    zero = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.int32)
    return inf, zero, inf, zero, inf


@triton.jit
def _slot_insert(v, k, s1, i1, s2, i2, s3):
    """Each slot's sorted three smallest (s1, i1) <= (s2, i2) <= s3 take in the tile's (v, k), elementwise; only a
    strictly smaller v moves an entry down (the entries there come from lower codes: ties keep the lower code
    first)."""
    c1 = v < s1
    c2 = v < s2
    s3 = tl.where(c2, s2, tl.minimum(v, s3))
    s2 = tl.where(c1, s1, tl.where(c2, v, s2))
    i2 = tl.where(c1, i1, tl.where(c2, k, i2))
    return tl.where(c1, v, s1), tl.where(c1, k, i1), s2, i2, s3


@triton.jit
def _merge_slots(s1, i1, s2, i2, s3, K):
    """The three smallest over all column slots, (m1, j1) <= (m2, j2) <= m3 by (value, code), from each slot's
    own sorted three (codes increase within a slot: its ties already keep the lower code first)."""
    m1 = tl.min(s1, axis=1)
    j1 = tl.min(tl.where(s1 == m1[:, None], i1, K), axis=1)
    at = (s1 == m1[:, None]) & (i1 == j1[:, None])  # the slot that gave it moves up one
    s1 = tl.where(at, s2, s1)
    i1 = tl.where(at, i2, i1)
    s2 = tl.where(at, s3, s2)
    m2 = tl.min(s1, axis=1)
    j2 = tl.min(tl.where(s1 == m2[:, None], i1, K), axis=1)
    at = (s1 == m2[:, None]) & (i1 == j2[:, None])
    s1 = tl.where(at, s2, s1)
    m3 = tl.min(s1, axis=1)
    return m1, j1, m2, j2, m3


# K is not specialized: Triton turns an integer argument equal to 1 into a Python int, which has no .to()
@triton.jit(do_not_specialize=["N", "K"])
def encode_kernel(x_ptr, cb_ptr, norm_ptr, codes_ptr, q_ptr, dist_ptr, res_ptr, N, K, D, L,
                  eps_dot, eps_acc, IN_REGS: tl.constexpr, WRITE_Q: tl.constexpr, WRITE_DIST: tl.constexpr,
                  EMULATE_TF32: tl.constexpr, APPROX_ONLY: tl.constexpr, PRECISION: tl.constexpr,
                  RESOLVE: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr):
    """All L levels of BLOCK_N rows. IN_REGS: x [N, D] is read once into registers (BLOCK_D >= D); otherwise
    res_ptr holds the fp32 residual [N, D] (it starts as x). Codes are int64 [N, L]."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    rmask = rows < N
    dims = tl.arange(0, BLOCK_D)
    K64 = K.to(tl.int64)
    r = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    if IN_REGS:
        m = rmask[:, None] & (dims < D)[None, :]
        r = tl.load(x_ptr + rows[:, None] * D + dims[None, :], mask=m, other=0.0).to(tl.float32)
    best = tl.zeros([BLOCK_N], dtype=tl.float32)
    for level in range(L):
        cb = cb_ptr + K64 * D * level
        nb = norm_ptr + K64 * level
        if IN_REGS:
            s = tl.sum(r * r, axis=1)
        else:
            s = tl.zeros([BLOCK_N], dtype=tl.float32)
            for d0 in range(0, D, BLOCK_D):
                dd = d0 + dims
                rt = tl.load(res_ptr + rows[:, None] * D + dd[None, :], mask=rmask[:, None] & (dd < D)[None, :],
                             other=0.0)
                s += tl.sum(rt * rt, axis=1)
        bad = ~(s < float("inf"))  # a NaN or Inf in the residual
        rn = tl.sqrt(tl.where(bad, 0.0, s))
        # pass 1: U = min_j (A_j + B_j), an upper bound of the exact minimum (minus ||r||^2), and the three
        # smallest A_j - B_j, the first two with their codes (the candidates are the codes with A_j - B_j <= U).
        # Both are kept in lo's units (lo = A - B + alpha): `upper` = U + alpha = min(hi) + 2 alpha
        alpha2 = 4.0 * eps_acc * tl.where(bad, 0.0, s)
        live = rmask & ~bad
        # the dots see a NaN/Inf row as zeros: its lo and hi stay finite (its code is set below), so no tile
        # reduction sees a row of NaNs (the interpreter's argmin raises on one)
        rd = r
        if IN_REGS:
            rd = tl.where(bad[:, None], 0.0, r)
        best = tl.full([BLOCK_N], float("inf"), tl.float32)
        best_k = tl.zeros([BLOCK_N], dtype=tl.int32)
        # U and the three smallest are kept per (row, column slot) of the tile, elementwise, and merged across
        # the slots after the loop: no cross-thread reduction inside it (the per-tile argmins of the first
        # rework cost shuffles, shared memory and barriers on every tile)
        ut = tl.full([BLOCK_N, BLOCK_K], float("inf"), tl.float32)
        s1, i1, s2, i2, s3 = _empty_slots(BLOCK_N, BLOCK_K)
        for k0 in range(0, K, BLOCK_K):
            ks = k0 + tl.arange(0, BLOCK_K)
            lo, hi, a = _approx(rd, res_ptr, cb, nb, rows, live, ks, rn, K, D, eps_dot, eps_acc, IN_REGS,
                                EMULATE_TF32, PRECISION, APPROX_ONLY, BLOCK_N, BLOCK_K, BLOCK_D)
            ut = tl.minimum(ut, hi)
            if APPROX_ONLY:  # the tensor-core ranking alone (tests): argmin of A, ties to the lowest index
                tile_best = tl.min(a, axis=1)
                tile_k = tl.argmin(a, axis=1, tie_break_left=True).to(tl.int32) + k0
                take = tile_best < best
                best = tl.where(take, tile_best, best)
                best_k = tl.where(take, tile_k, best_k)
            elif RESOLVE:
                codes = tl.broadcast_to(ks[None, :], [BLOCK_N, BLOCK_K])
                s1, i1, s2, i2, s3 = _slot_insert(lo, codes, s1, i1, s2, i2, s3)
        upper = tl.min(ut, axis=1) + alpha2
        m1, j1, m2, j2, m3 = _merge_slots(s1, i1, s2, i2, s3, K)
        crowded = 1  # pass 2 unless every row of the block has at most two candidates
        if RESOLVE:
            crowded = tl.max((live & (m3 <= upper)).to(tl.int32), axis=0)
        if APPROX_ONLY:
            best = _exact(r, res_ptr, cb, rows, rmask, best_k, D, IN_REGS, BLOCK_D)
        elif crowded == 0:
            # m3 > U: the candidates are j1 (always: the code that gives U has A - B <= A + B = U, so m1 <= U)
            # and j2 when m2 <= U; their exact distances decide, ties to the lower code
            j1 = tl.minimum(j1, K - 1)
            j2 = tl.minimum(j2, K - 1)
            two = live & (m2 <= upper)
            best = _exact(r, res_ptr, cb, rows, live, j1, D, IN_REGS, BLOCK_D)
            e2 = _exact(r, res_ptr, cb, rows, two, j2, D, IN_REGS, BLOCK_D)
            take = two & ((e2 < best) | ((e2 == best) & (j2 < j1)))
            best = tl.where(take, e2, best)
            best_k = tl.where(take, j2, j1)
        else:
            # pass 2: exact distances of the candidates A_j - B_j <= U, lowest index first
            for k0 in range(0, K, BLOCK_K):
                ks = k0 + tl.arange(0, BLOCK_K)
                lo, hi, a = _approx(rd, res_ptr, cb, nb, rows, live, ks, rn, K, D, eps_dot, eps_acc, IN_REGS,
                                    EMULATE_TF32, PRECISION, False, BLOCK_N, BLOCK_K, BLOCK_D)
                cand = (lo <= upper[:, None]) & (ks < K)[None, :] & live[:, None]
                while tl.max(tl.max(cand.to(tl.int32), axis=1), axis=0) > 0:
                    j = tl.min(tl.where(cand, ks[None, :], K), axis=1)
                    has = j < K
                    j = tl.where(has, j, 0)
                    e = _exact(r, res_ptr, cb, rows, rmask & has, j, D, IN_REGS, BLOCK_D)
                    take = has & ((e < best) | ((e == best) & (j < best_k)))
                    best = tl.where(take, e, best)
                    best_k = tl.where(take, j, best_k)
                    cand = cand & (ks[None, :] != j[:, None])
        best_k = tl.where(bad, 0, best_k)
        best = tl.where(bad, s, best)  # NaN stays NaN, Inf stays Inf
        tl.store(codes_ptr + rows * L + level, best_k.to(tl.int64), mask=rmask)
        # residual -= chosen code
        koff = best_k.to(tl.int64) * D
        if IN_REGS:
            m = rmask[:, None] & (dims < D)[None, :]
            r = r - tl.load(cb + koff[:, None] + dims[None, :], mask=m, other=0.0).to(tl.float32)
        else:
            for d0 in range(0, D, BLOCK_D):
                dd = d0 + dims
                m = rmask[:, None] & (dd < D)[None, :]
                off = rows[:, None] * D + dd[None, :]
                c = tl.load(cb + koff[:, None] + dd[None, :], mask=m, other=0.0).to(tl.float32)
                rt = tl.load(res_ptr + off, mask=m, other=0.0)
                tl.store(res_ptr + off, rt - c, mask=m)
            tl.debug_barrier()  # the next level reads the residual in other threads' layouts
    if WRITE_DIST:
        tl.store(dist_ptr + rows, best, mask=rmask)
    if WRITE_Q:
        # quantized = the fp32 sum of the chosen code rows in level order, from the codes just stored (a
        # register tile for it would spill)
        tl.debug_barrier()
        for d0 in range(0, D, BLOCK_D):
            dd = d0 + dims
            m = rmask[:, None] & (dd < D)[None, :]
            acc = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
            for level in range(L):
                k = tl.load(codes_ptr + rows * L + level, mask=rmask, other=0)
                acc += tl.load(cb_ptr + ((K64 * level + k) * D)[:, None] + dd[None, :], mask=m,
                               other=0.0).to(tl.float32)
            tl.store(q_ptr + rows[:, None] * D + dd[None, :], acc.to(q_ptr.dtype.element_ty), mask=m)


def _prune(configs, named_args, **kwargs):
    """At most 16 values a thread in each [BLOCK_N, BLOCK_D] and [BLOCK_N, BLOCK_K] tile. ptxas -v on sm_90
    (offline; tests/test_triton_compile.py): at D = 64 and 128 some kept config spills nothing in each dtype and
    op with tf32x3 dots and the top-3 resolve, under Triton 3.6 (the H200's) and 3.8 (the single-stage ones:
    (32, 64) at D = 64, (16, 32) or (16, 64) at 128), but for bf16 residual_encode at D = 128 under 3.6 (12
    bytes at best); the two-stage ones spill up to ~600 bytes, which autotune weighs."""
    bd = kwargs.get("BLOCK_D", named_args.get("BLOCK_D", 64))
    fit = [c for c in configs
           if max(bd, c.kwargs["BLOCK_K"]) * c.kwargs["BLOCK_N"] <= 16 * 32 * c.num_warps]
    return fit or configs[:1]


# (BLOCK_N, BLOCK_K, num_warps, num_stages) tried on a GPU, keyed on (D, K)
_CONFIGS = [triton.Config({"BLOCK_N": bn, "BLOCK_K": bk}, num_warps=w, num_stages=st) for bn, bk, w, st in [
    (64, 64, 8, 2), (64, 64, 8, 1), (32, 64, 8, 2), (32, 64, 8, 1), (16, 64, 8, 1), (16, 32, 8, 1), (16, 32, 4, 2)]]
encode_tuned = triton.autotune(_CONFIGS, key=["D", "K", "PRECISION", "RESOLVE", "WRITE_Q"],
                               prune_configs_by={"early_config_prune": _prune})(encode_kernel)

# The scratch path (D > REGS_MAX_D) updates its buffers in place, so it is not autotuned (a rerun would
# start from a moved residual): one config.
_SCRATCH = (16, 64, 8, 1)  # no spill at BLOCK_D = 64 with tf32x3 dots and the top-3 resolve (ptxas -v, sm_90)


def _interpreter_blocks(N: int, K: int) -> tuple[int, int]:
    """Under the interpreter each program costs a numpy call per op: few, large programs (tests pass
    `blocks` to force small tiles where tile boundaries matter)."""
    return min(256, max(16, triton.next_power_of_2(N))), min(256, max(16, triton.next_power_of_2(K)))


# The dot's precision on a GPU: "tf32x3" (default; three tf32 dots, product error <= 3u^2 + 4u^3: the bound B
# shrinks ~8x, so most rows have at most two candidates and skip pass 2) or "tf32" (FASTREC_QUANTIZE_DOT=tf32).
PRECISIONS = ("tf32x3", "tf32")


def _precision() -> str:
    return env_choice("FASTREC_QUANTIZE_DOT", PRECISIONS)


def _eps(D: int, precision: str = "tf32") -> tuple[float, float]:
    """(eps_dot, eps_acc): A's error bound is 2 (eps_dot ||r|| ||c|| + eps_acc (||r|| + ||c||)^2)."""
    u = _U_TF32
    # tf32x3 drops lo*lo and the split's own rounding: |r c - (hi hi + hi lo + lo hi)| <= (3u^2 + 4u^3) |r| |c|
    per_product = 2.0 * u + u * u if precision == "tf32" else 3.0 * u * u + 4.0 * u ** 3
    return 2.0 * per_product, (2 * D + 16) * 2.0 ** -20


def encode(x: torch.Tensor, codebooks: torch.Tensor, want_q: bool, want_dist: bool, emulate_tf32: bool | None = None,
           approx_only: bool = False, blocks: tuple[int, int] | None = None, precision: str | None = None,
           resolve: bool = True) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """codes [N, L] (and quantized [N, D] in x's dtype, and the last level's exact distance [N] fp32).

    emulate_tf32 (default: on under the interpreter, so every interpreter run sees real tf32 error; off on a GPU,
    whose tensor cores round for themselves), approx_only and blocks (BLOCK_N, BLOCK_K) are for tests;
    precision ("tf32x3" / "tf32", default FASTREC_QUANTIZE_DOT or "tf32x3") and resolve (False: pass 2 for
    every block, the scheme before the top-3 resolve) for tests and the benchmark's comparisons."""
    if emulate_tf32 is None:
        emulate_tf32 = _interpret()
    precision = _precision() if precision is None else precision
    x = x.contiguous()
    codebooks = codebooks.contiguous()
    N, D = x.shape
    L, K = codebooks.shape[0], codebooks.shape[1]
    codes = torch.empty(N, L, dtype=torch.int64, device=x.device)
    q = torch.empty_like(x) if want_q else None
    dist = torch.empty(N, dtype=torch.float32, device=x.device) if want_dist else None
    if N == 0:
        return codes, q, dist
    if D == 0:  # every distance is 0: code 0 wins (and an empty row has no pointer to pass)
        codes.zero_()
        return codes, q, (dist.zero_() if want_dist else None)
    norms = codebooks.float().pow(2).sum(-1).contiguous()  # [L, K]
    eps_dot, eps_acc = _eps(D, precision)
    flags = dict(WRITE_Q=want_q, WRITE_DIST=want_dist, EMULATE_TF32=emulate_tf32, APPROX_ONLY=approx_only,
                 PRECISION=precision, RESOLVE=resolve)
    dist_arg = dist if want_dist else codes
    if blocks is None and _interpret():
        blocks = _interpreter_blocks(N, K)
    in_regs = D <= REGS_MAX_D
    block_d = max(16, triton.next_power_of_2(D)) if in_regs else 64
    res = x if in_regs else x.to(torch.float32, copy=True)  # the scratch residual (unused in registers)
    args = (x, codebooks, norms, codes, q if want_q else x, dist_arg, res, N, K, D, L, eps_dot, eps_acc)
    with device_guard(x):
        if in_regs and blocks is None:
            grid = lambda meta: (triton.cdiv(N, meta["BLOCK_N"]),)  # noqa: E731
            launch_autotuned(encode_tuned, grid, *args, IN_REGS=True, BLOCK_D=block_d, **flags)
        else:
            bn, bk, w, st = _SCRATCH if blocks is None else (*blocks, 4, 2)
            encode_kernel[(triton.cdiv(N, bn),)](*args, IN_REGS=in_regs, BLOCK_N=bn, BLOCK_K=bk, BLOCK_D=block_d,
                                                 num_warps=w, num_stages=st, **flags)
    return codes, q, dist


def nearest_code(x: torch.Tensor, codebook: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest code of every row, x [N, D], codebook [K, D] (checked by fastrec.ops): (index [N], sqdist [N])."""
    codes, _, dist = encode(x, codebook[None], want_q=False, want_dist=True)
    return codes[:, 0], dist


def residual_encode(x: torch.Tensor, codebooks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy residual quantization, all L levels in one launch: (codes [N, L], quantized [N, D])."""
    codes, q, _ = encode(x, codebooks, want_q=True, want_dist=False)
    return codes, q
