"""Triton full-ranking top-K: the query x item score GEMM tiled on tensor cores, never U x I in memory.

Two schemes (topk_scores): "threshold" for large catalogues (a sample of the items gives each query a score
threshold, one scan appends the items reaching it, a sort of those few gives the top-k: the scan's tile
costs its dot, one comparison and one reduction) and "insertion", the fallback and the small-catalogue
path, described next.

A program owns BLOCK_U queries and one contiguous chunk of the items. It walks its chunk in BLOCK_I
tiles: the tile's scores come from tl.dot (fp32 accumulation), each query's excluded items (its CSR
segment, sorted once per call so a per-query pointer only moves forward) become -inf inside the tile,
and a running top-k per query (registers, [BLOCK_U, KP]) takes in the tile's items that beat its worst
entry, best first. After the first tiles almost no item beats the worst entry, so most tiles cost the
dot and one comparison. Each program writes its chunk's k best (unsorted) to a [U, chunks, k] buffer and
a small merge sorts those by (score desc, id asc): memory is O(U * chunks * k + tiles).

Order is the reference's: higher score first, equal scores by lower item id; excluded items score -inf and
appear (by lowest id) only when fewer than k others remain.

Precision: fp32 inputs use tf32x3 dots by default (three tf32 tensor-core dots over a hi/lo split of both
operands: the product error, <= 3.01 2^-20 |q_d i_d|, is below fp32's own summation bound d 2^-24 for
d >= 64; the threshold scheme's scan does the split by hand for d <= 64, candidates_split_kernel), so
scores match the reference's fp32 matmul to about 1e-6 relative and ids match wherever scores are not that
close; FASTREC_TOPK_DOT=ieee takes CUDA-core fp32 dots (summation order the only difference).
FASTREC_TF32=1 opts fp32 into one TF32 dot (scores within about 1e-3 relative; near-ties may reorder). bf16/fp16
inputs use native tensor-core dots with fp32 accumulation: their products are exact in fp32, so scores
again differ from the reference (which upcasts first) by summation order only.

NaN scores (possible only where the entry point's finite check is off: torch.compile, CUDA graphs) rank
as -inf, so every id returned is a real item id.

Larger k than MAX_K (the register budget of the running top-k) or catalogues near 2^31 items fall back
to the reference (a matmul and a stable sort, 1024 queries at a time).
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from fastrec.kernels import device_guard, env_choice, launch_autotuned
from fastrec.kernels import interpret as _interpret  # a module name of its own: tests patch it

MAX_K = 128
NO_ID = 2**31 - 1  # "no exclusion left" for the per-query exclusion pointer (beyond every tile)
_NO_ID = tl.constexpr(NO_ID)


@triton.jit
def _worst(rs, ri):
    """The worst entry of each query's running top-k: lowest score, then highest id."""
    ws = tl.min(rs, axis=1)
    wi = tl.max(tl.where(rs == ws[:, None], ri, -1), axis=1)
    return ws, wi


@triton.jit
def _beats(s, ids, ws, wi):
    return (s > ws[:, None]) | ((s == ws[:, None]) & (ids[None, :] < wi[:, None]))


@triton.jit
def _take(s, ids, rs, ri, ws, wi, slots, NI, KP: tl.constexpr):
    """Takes the tile's items that beat each query's worst entry into its running top-k, best first, until none
    does; returns the top-k and its new worst entry."""
    better = _beats(s, ids, ws, wi)
    n = tl.max(tl.sum(better.to(tl.int32), axis=1))
    while n > 0:
        cs = tl.where(better, s, float("-inf"))
        bs = tl.max(cs, axis=1)
        bi = tl.min(tl.where(better & (cs == bs[:, None]), ids[None, :], NI), axis=1)
        has = tl.sum(better.to(tl.int32), axis=1) > 0
        slot = tl.min(tl.where((rs == ws[:, None]) & (ri == wi[:, None]), slots[None, :], KP), axis=1)
        put = has[:, None] & (slots[None, :] == slot[:, None])
        rs = tl.where(put, bs[:, None], rs)
        ri = tl.where(put, bi[:, None], ri)
        ws, wi = _worst(rs, ri)
        better = better & (ids[None, :] != bi[:, None]) & _beats(s, ids, ws, wi)
        n = tl.max(tl.sum(better.to(tl.int32), axis=1))
    return rs, ri, ws, wi


@triton.jit
def _exclusion_cursor(exp_ptr, exi_ptr, us, umask, nnz, lo):
    """Each query's exclusion segment [p, e), clamped to the index array (a bad indptr reads nothing outside
    it), with the cursor p moved past the exclusions before lo; x = the id at p (NO_ID past the segment)."""
    p = tl.load(exp_ptr + us, mask=umask, other=0).to(tl.int64)
    e = tl.load(exp_ptr + us + 1, mask=umask, other=0).to(tl.int64)
    p = tl.minimum(tl.maximum(p, 0), nnz)
    e = tl.minimum(tl.maximum(e, p), nnz)
    x = tl.load(exi_ptr + p, mask=p < e, other=_NO_ID)
    while tl.max((x < lo).to(tl.int32)) > 0:
        p = tl.where(x < lo, p + 1, p)
        x = tl.load(exi_ptr + p, mask=p < e, other=_NO_ID)
    return p, e, x


@triton.jit
def _excluded(exi_ptr, ids, p, e, x, end):
    """[BLOCK_U, BLOCK_I]: which of the tile's items (ids, below `end`) each query excludes, one exclusion per
    query a round, and the cursors (p, x) moved past them."""
    out = (p[:, None] < 0) & (ids[None, :] < 0)  # all False (p >= 0)
    while tl.max((x < end).to(tl.int32)) > 0:
        hit = x < end
        out = out | (hit[:, None] & (ids[None, :] == x[:, None]))
        p = tl.where(hit, p + 1, p)
        x = tl.load(exi_ptr + p, mask=p < e, other=_NO_ID)
    return out, p, x


@triton.jit
def _tile_scores(q_ptr, it_ptr, us, umask, ids, imask, d, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
                 BLOCK_U: tl.constexpr, BLOCK_I: tl.constexpr, BLOCK_D: tl.constexpr):
    """[BLOCK_U, BLOCK_I] fp32 scores q . i of the tile by tl.dot over d in BLOCK_D slices (0 where masked)."""
    acc = tl.zeros([BLOCK_U, BLOCK_I], dtype=tl.float32)
    for d0 in range(0, d, BLOCK_D):
        dims = d0 + tl.arange(0, BLOCK_D)
        dmask = dims < d
        qa = tl.load(q_ptr + us[:, None] * d + dims[None, :], mask=umask[:, None] & dmask[None, :], other=0.0)
        ib = tl.load(it_ptr + ids.to(tl.int64)[:, None] * d + dims[None, :], mask=imask[:, None] & dmask[None, :],
                     other=0.0)
        if UPCAST:
            qa = qa.to(tl.float32)
            ib = ib.to(tl.float32)
        acc = tl.dot(qa, tl.trans(ib), acc, input_precision=PRECISION)
    return acc


@triton.jit(do_not_specialize=["U", "NI", "nnz"])
def topk_kernel(q_ptr, it_ptr, exp_ptr, exi_ptr, ps_ptr, pi_ptr, U, NI, d, nnz, chunk, C, k,
                HAS_EX: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr, BLOCK_U: tl.constexpr,
                BLOCK_I: tl.constexpr, BLOCK_D: tl.constexpr, KP: tl.constexpr):
    c = tl.program_id(1)
    us = tl.program_id(0).to(tl.int64) * BLOCK_U + tl.arange(0, BLOCK_U)
    umask = us < U
    lo = c * chunk
    hi = tl.minimum(lo + chunk, NI)
    slots = tl.arange(0, KP)
    # empty slots hold (-inf, NI = item count), worse than any item; slots past k hold (+inf, -1), never replaced
    zero = tl.zeros([BLOCK_U, KP], dtype=tl.float32)
    rs = tl.where(slots[None, :] < k, zero - float("inf"), zero + float("inf"))
    ri = tl.where(slots[None, :] < k, zero.to(tl.int32) + NI, zero.to(tl.int32) - 1)
    if HAS_EX:
        p, e, x = _exclusion_cursor(exp_ptr, exi_ptr, us, umask, nnz, lo)
    ws, wi = _worst(rs, ri)
    for i0 in range(lo, hi, BLOCK_I):
        ids = i0 + tl.arange(0, BLOCK_I)
        imask = ids < hi
        acc = _tile_scores(q_ptr, it_ptr, us, umask, ids, imask, d, UPCAST, PRECISION, BLOCK_U, BLOCK_I, BLOCK_D)
        # a NaN score (NaN input, only when the host check is off) ranks as -inf: ids stay real item ids
        s = tl.where(imask[None, :] & (acc == acc), acc, float("-inf"))
        ids = tl.where(imask, ids, NI)  # positions past the chunk: (-inf, NI), never better than an empty slot
        if HAS_EX:
            excluded, p, x = _excluded(exi_ptr, ids, p, e, x, i0 + BLOCK_I)
            s = tl.where(excluded, float("-inf"), s)
        # a query's top-k can change only where the tile's best score reaches its worst entry's: most tiles
        # stop at this one row reduction (rows past U score 0 and are left out)
        if tl.max((umask & (tl.max(s, axis=1) >= ws)).to(tl.int32), axis=0) > 0:
            rs, ri, ws, wi = _take(s, ids, rs, ri, ws, wi, slots, NI, KP)
    out = (us[:, None] * C + c) * k + slots[None, :]
    omask = umask[:, None] & (slots[None, :] < k)
    tl.store(ps_ptr + out, rs, mask=omask)
    tl.store(pi_ptr + out, ri, mask=omask)


@triton.jit
def _scan_start(tau_ptr, U, NI, chunk, BLOCK_U: tl.constexpr):
    """A candidate scan program's queries (us; umask: below U), its items [lo, hi) and its queries' thresholds
    (+inf past U: those rows score 0, or NaN, and are never kept)."""
    us = tl.program_id(0).to(tl.int64) * BLOCK_U + tl.arange(0, BLOCK_U)
    umask = us < U
    lo = tl.program_id(1) * chunk
    hi = tl.minimum(lo + chunk, NI)
    return us, umask, lo, hi, tl.load(tau_ptr + us, mask=umask, other=float("inf"))


@triton.jit(do_not_specialize=["U", "NI"])
def candidates_kernel(q_ptr, it_ptr, tau_ptr, cnt_ptr, cs_ptr, ci_ptr, U, NI, d, chunk, CAP, UPCAST: tl.constexpr,
                      PRECISION: tl.constexpr, BLOCK_U: tl.constexpr, BLOCK_I: tl.constexpr,
                      BLOCK_D: tl.constexpr):
    """The threshold scheme's scan: every (query, item) whose score reaches the query's threshold tau is appended
    to the query's candidate list (an atomic counter gives its slot; past CAP only the count grows). No running
    top-k and no exclusions (the caller drops the few excluded candidates): a tile costs its dot, one comparison
    and one reduction, and the appends of its few candidates. NaN scores never reach tau. `chunk` items a program
    (a multiple of BLOCK_I); the grid's second axis covers the items."""
    us, umask, lo, hi, tau = _scan_start(tau_ptr, U, NI, chunk, BLOCK_U)
    for i0 in range(lo, hi, BLOCK_I):
        ids = i0 + tl.arange(0, BLOCK_I)
        imask = ids < hi
        acc = _tile_scores(q_ptr, it_ptr, us, umask, ids, imask, d, UPCAST, PRECISION, BLOCK_U, BLOCK_I, BLOCK_D)
        keep = imask[None, :] & (acc >= tau[:, None])
        n = tl.sum(keep.to(tl.int32), axis=1)
        if tl.max(n, axis=0) > 0:  # one atomic a query with candidates reserves its slots; a scan places them
            base = tl.atomic_add(cnt_ptr + us, n, mask=n > 0)
            slot = base[:, None] + tl.cumsum(keep.to(tl.int32), axis=1) - 1
            ok = keep & (slot < CAP)
            where = us[:, None] * CAP + slot
            tl.store(cs_ptr + where, acc, mask=ok)
            tl.store(ci_ptr + where, ids, mask=ok)


@triton.jit(do_not_specialize=["U", "NI"])
def candidates_split_kernel(q_ptr, ql_ptr, it_ptr, tau_ptr, cnt_ptr, cs_ptr, ci_ptr, U, NI, d, chunk, CAP,
                            BLOCK_U: tl.constexpr, BLOCK_I: tl.constexpr, BLOCK_D: tl.constexpr):
    """candidates_kernel for fp32 queries and items with tf32x3 dots and d <= BLOCK_D, item-major: the tile is
    [BLOCK_I, BLOCK_U], items as the dot's first operand. The caller splits the queries once (q_ptr: the top 10
    mantissa bits, ql_ptr: the rest) and the program holds its queries' split for its whole chunk; each item tile
    is split in registers (hi: the top 10 mantissa bits, lo = i - hi, exact) for three tf32 dots (lo hi, hi lo,
    hi hi): per product an error <= 3.01 2^-20 |i| |q| (each lo within 2^-10 of its own size after the tensor
    core's tf32 rounding, lo lo dropped), the tf32x3 bound score_error takes. Built-in tf32x3 splits both
    operands on every tile and moves them through shared memory: counted in the SASS (Triton 3.6, sm_90, d = 64;
    a static count, not a time), 0.88 warp instructions a score in this kernel's configs against 1.18-1.93."""
    us, umask, lo, hi, tau = _scan_start(tau_ptr, U, NI, chunk, BLOCK_U)
    dims = tl.arange(0, BLOCK_D)
    dmask = dims < d
    qm = umask[:, None] & dmask[None, :]
    qh = tl.trans(tl.load(q_ptr + us[:, None] * d + dims[None, :], mask=qm, other=0.0))
    ql = tl.trans(tl.load(ql_ptr + us[:, None] * d + dims[None, :], mask=qm, other=0.0))
    for i0 in range(lo, hi, BLOCK_I):
        ids = i0 + tl.arange(0, BLOCK_I)
        imask = ids < hi
        it = tl.load(it_ptr + ids.to(tl.int64)[:, None] * d + dims[None, :], mask=imask[:, None] & dmask[None, :],
                     other=0.0)
        ih = (it.to(tl.int32, bitcast=True) & -8192).to(tl.float32, bitcast=True)
        acc = tl.dot(it - ih, qh, input_precision="tf32")
        acc = tl.dot(ih, ql, acc, input_precision="tf32")
        acc = tl.dot(ih, qh, acc, input_precision="tf32")
        keep = imask[:, None] & (acc >= tau[None, :])
        n = tl.sum(keep.to(tl.int32), axis=0)
        if tl.max(n, axis=0) > 0:  # as in candidates_kernel, per query (a column of the tile)
            base = tl.atomic_add(cnt_ptr + us, n, mask=n > 0)
            slot = base[None, :] + tl.cumsum(keep.to(tl.int32), axis=0) - 1
            ok = keep & (slot < CAP)
            where = us[None, :] * CAP + slot
            tl.store(cs_ptr + where, acc, mask=ok)
            tl.store(ci_ptr + where, tl.broadcast_to(ids[:, None], [BLOCK_I, BLOCK_U]), mask=ok)


DOT_PRECISIONS = ("tf32x3", "ieee", "tf32")


def precision(dtype: torch.dtype) -> str:
    """The fp32 dot on a GPU: "tf32x3" (three tf32 tensor-core dots over a hi/lo split; product error
    <= 3u^2 + 4u^3 with u = 2^-10, under fp32's own summation bound d 2^-24 from d = 64 up) unless
    FASTREC_TOPK_DOT says "ieee" (CUDA-core fp32) or FASTREC_TF32=1 (one tf32 dot, ~1e-3). Half inputs use
    native dots ("ieee" is passed, as before); the interpreter's dot is fp32 whatever it is told."""
    p = env_choice("FASTREC_TOPK_DOT", DOT_PRECISIONS)
    if _interpret() or dtype != torch.float32:
        return "ieee"
    return "tf32" if os.environ.get("FASTREC_TF32") == "1" else p


def exclusion_keys(indptr: torch.Tensor, indices: torch.Tensor, num_users: int, num_items: int) -> torch.Tensor:
    """Every exclusion as one int64 key, row * (I + 2) + id + 1, sorted (rows clamped to [0, U], ids to [-1, I]):
    one device sort, no host sync; an out-of-range id matches no item."""
    pos = torch.arange(indices.numel(), device=indices.device)
    rows = (torch.searchsorted(indptr.long(), pos, right=True) - 1).clamp(0, num_users)
    return torch.sort(rows * (num_items + 2) + indices.long().clamp(-1, num_items) + 1).values


def sorted_exclusions(indptr: torch.Tensor, indices: torch.Tensor, num_users: int, num_items: int) -> torch.Tensor:
    """Each query's excluded ids in ascending order (int32, clamped to [-1, I]), from exclusion_keys."""
    return (exclusion_keys(indptr, indices, num_users, num_items) % (num_items + 2) - 1).to(torch.int32)


def _config(kp: int, d: int) -> tuple[int, int, int, int]:
    """(BLOCK_U, BLOCK_I, BLOCK_D, num_warps): small under the interpreter; on a GPU, fewer queries per program
    for a large k so the running top-k stays in registers. ptxas -v (sm_90, Triton 3.6 and 3.8, fp32 with tf32x3
    dots and bf16, tests/test_triton_compile.py): these spill nothing; 4 warps with BLOCK_D = 64 spilled up to
    896 bytes, and with tf32x3 BLOCK_D = 64 at k <= 64 20 bytes, BLOCK_D = 32 at k <= 32 36 (Triton 3.6)."""
    if _interpret():
        return 16, 32, min(64, max(16, triton.next_power_of_2(d))), 4
    block_u = 64 if kp <= 32 else 32 if kp <= 64 else 16
    return block_u, 64, min(16 if kp <= 32 else 32 if kp <= 64 else 64, max(16, triton.next_power_of_2(d))), 8


def _num_chunks(blocks_u: int, num_items: int, block_i: int, device: torch.device) -> int:
    """Item chunks per query block: enough programs to fill the GPU (about 4 per SM) when U is small."""
    tiles = triton.cdiv(num_items, block_i)
    if _interpret():
        return min(3, tiles)
    sms = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 1
    return max(1, min(tiles, triton.cdiv(4 * sms, blocks_u)))


def _grid(U: int, num_items: int, block_u: int, block_i: int, device: torch.device) -> tuple[int, int, int]:
    """(query blocks, item chunks, items a chunk: a multiple of block_i) of a scan's launch."""
    blocks_u = triton.cdiv(U, block_u)
    chunks = _num_chunks(blocks_u, num_items, block_i, device)
    chunk = triton.cdiv(triton.cdiv(num_items, chunks), block_i) * block_i
    return blocks_u, triton.cdiv(num_items, chunk), chunk


def supports(queries: torch.Tensor, items: torch.Tensor, k: int) -> bool:
    """Whether the kernel takes this call (else the caller runs the reference)."""
    return 0 < k <= min(MAX_K, items.shape[0]) and queries.shape[1] > 0 and items.shape[0] + 1024 < NO_ID


SCHEMES = ("threshold", "insertion")
THRESHOLD_MIN_ITEMS = 65_536  # below it the insertion scan is cheap enough, and the sample too small to help
SAMPLE_STRIDE = 16  # the threshold's sample: every 16th item (at least), so about 16 k candidates a query
MAX_SAMPLE = 65_536  # sample items at most: for larger catalogues the stride grows
CAP_FACTOR = 4  # candidate slots a query: four times the expected count (k * stride)
EXTRA_EXCLUDED = 64  # the sample's top (k + 64): room for the query's excluded items that fall in the sample
SAMPLE_BYTES = 2**27  # the fp32 sample scores of one group of queries (128 MB)
CANDIDATE_BYTES = 2**28  # the candidate slots (score and id) of one group of queries (256 MB)


def topk_scores(queries: torch.Tensor, items: torch.Tensor, k: int, exclude_indptr: torch.Tensor | None,
                exclude_indices: torch.Tensor | None, dot: str | None = None, scheme: str | None = None,
                stride: int | None = None, cap: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(scores fp32 [U, k], ids int64 [U, k]) as reference.topk_scores; requires supports(...).

    Two schemes give the same answer. "insertion": one scan keeps a running top-k per query (topk_kernel).
    "threshold" (the default from THRESHOLD_MIN_ITEMS items, outside CUDA-graph capture): a threshold tau per
    query from a sample of the items, then one scan that only appends the items a query keeps whose
    score reaches its tau (candidates_kernel), and the merge's sort of those. Exact for any tau: when at least k
    kept items score >= tau, the k best all do, so all are candidates. A query with fewer than k candidates, or
    more than `cap` (the slots), sends the call to the insertion scheme (one host read decides); tau's bound
    (see thresholds) only makes that rare. dot: the fp32 dot precision (default precision(dtype)); scheme,
    stride and cap: for tests and the benchmark."""
    if scheme not in (None, *SCHEMES):
        raise ValueError(f"scheme must be one of {SCHEMES}, got {scheme!r}")
    queries, items = queries.contiguous(), items.contiguous()
    dot = dot or precision(queries.dtype)
    if scheme is None:
        capturing = queries.is_cuda and torch.cuda.is_current_stream_capturing()
        scheme = "threshold" if items.shape[0] >= THRESHOLD_MIN_ITEMS and not capturing else "insertion"
    if scheme == "threshold" and queries.shape[0]:
        stride, cap = sample_plan(items.shape[0], k, stride, cap)
        found = _threshold_topk(queries, items, k, exclude_indptr, exclude_indices, dot, stride, cap)
        if found is not None:
            return found
    return _insertion_topk(queries, items, k, exclude_indptr, exclude_indices, dot)


def _insertion_topk(queries, items, k, exclude_indptr, exclude_indices, dot):
    (U, d), NI = queries.shape, items.shape[0]
    if U == 0:
        return queries.new_empty(0, k, dtype=torch.float32), queries.new_empty(0, k, dtype=torch.int64)
    kp = max(16, triton.next_power_of_2(k))
    block_u, block_i, block_d, warps = _config(kp, d)
    blocks_u, chunks, chunk = _grid(U, NI, block_u, block_i, queries.device)
    part_s = torch.empty(U, chunks, k, dtype=torch.float32, device=queries.device)
    part_i = torch.empty(U, chunks, k, dtype=torch.int32, device=queries.device)
    has_ex = exclude_indptr is not None and exclude_indices.numel() > 0
    if has_ex:
        ex_indptr = exclude_indptr.contiguous()
        ex_sorted = sorted_exclusions(ex_indptr, exclude_indices, U, NI)
    else:
        ex_indptr = ex_sorted = part_i  # unused pointers
    upcast = _interpret() or queries.dtype == torch.float32
    with device_guard(queries):
        topk_kernel[(blocks_u, chunks)](
            queries, items, ex_indptr, ex_sorted, part_s, part_i, U, NI, d, ex_sorted.numel() if has_ex else 0,
            chunk, chunks, k, HAS_EX=has_ex, UPCAST=upcast, PRECISION=dot, BLOCK_U=block_u, BLOCK_I=block_i,
            BLOCK_D=block_d, KP=kp, num_warps=warps)
    return merge(part_s.view(U, -1), part_i.view(U, -1).long(), k)


def sample_plan(num_items: int, k: int, stride: int | None = None, cap: int | None = None) -> tuple[int, int]:
    """(stride, cap) of the threshold scheme: every stride-th item in the sample (at most MAX_SAMPLE of them),
    and cap candidate slots a query, CAP_FACTOR times the k * stride expected."""
    stride = stride or max(SAMPLE_STRIDE, triton.cdiv(num_items, MAX_SAMPLE))
    return stride, cap or CAP_FACTOR * k * stride


def score_error(d: int, dot: str) -> float:
    """gamma with |kernel score - exact score| <= gamma ||q|| ||i||: fp32 accumulation of d products (2^-23 a
    step: a truncating tensor-core accumulator too) plus the dot's product error (tf32x3: 3.01 2^-20 < 2^-18;
    one tf32 dot: 2u + u^2 < 2^-8, u = 2^-10; half inputs: exact products); sum |q_d i_d| <= ||q|| ||i||."""
    return (d + 2) * 2.0**-23 + {"ieee": 0.0, "tf32x3": 2.0**-18, "tf32": 2.0**-8}[dot]


def sample_of(items: torch.Tensor, stride: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(the threshold's sample items[::stride] in fp32, the largest item norm as a float64 scalar): per call, not
    per group of queries. The norm is reduced in float64 without a float64 copy of the items."""
    sample = items[::stride].float()
    if not items.shape[0]:
        return sample, items.new_zeros((), dtype=torch.float64)
    return sample, torch.linalg.vector_norm(items, dim=1, dtype=torch.float64).max()


def thresholds(queries: torch.Tensor, items: torch.Tensor, k: int, exclude_indptr: torch.Tensor | None,
               exclude_indices: torch.Tensor | None, dot: str, stride: int,
               sample: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """tau [U] fp32, at most each query's k-th best kernel score over the items it does not exclude (so at least
    k candidates reach it: the threshold scheme never falls back for want of them; its exactness does not rest
    on this bound).

    t = the (k + e)-th best exact score over the sample items[::stride], e = how many sample items the query
    excludes (duplicates counted twice: a lower t is still a bound): at least k sample items it does not exclude
    score >= t exactly, so >= t - gamma ||q|| max ||i|| in the kernel. The sample's scores come from an fp32
    product (torch's matmul, which may run as one TF32 dot, so its error is taken as that one's: score_error(d,
    "tf32")), and a k-th largest moves no more than the scores do, so the (k + e)-th best of them less that bound
    is at most t. tau = that less the kernel's gamma term, in float64, rounded down to fp32. fp32 rather than
    float64: the selection (a radix select, one pass over the scores per digit) reads half the bytes in half the
    passes. -inf where e leaves the sample's top (k + EXTRA_EXCLUDED); NaN (no candidate: the caller falls back)
    where a score or norm is NaN. Device work only. `sample`: sample_of(items, stride), when the caller has it."""
    U, d = queries.shape
    NI = items.shape[0]
    sample, norm = sample_of(items, stride) if sample is None else sample
    top = min(sample.shape[0], k + EXTRA_EXCLUDED)
    excluded = torch.zeros(U, dtype=torch.long, device=queries.device)
    if exclude_indptr is not None and exclude_indices.numel():
        x = exclude_indices.long()
        in_sample = ((x >= 0) & (x < NI) & (x % stride == 0)).long()
        seen = torch.cat([in_sample.new_zeros(1), in_sample.cumsum(0)])
        nnz = x.numel()
        lo = exclude_indptr[:-1].long().clamp(0, nnz)  # the kernels' clamped segments
        hi = torch.maximum(exclude_indptr[1:].long().clamp(0, nnz), lo)
        excluded = seen[hi] - seen[lo]
    group = max(1, SAMPLE_BYTES // (4 * max(1, sample.shape[0])))
    t = torch.empty(U, dtype=torch.float64, device=queries.device)
    for g0 in range(0, U, group):
        best = (queries[g0:g0 + group].float() @ sample.t()).topk(top, dim=1).values  # NaN ranks first
        pos = k - 1 + excluded[g0:g0 + group]
        got = best.gather(1, pos.clamp(max=top - 1)[:, None]).squeeze(1).double()
        t[g0:g0 + group] = torch.where(pos < top, got, float("-inf"))
    gamma = score_error(d, dot) + score_error(d, "tf32")  # the kernel's and the sample product's
    t = t - gamma * torch.linalg.vector_norm(queries, dim=1, dtype=torch.float64) * norm
    tau = t.float()
    return torch.where(tau.double() > t, torch.nextafter(tau, tau.new_tensor(float("-inf"))), tau)


def _candidate_block_d(d: int) -> int:
    return min(32, max(16, triton.next_power_of_2(d)))


# The candidate scan's (BLOCK_U, BLOCK_I, num_warps) tried by autotune on a GPU, per (d, dtype, dot scheme), with
# BLOCK_D = 32 (16 for d <= 16). ptxas -v (sm_90, d = 64; tests/test_triton_compile.py): under Triton 3.6 (the
# H200's) none spills in fp32 (tf32x3) or bf16; under 3.8 the first spills nothing and the others 188-272 bytes
# (BLOCK_D = 64 or BLOCK_I = 128 spilled 60-372 under 3.6). Counted in the SASS (Triton 3.6; a static count, not
# a time), the tile's common path (dot, comparison, reduction, no candidate) issues per score 1.93 / 1.18 / 1.33
# warp instructions in fp32 and 0.79 / 0.62 / 0.64 in bf16 for these three (the last two hold 255 registers a
# thread, the first 245 in fp32 and 193 in bf16). Which runs fastest only a GPU can say; the first is the default
# where autotune does not run (the interpreter tests of the GPU tiles).
CANDIDATE_CONFIGS = [triton.Config({"BLOCK_U": bu, "BLOCK_I": bi}, num_warps=w, num_stages=3)
                     for bu, bi, w in [(64, 64, 8), (128, 64, 8), (64, 64, 4)]]
# reset_to_zero: autotune runs the scan once per config; each run must append to empty candidate lists
candidates_tuned = triton.autotune(CANDIDATE_CONFIGS, key=["d", "UPCAST", "PRECISION"],
                                   reset_to_zero=["cnt_ptr"])(candidates_kernel)


def _autotunes(queries: torch.Tensor) -> bool:
    """Whether the candidate scan runs its autotuned launch (on a GPU; tests patch this)."""
    return queries.is_cuda and not _interpret()


def _candidate_blocks(d: int) -> tuple[int, int, int, int]:
    """candidates_kernel's (BLOCK_U, BLOCK_I, BLOCK_D, num_warps) where it is not autotuned: small under the
    interpreter, else the first of CANDIDATE_CONFIGS (tests run the GPU tiles under the interpreter with it)."""
    if _interpret():
        return 16, 32, min(64, max(16, triton.next_power_of_2(d))), 4
    c = CANDIDATE_CONFIGS[0]
    return c.kwargs["BLOCK_U"], c.kwargs["BLOCK_I"], _candidate_block_d(d), c.num_warps


# candidates_split_kernel's (BLOCK_U, BLOCK_I, num_warps, num_stages) tried by autotune, per d (<= SPLIT_MAX_D),
# with BLOCK_D = d rounded up to a power of two: ptxas -v (sm_90, d = 64, tests/test_triton_compile.py): none
# spills under Triton 3.6 (64 queries a block spilled 116-544 bytes); SASS: 0.88 / 0.89 / 0.97 warp instructions a
# score on the tile's common path.
SPLIT_CONFIGS = [triton.Config({"BLOCK_U": bu, "BLOCK_I": bi}, num_warps=w, num_stages=st)
                 for bu, bi, w, st in [(32, 64, 4, 1), (32, 128, 8, 1), (32, 64, 4, 2)]]
SPLIT_MAX_D = 64  # the program holds its queries' split [d, BLOCK_U] twice for its whole chunk
candidates_split_tuned = triton.autotune(SPLIT_CONFIGS, key=["d"], reset_to_zero=["cnt_ptr"])(candidates_split_kernel)


def _splits(queries: torch.Tensor, items: torch.Tensor, dot: str) -> bool:
    """Whether the candidate scan is candidates_split_kernel's (fp32 tf32x3 dots, d <= SPLIT_MAX_D), unless
    FASTREC_TOPK_SPLIT=0 (Triton's built-in tf32x3 in candidates_kernel: for a comparison on a GPU)."""
    fp32 = queries.dtype == items.dtype == torch.float32
    on = env_choice("FASTREC_TOPK_SPLIT", ("1", "0")) == "1"
    return on and fp32 and dot == "tf32x3" and 0 < queries.shape[1] <= SPLIT_MAX_D


def _split_blocks(d: int) -> tuple[int, int, int, int, int]:
    """candidates_split_kernel's (BLOCK_U, BLOCK_I, BLOCK_D, num_warps, num_stages) where it is not autotuned."""
    block_d = max(16, triton.next_power_of_2(d))
    if _interpret():
        return 16, 32, block_d, 4, 1
    c = SPLIT_CONFIGS[0]
    return c.kwargs["BLOCK_U"], c.kwargs["BLOCK_I"], block_d, c.num_warps, c.num_stages


def split_tf32(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(hi, lo) of an fp32 tensor: hi keeps the top 10 mantissa bits (a tf32 value), lo = x - hi (exact)."""
    hi = (x.contiguous().view(torch.int32) & -8192).view(torch.float32)
    return hi, x - hi


def _threshold_topk(queries, items, k, exclude_indptr, exclude_indices, dot, stride, cap):
    """The threshold scheme, in groups of queries whose candidate slots take at most CANDIDATE_BYTES; None when
    some query got fewer than k kept candidates or more than cap candidates."""
    U, NI = queries.shape[0], items.shape[0]
    has_ex = exclude_indptr is not None and exclude_indices.numel() > 0
    keys = exclusion_keys(exclude_indptr.contiguous(), exclude_indices, U, NI) if has_ex else None
    scores = torch.empty(U, k, dtype=torch.float32, device=queries.device)
    ids = torch.empty(U, k, dtype=torch.int64, device=queries.device)
    sample = sample_of(items, stride)
    group = max(1, CANDIDATE_BYTES // (8 * cap))
    for g0 in range(0, U, group):
        g1 = min(U, g0 + group)
        indptr = exclude_indptr[g0:g1 + 1] if has_ex else None  # offsets into the whole list
        found = _threshold_group(queries[g0:g1], items, k, indptr, exclude_indices, keys, g0, dot, stride, cap,
                                 sample)
        if found is None:
            return None
        scores[g0:g1], ids[g0:g1] = found
    return scores, ids


def _threshold_group(queries, items, k, indptr, indices, keys, first, dot, stride, cap, sample):
    U, NI = queries.shape[0], items.shape[0]
    tau = thresholds(queries, items, k, indptr, indices, dot, stride, sample)
    count = torch.zeros(U, dtype=torch.int32, device=queries.device)
    cand_s = torch.full((U, cap), float("-inf"), dtype=torch.float32, device=queries.device)
    cand_i = torch.full((U, cap), NI, dtype=torch.int32, device=queries.device)
    with device_guard(queries):
        _scan(queries, items, tau, count, cand_s, cand_i, cap, dot)
    least, most = torch.stack(torch.aminmax(count)).tolist()  # the one host read a group (two with exclusions)
    if least < k or most > cap:
        return None
    cand_s, cand_i = cand_s[:, :most], cand_i[:, :most]  # the sort spans the longest list, not cap
    if keys is not None and drop_excluded(cand_s, cand_i, keys, first, NI).min().item() < k:
        return None
    return merge(cand_s, cand_i.long(), k)


def _chunk_tile(configs: list, tuned: bool, block_i: int) -> int:
    """What a scan's item chunk is a multiple of: the widest BLOCK_I autotune may pick (whole tiles for every
    config), or the launch's own block_i."""
    return max(c.kwargs["BLOCK_I"] for c in configs) if tuned else block_i


def _scan(queries, items, tau, count, cand_s, cand_i, cap, dot):
    """The candidate scan's launch: candidates_split_kernel where _splits, else candidates_kernel; autotuned on a
    GPU. The item chunk is the same for every config autotune tries (a multiple of each one's BLOCK_I): sized for
    the smallest query block, so a larger one runs fewer programs over the same chunks."""
    (U, d), NI = queries.shape, items.shape[0]
    tuned = _autotunes(queries)
    if _splits(queries, items, dot):
        block_u, block_i, block_d, warps, stages = _split_blocks(d)
        _, chunks, chunk = _grid(U, NI, block_u, _chunk_tile(SPLIT_CONFIGS, tuned, block_i), queries.device)
        qh, ql = split_tf32(queries)
        args = (qh, ql, items, tau, count, cand_s, cand_i, U, NI, d, chunk, cap)
        if tuned:
            launch_autotuned(candidates_split_tuned, lambda meta: (triton.cdiv(U, meta["BLOCK_U"]), chunks), *args,
                             BLOCK_D=block_d)
        else:
            candidates_split_kernel[(triton.cdiv(U, block_u), chunks)](
                *args, BLOCK_U=block_u, BLOCK_I=block_i, BLOCK_D=block_d, num_warps=warps, num_stages=stages)
        return
    upcast = _interpret() or queries.dtype == torch.float32
    block_u, block_i, block_d, warps = _candidate_blocks(d)
    _, chunks, chunk = _grid(U, NI, block_u, _chunk_tile(CANDIDATE_CONFIGS, tuned, block_i), queries.device)
    args = (queries, items, tau, count, cand_s, cand_i, U, NI, d, chunk, cap)
    if tuned:
        launch_autotuned(candidates_tuned, lambda meta: (triton.cdiv(U, meta["BLOCK_U"]), chunks), *args,
                         UPCAST=upcast, PRECISION=dot, BLOCK_D=block_d)
    else:
        candidates_kernel[(triton.cdiv(U, block_u), chunks)](
            *args, UPCAST=upcast, PRECISION=dot, BLOCK_U=block_u, BLOCK_I=block_i, BLOCK_D=block_d,
            num_warps=warps)


def drop_excluded(scores: torch.Tensor, ids: torch.Tensor, keys: torch.Tensor, first: int,
                  num_items: int) -> torch.Tensor:
    """Turns the candidates their query excludes into empty slots (-inf, I), in place, and returns how many each
    query keeps. Row r is query first + r; keys: exclusion_keys of the whole call (not empty). Excluded items are
    a few of each query's candidates, so this costs less than masking them in every tile of the scan did."""
    rows = torch.arange(first, first + ids.shape[0], device=ids.device)[:, None]
    key = rows * (num_items + 2) + ids.long() + 1
    found = keys[torch.searchsorted(keys, key).clamp(max=keys.numel() - 1)] == key
    hit = found & (ids < num_items)
    scores.masked_fill_(hit, float("-inf"))
    ids.masked_fill_(hit, num_items)
    return (ids < num_items).sum(1)


def merge(scores: torch.Tensor, ids: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k best of each row's candidates by (score desc, id asc): a stable sort by id, then by score."""
    by_id = torch.sort(ids, dim=1, stable=True)
    scores = scores.gather(1, by_id.indices)
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :k]
    return scores.gather(1, order), by_id.values.gather(1, order)
