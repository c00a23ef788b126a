"""nearest_code and residual_encode against the reference, faiss, and under torch.compile / opcheck."""

import os

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastrec
from fastrec import reference
from fastrec.ops import nearest_code, residual_encode

TOL = {torch.float32: 1e-4, torch.float16: 1e-3, torch.bfloat16: 1e-3}

# CPU tensors through the Triton kernels: only under the interpreter (set without a GPU); on a GPU the
# cuda-marked tests run the same kernels in their GPU block sizes.
INTERPRETER_ONLY = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1",
                                      reason="needs TRITON_INTERPRET=1 (no GPU)")



def assert_nearest(x, codebook, index, sqdist):
    """The chosen code is a nearest one (up to fp32 rounding of near ties), and sqdist is its distance."""
    x, codebook, index, sqdist = x.cpu(), codebook.cpu(), index.cpu(), sqdist.cpu()
    ref_index, ref_dist = reference.nearest_code(x, codebook)
    chosen = (x.float() - codebook.float()[index]).pow(2).sum(1)
    scale = 1.0 + ref_dist.abs()
    assert torch.all(chosen <= ref_dist + 1e-4 * scale), "a chosen code is not the nearest"
    torch.testing.assert_close(sqdist, chosen, rtol=1e-4, atol=1e-4)
    # away from near ties the index is exactly the reference's
    gap = _second_gap(x, codebook)
    clear = gap > 1e-3 * scale
    assert torch.equal(index[clear], ref_index[clear])


def _second_gap(x, codebook):
    d = (x.float()[:, None] - codebook.float()[None]).pow(2).sum(-1)
    if d.shape[1] < 2:
        return torch.full((x.shape[0],), float("inf"))
    two = d.topk(2, dim=1, largest=False).values
    return two[:, 1] - two[:, 0]


@pytest.mark.parametrize("n", [1, 7, 1000])
@pytest.mark.parametrize("d", [3, 32, 64])
@pytest.mark.parametrize("k", [1, 2, 256, 512])
def test_nearest_code_matches_reference(n, d, k, on_device):
    x, codebook = torch.randn(n, d), torch.randn(k, d)
    index, sqdist = nearest_code(x, codebook)
    assert index.dtype == torch.int64 and sqdist.dtype == torch.float32
    assert index.shape == (n,) and sqdist.shape == (n,)
    assert_nearest(x, codebook, index, sqdist)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_nearest_code_dtypes(dtype, on_device):
    x, codebook = torch.randn(333, 48).to(dtype), torch.randn(100, 48).to(dtype)
    index, sqdist = nearest_code(x, codebook)
    assert_nearest(x, codebook, index, sqdist)


def test_nearest_code_exact_ties_go_to_lowest_index(on_device):
    codebook = torch.randn(64, 16)
    codebook[40] = codebook[7]  # duplicate code: 7 and 40 always tie
    codebook[50] = codebook[7]
    x = codebook[[7, 40, 50, 3]].clone()
    index, sqdist = nearest_code(x, codebook)
    assert index.tolist() == [7, 7, 7, 3]
    assert torch.all(sqdist == 0)
    # x = 0 is equidistant from +v and -v
    v = torch.randn(1, 16)
    symmetric = torch.cat([torch.full((5, 16), 9.0), v, -v, v])
    index, _ = nearest_code(torch.zeros(3, 16), symmetric)
    assert index.tolist() == [5, 5, 5]


def test_ties_across_tiles_and_threads(on_device):
    # every code identical: the winner must be 0 whichever lane, tile or thread saw it first
    codebook = torch.ones(777, 8)
    index, _ = nearest_code(torch.randn(513, 8), codebook)
    assert torch.all(index == 0)
    codes, _ = residual_encode(torch.randn(300, 8), torch.ones(3, 77, 8))
    assert torch.all(codes == 0)


def test_non_contiguous_inputs(on_device):
    x = torch.randn(200, 64)[:, ::2]
    codebook = torch.randn(32, 90).t()[:50]  # [50, 32] with strides (1, 50)
    assert not x.is_contiguous() and not codebook.is_contiguous()
    index, sqdist = nearest_code(x, codebook)
    assert_nearest(x, codebook, index, sqdist)
    codebooks = torch.randn(3, 32, 40).transpose(1, 2)  # [3, 40, 32] non-contiguous
    codes, q = residual_encode(x, codebooks)
    ref_codes, ref_q = reference.residual_encode(x, codebooks)
    assert torch.equal(codes, ref_codes)
    torch.testing.assert_close(q, ref_q)


def test_empty_input_gives_empty_outputs(on_device):
    index, sqdist = nearest_code(torch.randn(0, 5), torch.randn(3, 5))
    assert index.shape == (0,) and sqdist.shape == (0,)
    codes, q = residual_encode(torch.randn(0, 5), torch.randn(2, 3, 5))
    assert codes.shape == (0, 2) and q.shape == (0, 5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", [(1, 3, 1, 2), (1000, 32, 256, 4), (77, 64, 512, 3)])
def test_residual_encode_matches_reference(dtype, shape, on_device):
    n, d, k, levels = shape
    x = torch.randn(n, d).to(dtype)
    codebooks = (torch.randn(levels, k, d) * torch.logspace(0, -1.5, levels)[:, None, None]).to(dtype)
    codes, quantized = residual_encode(x, codebooks)
    x, codebooks, codes, quantized = x.cpu(), codebooks.cpu(), codes.cpu(), quantized.cpu()
    ref_codes, ref_q = reference.residual_encode(x, codebooks)
    assert codes.shape == (n, levels) and quantized.dtype == dtype
    # greedy levels: one near tie flips every later level, so compare the first level strictly and the
    # reconstruction as a whole
    first = reference.nearest_code(x, codebooks[0])[0]
    gap = _second_gap(x, codebooks[0])
    assert torch.equal(codes[:, 0][gap > 1e-3], first[gap > 1e-3])
    agree = (codes == ref_codes).all(1)
    assert agree.float().mean() > 0.97
    torch.testing.assert_close(quantized[agree], ref_q[agree], rtol=TOL[dtype], atol=TOL[dtype])
    # quantized is the sum of the chosen codes
    summed = sum(codebooks[lv].float()[codes[:, lv]] for lv in range(levels))
    torch.testing.assert_close(quantized.float(), summed, rtol=TOL[dtype] * 10, atol=TOL[dtype] * 10)


def test_agrees_with_faiss_index_flat_l2():
    faiss = pytest.importorskip("faiss")
    x, codebook = torch.randn(2000, 32), torch.randn(256, 32)
    index = faiss.IndexFlatL2(32)
    index.add(codebook.numpy())
    dist, ids = index.search(x.numpy(), 1)
    mine, sqdist = nearest_code(x, codebook)
    gap = _second_gap(x, codebook)
    clear = gap > 1e-3
    assert torch.equal(mine[clear], torch.from_numpy(ids[:, 0]).long()[clear])
    torch.testing.assert_close(sqdist, torch.from_numpy(dist[:, 0]), rtol=1e-3, atol=1e-3)


def test_gradients_match_reference_autograd(on_device):
    x = torch.randn(50, 12, requires_grad=True)
    codebook = torch.randn(20, 12, requires_grad=True)
    _, sqdist = nearest_code(x, codebook)
    w = torch.randn(50)
    gx, gc = torch.autograd.grad((sqdist * w).sum(), (x, codebook))
    _, ref = reference.nearest_code(x, codebook)
    rgx, rgc = torch.autograd.grad((ref * w).sum(), (x, codebook))
    torch.testing.assert_close(gx, rgx)
    torch.testing.assert_close(gc, rgc)

    codebooks = torch.randn(3, 20, 12, requires_grad=True)
    _, q = residual_encode(x.detach(), codebooks)
    g = torch.randn_like(q)
    (grad,) = torch.autograd.grad((q * g).sum(), codebooks)
    _, ref_q = reference.residual_encode(x.detach(), codebooks)
    (ref_grad,) = torch.autograd.grad((ref_q * g).sum(), codebooks)
    torch.testing.assert_close(grad, ref_grad)


# opcheck's aot_dispatch check sums every output into one in-place accumulator, which cannot work when
# an integer output (the index) comes first; compiled forward+backward is tested below instead.
OPCHECK_UTILS = ("test_schema", "test_autograd_registration", "test_faketensor")


def test_opcheck(on_device):
    x, codebook = torch.randn(37, 16, requires_grad=True), torch.randn(9, 16, requires_grad=True)
    torch.library.opcheck(torch.ops.fastrec.nearest_code.default, (x, codebook), test_utils=OPCHECK_UTILS)
    codebooks = torch.randn(3, 9, 16, requires_grad=True)
    torch.library.opcheck(torch.ops.fastrec.residual_encode.default, (x, codebooks), test_utils=OPCHECK_UTILS)


def test_torch_compile_backward(on_device):
    @torch.compile(fullgraph=True, backend="aot_eager")
    def loss(x, codebook, codebooks):
        _, dist = nearest_code(x, codebook)
        _, q = residual_encode(x, codebooks)
        return dist.sum() + (q * q).sum()

    x = torch.randn(40, 8, requires_grad=True)
    codebook, codebooks = torch.randn(6, 8, requires_grad=True), torch.randn(2, 6, 8, requires_grad=True)
    grads = torch.autograd.grad(loss(x, codebook, codebooks), (x, codebook, codebooks))
    eager = torch.autograd.grad(loss.__wrapped__(x, codebook, codebooks), (x, codebook, codebooks))
    for got, want in zip(grads, eager, strict=True):
        torch.testing.assert_close(got, want)


def test_torch_compile_fullgraph(on_device):
    @torch.compile(fullgraph=True, backend="aot_eager")
    def encode(x, codebooks):
        codes, q = residual_encode(x, codebooks)
        index, dist = nearest_code(x - q, codebooks[0])
        return codes, q, index, dist

    x, codebooks = torch.randn(64, 16), torch.randn(2, 32, 16)
    codes, q, index, dist = encode(x, codebooks)
    ref_codes, ref_q = reference.residual_encode(x, codebooks)
    assert torch.equal(codes, ref_codes)
    torch.testing.assert_close(q, ref_q)
    assert_nearest(x - q, codebooks[0], index, dist)


# ------------------------------------------------------------------ the Triton kernel (the CUDA backend)
# Grid-valued inputs (multiples of 2^-3, |v| <= 2, or the same scaled by a power of two) make every exact
# distance exact in fp32 whatever the summation order, so the codes of exact search are unambiguous -- exact
# ties (duplicate codes, equidistant points) and near ties one grid step apart included -- and the Triton
# codes must equal the reference's bit for bit. Under the interpreter the kernel rounds its dot operands to
# tf32 (EMULATE_TF32), so the candidate/re-rank path sees the error it sees on tensor cores.


def _tk():
    pytest.importorskip("triton")
    from fastrec.kernels import quantize as tk

    return tk


def _grid(t, step=0.125, clip=2.0):
    return (t.clamp(-clip, clip) / step).round() * step


def _grid_inputs(n, d, k, levels, g, device="cpu"):
    x = _grid(torch.randn(n, d, generator=g)).to(device)
    scale = torch.tensor([1.0, 0.5, 0.25, 0.25])[:levels, None, None]
    codebooks = _grid(torch.randn(levels, k, d, generator=g) * scale).to(device)
    return x, codebooks


def _assert_equals_exact_search(encode, nearest, x, codebooks):
    """encode(x, codebooks) -> (codes, quantized) and nearest(x, codebook) -> (index, sqdist) give exact search's
    codes bit for bit; returns the codes."""
    codes, q = encode(x, codebooks)
    ref_codes, ref_q = reference.residual_encode(x.cpu(), codebooks.cpu())
    assert torch.equal(codes.cpu(), ref_codes)
    assert q.dtype == x.dtype and torch.equal(q.cpu(), ref_q)  # sums of grid values: exact
    index, dist = nearest(x, codebooks[0])
    ref_index, ref_dist = reference.nearest_code(x.cpu(), codebooks[0].cpu())
    assert torch.equal(index.cpu(), ref_index)
    torch.testing.assert_close(dist.cpu(), ref_dist, rtol=1e-5, atol=1e-6)  # sum order: off-grid rows differ
    return codes


def _assert_triton_equals_reference(tk, x, codebooks, **kw):
    return _assert_equals_exact_search(lambda x, c: tk.encode(x, c, want_q=True, want_dist=False, **kw)[:2],
                                       tk.nearest_code, x, codebooks)


SHAPES = [(d, k) for d in (1, 3, 33, 64, 130) for k in (1, 37, 256)]


@pytest.mark.parametrize("d,k", SHAPES, ids=[f"D{d}-K{k}" for d, k in SHAPES])
def test_triton_codes_equal_exact_search(d, k, triton_device):
    """D and K off the block sizes (D = 130 takes the scratch-buffer path), L = 1..4, three dtypes."""
    tk = _tk()
    i = SHAPES.index((d, k))
    dtype = (torch.float32, torch.bfloat16, torch.float16)[i % 3]
    x, codebooks = _grid_inputs(97, d, k, 1 + i % 4, torch.Generator().manual_seed(i), triton_device)
    _assert_triton_equals_reference(tk, x.to(dtype), codebooks.to(dtype))


def _kmeans(data, k, iters, g):
    centroids = data[torch.randperm(data.shape[0], generator=g)[:k]].clone()
    for _ in range(iters):
        assign = torch.cdist(data, centroids).argmin(1)
        for c in range(k):
            members = data[assign == c]
            if len(members):
                centroids[c] = members.mean(0)
    return centroids


def _kmeans_case(n=600, d=16, k=48, levels=3, scale=1.0, seed=0):
    """Clustered data, k-means codebooks per level on the residuals (a few Lloyd steps, snapped to the grid),
    duplicated centroids, rows equal to codes, rows equidistant from two codes and rows a little off that
    midpoint (near ties far inside the tf32 error window)."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(12, d, generator=g)
    data = _grid(centers[torch.randint(0, 12, (n,), generator=g)] + 0.3 * torch.randn(n, d, generator=g))
    residual, books = data.clone(), []
    for level in range(levels):
        book = _grid(_kmeans(residual, k, 4, g), step=0.125 / 2 ** level)
        book[k - 5:] = book[:5]  # duplicates: the later copy must never win
        books.append(book)
        residual = residual - book[reference.nearest_code(residual, book)[0]]
    codebooks = torch.stack(books)
    # a near-duplicate pair (k-means leaves such pairs around small clusters): code k - 6 = code 3 + 2v
    first = codebooks[0]
    v = torch.zeros(d)
    v[0], v[1] = 0.125, -0.0625
    first[k - 6] = first[3] + 2 * v
    mid, nudge = first[3] + v, torch.zeros(d)
    nudge[0] = 0.03125
    # an off-grid pair (code k - 7 = code 4 + 2w, w not representable in tf32) and rows t (a - b) from its
    # midpoint: an exact-distance gap of 2 |t| ||a - b||^2 (relative 4e-4 .. 1e-2 of the distance: far above
    # fp32 rounding, inside the tf32 error window)
    first[k - 7] = first[4] + 2 * (0.1 * torch.randn(d, generator=g))
    t = torch.tensor([1e-4, -1e-4, 3e-4, -3e-4, 1e-3, -1e-3, 3e-3, -3e-3])[:, None]
    off = (first[4] + first[k - 7]) / 2 + t * (first[4] - first[k - 7])
    x = torch.cat([data, first[:10], mid[None].repeat(3, 1), (mid - nudge)[None], (mid + nudge)[None], off])
    return x * scale, codebooks * scale


def _assert_kmeans_case_codes(codes, k):
    """The planted rows of _kmeans_case (its last 23) get the codes exact search gives them."""
    assert not bool((codes >= k - 5).any())  # a duplicate never beats its lower-index twin
    n = codes.shape[0]
    assert codes[n - 23:n - 13, 0].tolist() == list(range(10))  # rows equal to codes 0..9
    assert codes[n - 13:n - 10, 0].tolist() == [3, 3, 3]  # the exact midpoint of codes 3 and k - 6: the lower
    assert codes[n - 10:n - 8, 0].tolist() == [3, k - 6]  # a quarter step toward code 3 / toward code k - 6
    assert codes[n - 8:, 0].tolist() == [4, k - 7] * 4  # off-grid near ties


@pytest.mark.parametrize("scale", [1.0, 1024.0], ids=["unit", "magnitude-1e3"])
def test_triton_kmeans_codebooks_with_ties_and_near_ties(scale, triton_device):
    tk = _tk()
    x, codebooks = _kmeans_case(scale=scale)
    codes = _assert_triton_equals_reference(tk, x.to(triton_device), codebooks.to(triton_device)).cpu()
    _assert_kmeans_case_codes(codes, codebooks.shape[1])
    if os.environ.get("TRITON_INTERPRET") == "1":  # the emulated tf32 ranking alone gets some of them wrong
        approx = tk.encode(x, codebooks[:1], False, True, approx_only=True, precision="tf32")[0][:, 0]
        assert not torch.equal(approx, codes[:, 0])


def test_triton_tiles_across_k_and_rows(triton_device):
    """Small tiles (16 x 16): ties and candidates across K tiles and row blocks."""
    tk = _tk()
    x, codebooks = _kmeans_case(n=70, d=12, k=37, levels=2)
    codebooks[:, 33] = codebooks[:, 2]  # a duplicate in another K tile
    for blocks in [(16, 16), (32, 16)]:
        _assert_triton_equals_reference(tk, x.to(triton_device), codebooks.to(triton_device), blocks=blocks)
    ones = torch.ones(1, 77, 8, device=triton_device)
    codes, _, _ = tk.encode(torch.randn(40, 8, device=triton_device), ones, False, False, blocks=(16, 16))
    assert bool((codes == 0).all())


def _rounding_trap(rows, d, k, winner, decoy, decoy_gap):
    """x = e_0 in every row; code `winner` = e_0 + 2^-14 e_1 (exact distance 2^-28), code `decoy` =
    (1 - decoy_gap) e_0 (exact distance decoy_gap^2, but rounded to e_0 by a short mantissa); the rest far."""
    x = torch.zeros(rows, d)
    x[:, 0] = 1.0
    codebook = torch.randn(k, d, generator=torch.Generator().manual_seed(0)) * 3 + 10
    codebook[winner] = 0.0
    codebook[winner, 0], codebook[winner, 1] = 1.0, 2.0 ** -14
    codebook[decoy] = 0.0
    codebook[decoy, 0] = 1.0 - decoy_gap
    return x, codebook


try:  # a Triton kernel around the encode kernel's running three smallest (per column slot, then merged)
    import triton
    import triton.language as tl
    from fastrec.kernels.quantize import _empty_slots, _merge_slots, _slot_insert

    @triton.jit
    def _three_smallest_kernel(v_ptr, out_ptr, K, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
        rows = tl.arange(0, BLOCK_N)
        s1, i1, s2, i2, s3 = _empty_slots(BLOCK_N, BLOCK_K)
        for k0 in range(0, K, BLOCK_K):
            ks = k0 + tl.arange(0, BLOCK_K)
            v = tl.load(v_ptr + rows[:, None] * K + ks[None, :], mask=(ks < K)[None, :], other=float("inf"))
            codes = tl.broadcast_to(ks[None, :], [BLOCK_N, BLOCK_K])
            s1, i1, s2, i2, s3 = _slot_insert(v, codes, s1, i1, s2, i2, s3)
        m1, j1, m2, j2, m3 = _merge_slots(s1, i1, s2, i2, s3, K)
        out = out_ptr + rows * 5
        tl.store(out, m1)
        tl.store(out + 1, j1.to(tl.float32))
        tl.store(out + 2, m2)
        tl.store(out + 3, j2.to(tl.float32))
        tl.store(out + 4, m3)
except ImportError:  # pragma: no cover - triton ships with torch on Linux
    _three_smallest_kernel = None


@settings(max_examples=25, deadline=None)
@given(k=st.integers(3, 70), levels=st.integers(1, 4), block_k=st.sampled_from([4, 8, 16]), seed=st.integers(0, 999))
def test_running_three_smallest_per_slot_equal_a_sort_by_value_then_code(k, levels, block_k, seed):
    """pass 1's candidates: the three smallest A - B of a row over all codes by (value, code), the first two with
    their codes, kept per column slot of the tile and merged after the loop. Few distinct values (exact ties
    everywhere) and a column slot that holds a row's three smallest put every branch of the insertion to work;
    a wrong third value would send a block to the two-candidate resolve when a third code is a candidate."""
    if os.environ.get("TRITON_INTERPRET") != "1" and not torch.cuda.is_available():
        pytest.skip("needs the Triton interpreter or a GPU")
    dev = "cpu" if os.environ.get("TRITON_INTERPRET") == "1" else "cuda"
    g = torch.Generator().manual_seed(seed)
    v = torch.randint(0, levels + 1, (8, k), generator=g).float()
    for row in (0, 1):  # one slot holds the row's smallest, rising (row 0) or falling (row 1) with the code
        slot = int(torch.randint(0, block_k, (1,), generator=g))
        n = len(range(slot, k, block_k))
        v[row, slot::block_k] = -100.0 + torch.arange(n).float() * (1 if row == 0 else -1)
    out = torch.empty(8, 5, device=dev)
    _three_smallest_kernel[(1,)](v.to(dev), out, k, BLOCK_N=8, BLOCK_K=block_k)
    for row, got in zip(v.tolist(), out.cpu().tolist(), strict=True):
        (a, i), (b, j), (c, _) = sorted((value, code) for code, value in enumerate(row))[:3]
        assert got == [a, i, b, j, c]


@INTERPRETER_ONLY
def test_tf32_emulation_changes_the_approximate_ranking_not_the_codes():
    """x = e_0; code 5 = e_0 + 2^-14 e_1 (exact distance 2^-28), code 9 = (1 - 2^-13) e_0 (2^-26). In tf32,
    1 - 2^-13 rounds to 1, so ||c||^2 - 2 x.c ranks code 9 first by 2^-12; the fp32 dot ties them (code 5
    by index); the re-rank must return code 5 either way."""
    tk = _tk()
    x, codebook = _rounding_trap(4, 16, 20, winner=5, decoy=9, decoy_gap=2.0 ** -13)
    cb = codebook[None]

    def codes(**kw):
        return tk.encode(x, cb, False, True, **kw)[0][:, 0].tolist()

    assert reference.nearest_code(x, codebook)[0].tolist() == [5] * 4
    assert codes(emulate_tf32=True, approx_only=True, precision="tf32") == [9] * 4  # the emulation is really taken
    assert codes(emulate_tf32=False, approx_only=True, precision="tf32") == [5] * 4
    assert codes(emulate_tf32=True, precision="tf32") == [5] * 4  # and the re-rank undoes it
    for resolve in (True, False):
        assert codes(precision="tf32", resolve=resolve) == [5] * 4  # the default under the interpreter emulates
    # tf32x3 splits 1 - 2^-13 into 1 + (-2^-13): the emulated split dot ranks code 5 first by itself
    assert codes(emulate_tf32=True, approx_only=True, precision="tf32x3") == [5] * 4


@pytest.mark.parametrize("d, k", [(20, 30), (20, 32), (130, 16)])
def test_triton_nan_and_inf_rows(triton_device, d, k):
    """A NaN row: code 0 at every level and a NaN distance; an Inf row: code 0 and distance Inf (the
    reference's argmin over all-NaN / all-Inf distances); the other rows are untouched. K = 32 fills the
    interpreter's code tile (no padding code to hide a row of NaN scores: the dots must see such rows as
    zeros), D = 130 takes the scratch path."""
    tk = _tk()
    x, codebooks = _grid_inputs(40, d, k, 3, torch.Generator().manual_seed(3))
    x[5, 2] = float("nan")
    x[9, 0] = float("inf")
    codes, q, _ = tk.encode(x.to(triton_device), codebooks.to(triton_device), True, False)
    ref_codes, ref_q = reference.residual_encode(x, codebooks)
    assert torch.equal(codes.cpu(), ref_codes) and codes[5].tolist() == [0, 0, 0]
    index, dist = tk.nearest_code(x.to(triton_device), codebooks[0].to(triton_device))
    assert index[5] == 0 and index[9] == 0 and torch.isnan(dist[5]) and torch.isinf(dist[9])
    torch.testing.assert_close(q.cpu(), ref_q, equal_nan=True)


def test_triton_empty_and_non_contiguous(triton_device):
    tk = _tk()
    codes, q = tk.residual_encode(torch.randn(0, 5, device=triton_device), torch.randn(2, 3, 5, device=triton_device))
    assert codes.shape == (0, 2) and q.shape == (0, 5)
    x, codebooks = _grid_inputs(60, 70, 40, 3, torch.Generator().manual_seed(4))
    xt = x.t().contiguous().t()  # column-major
    cbt = codebooks.transpose(1, 2).contiguous().transpose(1, 2)
    assert not xt.is_contiguous() and not cbt.is_contiguous()
    _assert_triton_equals_reference(tk, xt.to(triton_device), cbt.to(triton_device))


def test_triton_random_inputs_are_nearest(triton_device):
    """Off the grid, near ties below fp32 rounding may order differently from torch's sum; the chosen code
    is still a nearest one and its distance exact."""
    tk = _tk()
    x, codebook = torch.randn(300, 48, device=triton_device), torch.randn(100, 48, device=triton_device)
    for dtype in (torch.float32, torch.bfloat16):
        xd, cd = x.to(dtype), codebook.to(dtype)
        assert_nearest(xd, cd, *tk.nearest_code(xd, cd))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n=st.integers(0, 60), d=st.integers(1, 40), k=st.integers(1, 70), levels=st.integers(1, 4),
       dtype=st.sampled_from([torch.float32, torch.float16, torch.bfloat16]), duplicates=st.booleans(),
       small_tiles=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_triton_property_codes_equal_reference(n, d, k, levels, dtype, duplicates, small_tiles, seed,
                                               triton_device):
    tk = _tk()
    x, codebooks = _grid_inputs(n, d, k, levels, torch.Generator().manual_seed(seed))
    if duplicates:
        codebooks[:, -1] = codebooks[:, 0]
        if n:
            x[0] = codebooks[0, -1]
    x, codebooks = x.to(dtype).to(triton_device), codebooks.to(dtype).to(triton_device)
    _assert_triton_equals_reference(tk, x, codebooks, blocks=(16, 16) if small_tiles else None)


@pytest.mark.cuda
def test_the_cuda_backend_is_the_triton_kernel(cuda_device):
    from fastrec.ops._library import HAS_TRITON

    if HAS_TRITON and os.environ.get("FASTREC_NO_TRITON") != "1":
        assert fastrec.backends()["cuda"]["residual_encode"] == "triton"
    x, codebooks = _kmeans_case()
    codes, q = residual_encode(x.to(cuda_device), codebooks.to(cuda_device))
    ref_codes, ref_q = reference.residual_encode(x, codebooks)
    assert torch.equal(codes.cpu(), ref_codes) and torch.equal(q.cpu(), ref_q)


@pytest.mark.cuda
def test_triton_kernels_in_their_gpu_block_configs(cuda_device):
    """Random (off-grid) inputs through the autotuned GPU configs, D on both paths."""
    tk = _tk()
    for n, d, k in [(1, 3, 1), (1000, 32, 256), (777, 64, 513), (65, 100, 70), (300, 200, 90)]:
        x, codebook = torch.randn(n, d, device=cuda_device), torch.randn(k, d, device=cuda_device)
        index, sqdist = tk.nearest_code(x, codebook)
        assert_nearest(x, codebook, index, sqdist)
        xb, cb = x.bfloat16(), codebook.bfloat16()
        assert_nearest(xb, cb, *tk.nearest_code(xb, cb))


def test_triton_bad_dot_precision_setting_is_named(triton_device, monkeypatch):
    tk = _tk()
    monkeypatch.setenv("FASTREC_QUANTIZE_DOT", "ieee")
    with pytest.raises(ValueError, match="FASTREC_QUANTIZE_DOT"):
        tk.nearest_code(torch.randn(5, 4, device=triton_device), torch.randn(3, 4, device=triton_device))


@pytest.mark.cuda
@pytest.mark.parametrize("precision,resolve", [("tf32x3", True), ("tf32", True), ("tf32", False)])
def test_triton_schemes_on_the_gpu_equal_exact_search(cuda_device, precision, resolve):
    """Each scheme the kernel offers (the benchmark times all three): codes equal to exact search on grid
    inputs and k-means codebooks with ties, in the GPU's block configs."""
    tk = _tk()
    x, codebooks = _grid_inputs(2000, 64, 300, 3, torch.Generator().manual_seed(1), cuda_device)
    _assert_triton_equals_reference(tk, x, codebooks, precision=precision, resolve=resolve)
    x, codebooks = _kmeans_case()
    codes = _assert_triton_equals_reference(tk, x.to(cuda_device), codebooks.to(cuda_device), precision=precision,
                                            resolve=resolve)
    _assert_kmeans_case_codes(codes.cpu(), codebooks.shape[1])


# ------------------------------------------------------------------ the CPU kernel: AMX and fp32 paths
# With AMX the C++ kernel ranks codes by bf16 tile-unit dots and re-ranks the candidates by exact fp32
# distance, so its codes equal exact search bit for bit (like the Triton kernel's); FASTREC_CPU_AMX=0, or a
# CPU without AMX, takes the fp32 micro-kernel (nearest up to fp32 rounding of near ties). Both are tested here.
NEEDS_AMX = pytest.mark.skipif(not fastrec.backends()["cpu_amx"], reason="this CPU has no AMX tile unit")


@pytest.fixture(params=["amx", "fp32"])
def cpu_path(request, monkeypatch):
    """Runs a test once per CPU kernel path (the AMX one only where the CPU has it)."""
    if request.param == "amx":
        monkeypatch.delenv("FASTREC_CPU_AMX", raising=False)
        if not fastrec.backends()["cpu_amx"]:
            pytest.skip("this CPU has no AMX tile unit")
    else:
        monkeypatch.setenv("FASTREC_CPU_AMX", "0")
        assert fastrec.backends()["cpu_amx"] is False
    return request.param


@NEEDS_AMX
@pytest.mark.parametrize("d,k", SHAPES, ids=[f"D{d}-K{k}" for d, k in SHAPES])
def test_cpu_amx_codes_equal_exact_search(d, k):
    """D and K off the tile sizes (D = 1..130, K = 1..256), rows off the 32-row step, L = 1..4, three dtypes."""
    i = SHAPES.index((d, k))
    dtype = (torch.float32, torch.bfloat16, torch.float16)[i % 3]
    x, codebooks = _grid_inputs(97, d, k, 1 + i % 4, torch.Generator().manual_seed(i))
    _assert_equals_exact_search(residual_encode, nearest_code, x.to(dtype), codebooks.to(dtype))


@NEEDS_AMX
@pytest.mark.parametrize("scale", [1.0, 1024.0], ids=["unit", "magnitude-1e3"])
def test_cpu_amx_kmeans_codebooks_with_ties_and_near_ties(scale):
    x, codebooks = _kmeans_case(scale=scale)
    codes = _assert_equals_exact_search(residual_encode, nearest_code, x, codebooks)
    _assert_kmeans_case_codes(codes, codebooks.shape[1])


def test_cpu_bf16_rounding_is_re_ranked(cpu_path):
    """x = e_0; code 9 = e_0 + 2^-14 e_1 (exact distance 2^-28), code 5 = (1 - 2^-9) e_0 (2^-18). In bf16,
    1 - 2^-9 rounds to 1, so the tile unit's ranking puts code 5 first (and it is also the lower index of the
    two candidates); both paths must return code 9."""
    x, codebook = _rounding_trap(70, 40, 40, winner=9, decoy=5, decoy_gap=2.0 ** -9)  # D = 40: a partial chunk
    bf16_rank = codebook.pow(2).sum(1) - 2 * x[:1].bfloat16().float() @ codebook.bfloat16().float().T
    assert bf16_rank.argmin().item() == 5  # what the dots alone would choose
    assert nearest_code(x, codebook)[0].tolist() == [9] * 70
    assert residual_encode(x, codebook[None])[0][:, 0].tolist() == [9] * 70


def test_cpu_norms_too_large_for_the_tile_unit(cpu_path):
    """Rows or codes with a norm >= 2^60 (bf16 dots could overflow) take the exact scan / the fp32 path."""
    g = torch.Generator().manual_seed(3)
    x, codebooks = _grid_inputs(45, 3, 20, 2, g)
    for xs, cs in [(2.0 ** 61, 2.0 ** 61), (2.0 ** 61, 1.0), (1.0, 2.0 ** 61)]:
        codes, q = residual_encode(x * xs, codebooks * cs)
        ref_codes, _ = reference.residual_encode(x * xs, codebooks * cs)
        if cpu_path == "amx":  # exact: the tile unit with an exact scan, or (huge codes) the fp32 path on grid values
            assert torch.equal(codes, ref_codes)
        assert_nearest(x * xs, codebooks[0] * cs, *nearest_code(x * xs, codebooks[0] * cs))
        summed = sum((codebooks[lv] * cs)[codes[:, lv]] for lv in range(2))
        assert torch.equal(q, summed)


@pytest.mark.parametrize("shape", [(1, 3, 1, 2), (1000, 32, 256, 4), (77, 64, 512, 3), (333, 130, 37, 2)])
def test_cpu_paths_agree_with_the_reference(shape, cpu_path):
    n, d, k, levels = shape
    g = torch.Generator().manual_seed(n)
    x = torch.randn(n, d, generator=g)
    codebooks = torch.randn(levels, k, d, generator=g) * torch.logspace(0, -1.5, levels)[:, None, None]
    codebooks[:, -1] = codebooks[:, 0]  # duplicates: the later copy never wins
    codes, _ = residual_encode(x, codebooks)
    if k > 1:
        assert not bool((codes == k - 1).any())
    index, sqdist = nearest_code(x, codebooks[0])
    assert_nearest(x, codebooks[0], index, sqdist)
    ref_codes, _ = reference.residual_encode(x, codebooks)
    agree = (codes == ref_codes).all(1).float().mean()
    assert agree == 1.0 if cpu_path == "amx" else agree > 0.97


BAD = [
    (lambda: nearest_code(torch.randn(4, 3), torch.randn(5, 4)), ValueError, "codebook has D=4"),
    (lambda: nearest_code(torch.randn(4, 3, 1), torch.randn(5, 3)), ValueError, "x must be 2-D"),
    (lambda: nearest_code(torch.randn(4, 3), torch.randn(5)), ValueError, "codebook must be 2-D"),
    (lambda: nearest_code(torch.ones(4, 3, dtype=torch.int64), torch.randn(5, 3)), ValueError, "x must have"),
    (lambda: nearest_code(torch.randn(4, 3), torch.ones(5, 3, dtype=torch.int32)), ValueError, "codebook must"),
    (lambda: nearest_code(torch.randn(4, 3), torch.randn(0, 3)), ValueError, "K = 0"),
    (lambda: nearest_code(torch.randn(4, 3), torch.randn(5, 3).half()), ValueError, "differ in dtype"),
    (lambda: nearest_code(torch.tensor([[0.0, float("nan"), 1.0]]), torch.randn(5, 3)), ValueError, "x contains"),
    (lambda: nearest_code(torch.tensor([[0.0, float("inf"), 1.0]]), torch.randn(5, 3)), ValueError, "x contains"),
    (lambda: nearest_code(torch.randn(2, 3), torch.full((5, 3), float("nan"))), ValueError, "codebook contains"),
    (lambda: nearest_code([[1.0]], torch.randn(5, 1)), TypeError, "x must be a torch.Tensor"),
    (lambda: residual_encode(torch.randn(4, 3), torch.randn(5, 3)), ValueError, "codebooks must be 3-D"),
    (lambda: residual_encode(torch.randn(4, 3), torch.randn(0, 5, 3)), ValueError, "L = 0"),
    (lambda: residual_encode(torch.randn(4, 3), torch.randn(2, 0, 3)), ValueError, "K = 0"),
    (lambda: residual_encode(torch.randn(4, 3), torch.randn(2, 5, 2)), ValueError, "codebooks has D=2"),
    (lambda: residual_encode(torch.randn(4, 3).double(), torch.randn(2, 5, 3).double()), ValueError, "x must"),
]


@pytest.mark.parametrize("call,exc,match", BAD)
def test_bad_input_names_the_argument(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_nan_rows_rejected_by_the_kernel_itself():
    """The C++ kernel checks x while loading it, so a direct torch.ops call cannot return garbage."""
    x = torch.randn(300, 8)
    x[257, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN or Inf"):
        torch.ops.fastrec.nearest_code(x, torch.randn(4, 8))
    with pytest.raises(ValueError, match="has D="):
        torch.ops.fastrec.residual_encode(x, torch.randn(1, 4, 7))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    n=st.integers(0, 70), d=st.integers(1, 40), k=st.integers(1, 70), levels=st.integers(1, 4),
    dtype=st.sampled_from([torch.float32, torch.float16, torch.bfloat16]),
    duplicates=st.booleans(), seed=st.integers(0, 2**31 - 1),
)
def test_property_against_reference(n, d, k, levels, dtype, duplicates, seed, on_device):
    g = torch.Generator(device=on_device).manual_seed(seed)
    codebooks = torch.randn(levels, k, d, generator=g, device=on_device)
    if duplicates:  # boundary: repeated codes and rows equal to codes
        codebooks[:, -1] = codebooks[:, 0]
    x = torch.randn(n, d, generator=g, device=on_device)
    if duplicates and n:
        x[0] = codebooks[0, -1]
    x, codebooks = x.to(dtype), codebooks.to(dtype)
    index, sqdist = nearest_code(x, codebooks[0])
    assert_nearest(x, codebooks[0], index, sqdist)
    if duplicates:
        assert not torch.any(index == k - 1) or k == 1
    codes, q = residual_encode(x, codebooks)
    assert codes.shape == (n, levels) and bool(((codes >= 0) & (codes < k)).all())
    summed = sum(codebooks[lv].float()[codes[:, lv]] for lv in range(levels)) if n else q.float()
    torch.testing.assert_close(q.float(), summed, rtol=TOL[dtype] * 10, atol=TOL[dtype] * 10)


def test_schemas_in_python_mirror_cpp():
    from fastrec.ops._library import SCHEMAS

    for name, schema in SCHEMAS.items():
        op = getattr(torch.ops.fastrec, name).default
        assert str(op._schema) == f"fastrec::{schema}"


def test_backends_reports_active_kernels():
    info = fastrec.backends()
    assert set(info["cpu"]) >= {"nearest_code", "residual_encode"}
    assert info["cpu"]["nearest_code"] in ("c++/openmp", "reference")
    assert info["cuda"]["nearest_code"] in ("triton", "reference")  # no CUDA C++ kernel any more
