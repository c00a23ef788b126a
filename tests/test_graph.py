"""spmm, lightgcn_propagate and topk_scores against the reference, under opcheck / torch.compile, bad input."""

from collections import namedtuple

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastrec import reference
from fastrec.data import InteractionGraph, synthetic
from fastrec.eval import full_ranking, select_rows
from fastrec.ops import lightgcn_propagate, spmm, topk_scores

TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def random_csr(rows, cols, density=0.3, dtype=torch.int64, seed=0, empty_rows=True):
    """(indptr, indices, values, dense) drawn on the CPU, on torch's default device (see `on_device`)."""
    with torch.device("cpu"):
        g = torch.Generator().manual_seed(seed)
        mask = torch.rand(rows, cols, generator=g) < density
        if empty_rows and rows > 2:
            mask[1] = False  # an empty row
        vals = torch.randn(rows, cols, generator=g)
        dense = torch.where(mask, vals, torch.zeros_like(vals))
        csr = dense.to_sparse_csr()
    to = torch.get_default_device()
    # clones: views of a sparse tensor's parts keep it as their _base, which torch 2.11's fake tensors cannot
    # describe (opcheck's aot_dispatch test); a user's CSR arrives as plain tensors too
    parts = (csr.crow_indices().to(to, dtype), csr.col_indices().to(to, dtype), csr.values().to(to))
    return *(t.clone() for t in parts), dense.to(to)


class _OnDevice:
    """An InteractionGraph's CSR on torch's default device (what lightgcn_propagate reads of a graph)."""

    def __init__(self, g):
        to = torch.get_default_device()
        self.indptr, self.indices, self.values = g.indptr.to(to), g.indices.to(to), g.values.to(to)
        self.is_symmetric, self.num_nodes, self._g = True, g.num_nodes, g

    def to_dense(self):
        return self._g.to_dense().to(torch.get_default_device())


def small_graph(num_users=60, num_items=40, seed=0):
    """A synthetic interaction graph, built on the CPU; on another default device, its CSR moved there."""
    with torch.device("cpu"):
        data = synthetic(num_users=num_users, num_items=num_items, seed=seed, mean_len=6.0, min_len=2)
        g = InteractionGraph.from_interactions(data)
    return g if torch.get_default_device().type == "cpu" else _OnDevice(g)


# ----------------------------------------------------------------------------------------- spmm


@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("rows,cols,d", [(1, 1, 1), (7, 5, 3), (33, 50, 16), (64, 129, 64), (20, 30, 100)])
def test_spmm_matches_dense(index_dtype, rows, cols, d, on_device):
    indptr, indices, values, dense_a = random_csr(rows, cols, dtype=index_dtype)
    x = torch.randn(cols, d)
    out = spmm(indptr, indices, values, x)
    torch.testing.assert_close(out, dense_a @ x, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out, reference.spmm(indptr, indices, values, x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_spmm_dtypes(dtype, on_device):
    indptr, indices, values, dense_a = random_csr(31, 47)
    x = torch.randn(47, 80).to(dtype)
    out = spmm(indptr, indices, values.to(dtype), x)
    assert out.dtype == dtype
    ref = reference.spmm(indptr, indices, values.to(dtype), x)
    torch.testing.assert_close(out.float(), ref.float(), rtol=TOL[dtype], atol=TOL[dtype])


def test_spmm_gradients_dense_and_values(on_device):
    indptr, indices, values, _ = random_csr(23, 17, density=0.4)
    x = torch.randn(17, 19, dtype=torch.float64).float().requires_grad_(True)
    v = values.clone().requires_grad_(True)
    grad = torch.randn(23, 19)
    spmm(indptr, indices, v, x).backward(grad)
    x2, v2 = x.detach().clone().requires_grad_(True), values.clone().requires_grad_(True)
    reference.spmm(indptr, indices, v2, x2).backward(grad)
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(v.grad, v2.grad, rtol=1e-5, atol=1e-5)


def test_spmm_duplicate_column_entries_add_up(on_device):
    indptr = torch.tensor([0, 3, 3])
    indices = torch.tensor([1, 1, 0])
    values = torch.tensor([1.0, 2.0, 4.0])
    x = torch.tensor([[1.0], [10.0]])
    assert spmm(indptr, indices, values, x).flatten().tolist() == [34.0, 0.0]


# --------------------------------------------- nnz-balanced partition and power-law graphs (CUDA SpMM)


def power_law_csr(rows=2500, cols=None, hub=50_000, index_dtype=torch.int64, seed=0):
    """A CSR with one row of `hub` neighbours (split across ~hub / 256 CUDA workers), a popular column (a long
    row of the transpose), many empty rows, the rest Zipf-like degrees; values scaled so sums stay O(1).
    Returns (indptr, indices, values) on the default device and the fp64 dense-free oracle inputs on the CPU."""
    cols = rows if cols is None else cols
    with torch.device("cpu"):
        g = torch.Generator().manual_seed(seed)
        deg = (torch.rand(rows, generator=g) ** -1.5).long().clamp(max=400) - 1  # ~half the rows empty
        deg = deg.clamp(min=0)
        deg[3] = hub
        deg[rows - 1] = 0  # an empty last row
        indices = torch.randint(0, cols, (int(deg.sum()),), generator=g)
        indices[torch.rand(indices.numel(), generator=g) < 0.3] = 1  # column 1: a long row of the transpose
        indptr = torch.cat([torch.zeros(1, dtype=torch.long), deg.cumsum(0)])
        values = torch.rand(indices.numel(), generator=g) / (deg.repeat_interleave(deg).float().sqrt() + 1)
    to = torch.get_default_device()
    return indptr.to(to, index_dtype), indices.to(to, index_dtype), values.to(to)


def spmm_fp64(indptr, indices, values, dense):
    """The oracle: A @ dense in float64 on the CPU."""
    indptr, indices, values, dense = indptr.cpu().long(), indices.cpu().long(), values.cpu(), dense.cpu()
    with torch.device("cpu"):  # the test's default device may be a GPU
        rows = torch.repeat_interleave(torch.arange(indptr.numel() - 1), indptr[1:] - indptr[:-1])
        out = torch.zeros(indptr.numel() - 1, dense.shape[1], dtype=torch.float64)
        return out.index_add_(0, rows, values.double()[:, None] * dense.double()[indices])


def assert_close_to_oracle(got: torch.Tensor, want: torch.Tensor) -> None:
    """fp32 sums over the power-law graphs' hub row and column (tens of thousands of terms) round at the
    scale of the largest output, not of each element (cancellation), in any summation order: atol follows
    that scale."""
    want = want.detach().cpu().double()
    torch.testing.assert_close(got.detach().cpu().double(), want, rtol=1e-4, atol=2e-5 * float(want.abs().max()))


def check_partition(plan, indptr, nnz, k):
    """The merge-path plan's invariants: owned rows tile [0, rows) in order; every edge is summed exactly
    once (by its row's owner or in one carry of that row); every carry written is read by exactly one owner,
    which reads the carries of a contiguous run of earlier workers ending just before it; no worker sums
    more than 2K items (its <= K merge-path items plus at most K edges of a short leading row)."""
    ptr = indptr.cpu().long().tolist()
    rows = len(ptr) - 1
    workers = -(-(rows + nnz) // k)
    assert tuple(plan.shape) == (workers, 6) and plan.dtype == torch.int64
    row0, row1, lead, chain, cb, ce = (c.tolist() for c in plan.cpu().unbind(1))
    if workers == 0:
        return
    assert row0[0] == 0 and row1[-1] == rows
    assert all(row1[w] == row0[w + 1] for w in range(workers - 1))
    assert all(a <= b for a, b in zip(row0, row1, strict=True))
    covered = torch.zeros(nnz, dtype=torch.long)
    reads = [0] * workers
    for w in range(workers):
        work = 0
        for r in range(row0[w], row1[w]):
            b, e = (lead[w] if r == row0[w] else ptr[r]), ptr[r + 1]
            assert ptr[r] <= b <= e
            covered[b:e] += 1
            work += e - b + 1
            if r == row0[w] and chain[w] < w:  # a split row: its first part is in the carries of [chain, w)
                assert e - ptr[r] > k
                for c in range(chain[w], w):
                    assert row1[c] == r and ptr[r] <= cb[c] < ce[c] <= ptr[r + 1]
                    reads[c] += 1
            else:
                assert b == ptr[r] and (r != row0[w] or chain[w] == w)
        if cb[w] < ce[w]:
            assert row1[w] < rows and ptr[row1[w]] <= cb[w] and ce[w] <= ptr[row1[w] + 1]
            covered[cb[w]:ce[w]] += 1
            work += ce[w] - cb[w]
        assert work <= 2 * k, (w, work)
    assert bool((covered == 1).all())
    assert reads == [1 if cb[w] < ce[w] else 0 for w in range(workers)]


def spmm_from_plan(plan, indptr, indices, values, x):
    """The two CUDA kernels' arithmetic replayed from a plan (fp64): carries of the split rows' parts first,
    then each owner's rows, a split row0 adding the carries of workers [chain_begin, w) in order."""
    ptr, x = indptr.cpu().long().tolist(), x.double()

    def part(b, e):
        return (values[b:e].double()[:, None] * x[indices[b:e].long()]).sum(0)

    plan = plan.cpu().tolist()
    carry = [part(cb, ce) if cb < ce else None for _, _, _, _, cb, ce in plan]
    out = torch.full((len(ptr) - 1, x.shape[1]), float("nan"), dtype=torch.float64)
    for w, (r0, r1, lead, chain, _, _) in enumerate(plan):
        for r in range(r0, r1):
            acc = part(lead if r == r0 else ptr[r], ptr[r + 1])
            for c in range(chain, w) if r == r0 else ():
                acc = acc + carry[c]
            out[r] = acc
    return out


@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("k", [1, 2, 7, 64, 256])
def test_graph_partition_covers_every_edge_once_and_matches_its_mirror(index_dtype, k, device):
    """fastrec::_graph_partition runs the partition of the CUDA SpMM (graph::plan_worker, csrc/common/graph.h)
    on the device given: its plan equals the plain-Python mirror and keeps the invariants the kernels rely on."""
    graphs = [power_law_csr(300, hub=3_000, index_dtype=index_dtype, seed=1),
              (torch.tensor([0, 0, 0]), torch.empty(0, dtype=torch.long), None),  # only empty rows
              (torch.tensor([0]), torch.empty(0, dtype=torch.long), None),  # no rows
              (torch.tensor([0, 5, 5, 6, 40, 40]), torch.zeros(40, dtype=torch.long), None)]
    for indptr, indices, _ in graphs:
        indptr = indptr.to(device, index_dtype)
        plan = torch.ops.fastrec._graph_partition(indptr, indices.numel(), k)
        assert torch.equal(plan.cpu(), reference.graph_partition(indptr.cpu(), indices.numel(), k))
        check_partition(plan, indptr, indices.numel(), k)
    indptr, indices, values = (t.cpu() for t in graphs[0])
    x = torch.randn(300, 3, device="cpu")
    got = spmm_from_plan(torch.ops.fastrec._graph_partition(indptr.to(device), indices.numel(), k), indptr, indices,
                         values, x)
    torch.testing.assert_close(got, spmm_fp64(indptr, indices, values, x), rtol=1e-9, atol=1e-9)


def test_graph_partition_stays_in_bounds_on_a_malformed_indptr(device):
    """A non-monotone, out-of-range indptr (no host check under validate=False) still gives coordinates inside
    [0, rows] x [0, nnz], so the kernels cannot read outside indices/values (they assert on it)."""
    indptr = torch.tensor([0, 9, 2, -4, 50, 3, 7], device=device)
    for k in [1, 3, 8]:
        plan = torch.ops.fastrec._graph_partition(indptr, 7, k)
        assert torch.equal(plan.cpu(), reference.graph_partition(indptr.cpu(), 7, k))
        rows_ok = (plan[:, :2] >= 0) & (plan[:, :2] <= 6)
        edges_ok = (plan[:, [2, 4, 5]] >= 0) & (plan[:, [2, 4, 5]] <= 7)
        assert bool(rows_ok.all()) and bool(edges_ok.all())


@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("d", [1, 3, 4, 64, 130])
def test_spmm_power_law_hub_row_forward_backward(index_dtype, d, on_device):
    """A 50,000-neighbour row (split across ~200 CUDA workers), empty rows, a popular column (a long row of
    the transpose, used by the backward): values and both gradients against fp64."""
    indptr, indices, values = power_law_csr(index_dtype=index_dtype)
    x = torch.randn(2500, d, requires_grad=True)
    v = values.clone().requires_grad_(True)
    out = spmm(indptr, indices, v, x)
    assert_close_to_oracle(out, spmm_fp64(indptr, indices, values, x.detach()))
    grad = torch.randn(2500, d)
    out.backward(grad)
    rows = torch.repeat_interleave(torch.arange(2500), (indptr[1:] - indptr[:-1]).long().cpu())
    t_oracle = torch.zeros(2500, d, dtype=torch.float64).index_add_(
        0, indices.long().cpu(), values.double().cpu()[:, None] * grad.double().cpu()[rows])
    assert_close_to_oracle(x.grad, t_oracle)
    g_values = (grad.double().cpu()[rows] * x.detach().double().cpu()[indices.long().cpu()]).sum(1)
    assert_close_to_oracle(v.grad, g_values)


@pytest.mark.cuda
@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("d", [3, 64])
def test_cuda_kernel_variants_change_no_bit(index_dtype, d, cuda_device, monkeypatch):
    """The evict-first loads and stores of the edge stream and the running sum (FASTREC_SPMM_STREAM_HINTS,
    on by default) are cache hints only, and the owner kernel capped at 80 registers
    (FASTREC_SPMM_OWNER_MIN_BLOCKS=3) is the same code: forward and backward equal the default kernels' bit
    for bit, and are close to fp64."""
    indptr, indices, values = (t.to(cuda_device) for t in power_law_csr(index_dtype=index_dtype, seed=3))
    emb = torch.randn(2500, d, device=cuda_device)
    grad = torch.randn(2500, d, device=cuda_device)

    def run(hints: str, min_blocks: str):
        monkeypatch.setenv("FASTREC_SPMM_STREAM_HINTS", hints)
        monkeypatch.setenv("FASTREC_SPMM_OWNER_MIN_BLOCKS", min_blocks)
        e = emb.clone().requires_grad_(True)
        out = lightgcn_propagate(_Csr(indptr, indices, values), e, 3)
        out.backward(grad)
        return out.detach(), e.grad, spmm(indptr, indices, values, emb)

    default = run("1", "0")
    for variant in (run("0", "0"), run("1", "3")):
        assert all(torch.equal(a, b) for a, b in zip(default, variant, strict=True))
    assert_close_to_oracle(default[2], spmm_fp64(indptr, indices, values, emb))


@pytest.mark.parametrize("d", [3, 64])
def test_spmm_misaligned_dense_view(d, on_device):
    """dense as a view with a 4-byte storage offset: the CUDA kernel takes its scalar path (no 16-byte load
    of a misaligned row) and gives the same sums."""
    indptr, indices, values = power_law_csr(index_dtype=torch.int32, seed=2)
    storage = torch.randn(2500 * d + 1)
    x = storage[1:].view(2500, d)
    assert x.is_contiguous() and x.storage_offset() == 1
    out = spmm(indptr, indices, values, x)
    assert_close_to_oracle(out, spmm_fp64(indptr, indices, values, x))
    emb = torch.randn(2500 * d + 1)[1:].view(2500, d)
    got = lightgcn_propagate(_Csr(indptr, indices, values), emb, 2)
    ip, ix, vals = indptr.cpu().long(), indices.cpu().long(), values.cpu().double()
    assert_close_to_oracle(got, reference.lightgcn_propagate(ip, ix, vals, ip, ix, vals, emb.cpu().double(),
                                                             [1 / 3] * 3))


@pytest.mark.parametrize("d", [4, 64, 130])
def test_propagate_power_law_forward_backward_and_bitwise_deterministic(d, on_device):
    """lightgcn_propagate on a non-symmetric power-law graph (hub row, hub column, empty rows): forward and
    backward against the reference, and two runs equal bit for bit (no atomics: fixed summation order)."""
    indptr, indices, values = power_law_csr(index_dtype=torch.int32, seed=3)
    graph = _Csr(indptr, indices, values)
    emb = torch.randn(2500, d, requires_grad=True)
    grad = torch.randn(2500, d)
    weights = [0.4, 0.3, 0.2, 0.1]

    def run():
        e = emb.detach().clone().requires_grad_(True)
        out = lightgcn_propagate(graph, e, layer_weights=weights, validate=False)
        out.backward(grad)
        return out.detach(), e.grad

    out, g = run()
    ip, ix, vals = indptr.cpu().long(), indices.cpu().long(), values.cpu().double()
    e2 = emb.detach().cpu().double().requires_grad_(True)
    with torch.device("cpu"):  # the oracle on the CPU, whatever the test's default device
        ref = reference.lightgcn_propagate(ip, ix, vals, ip, ix, vals, e2, weights)
        ref.backward(grad.cpu().double())
    assert_close_to_oracle(out, ref)
    assert_close_to_oracle(g, e2.grad)
    out2, g2 = run()
    assert torch.equal(out, out2) and torch.equal(g, g2)
    assert torch.equal(spmm(indptr, indices, values, emb.detach()), spmm(indptr, indices, values, emb.detach()))


# ---------------------------------------------------------------------------- lightgcn_propagate


@pytest.mark.parametrize("layers", [0, 1, 2, 3, 4])
@pytest.mark.parametrize("d", [1, 16, 64, 70])
def test_propagate_interaction_graph_matches_dense(layers, d, on_device):
    g = small_graph()
    emb = torch.randn(g.num_nodes, d)
    out = lightgcn_propagate(g, emb, num_layers=layers)
    a = g.to_dense().double()
    x, expect = emb.double(), emb.double()
    for _ in range(layers):
        x = a @ x
        expect = expect + x
    torch.testing.assert_close(out, (expect / (layers + 1)).float(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
def test_propagate_sparse_csr_tensor_dtypes_and_weights(dtype, index_dtype, on_device):
    indptr, indices, values, dense_a = random_csr(37, 37, density=0.2, dtype=index_dtype)
    csr = torch.sparse_csr_tensor(indptr, indices, values, size=(37, 37))
    emb = torch.randn(37, 24).to(dtype)
    weights = [0.5, 0.3, -0.2]
    out = lightgcn_propagate(csr, emb, layer_weights=weights)
    assert out.dtype == dtype
    ref = reference.lightgcn_propagate(indptr, indices, values, indptr, indices, values, emb, weights)
    torch.testing.assert_close(out.float(), ref.float(), rtol=TOL[dtype], atol=TOL[dtype] * 4)


def test_propagate_gradient_symmetric_graph(on_device):
    g = small_graph()
    emb = torch.randn(g.num_nodes, 20, requires_grad=True)
    grad = torch.randn(g.num_nodes, 20)
    lightgcn_propagate(g, emb, 3).backward(grad)
    emb2 = emb.detach().clone().requires_grad_(True)
    w = [0.25] * 4
    reference.lightgcn_propagate(g.indptr, g.indices, g.values, g.indptr, g.indices, g.values, emb2, w).backward(grad)
    torch.testing.assert_close(emb.grad, emb2.grad, rtol=1e-5, atol=1e-5)


def test_propagate_gradient_non_symmetric_graph_uses_transpose(on_device):
    indptr, indices, values, dense_a = random_csr(29, 29, density=0.25, seed=3)
    assert not torch.equal(dense_a, dense_a.t())
    csr = torch.sparse_csr_tensor(indptr, indices, values, size=(29, 29))
    emb = torch.randn(29, 8, requires_grad=True)
    grad = torch.randn(29, 8)
    lightgcn_propagate(csr, emb, 2).backward(grad)
    emb2 = emb.detach().clone().requires_grad_(True)
    a = dense_a
    ((emb2 + a @ emb2 + a @ (a @ emb2)) / 3).backward(grad)
    torch.testing.assert_close(emb.grad, emb2.grad, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------ topk_scores


def assert_topk(queries, items, k, exclude, scores, ids):
    """Valid ranking: excluded items never beat unexcluded ones, scores are the true scores, and away from
    near ties the ids equal the reference's."""
    ex_ptr, ex_idx = exclude if exclude is not None else (None, None)
    ref_s, ref_i = reference.topk_scores(queries, items, k, ex_ptr, ex_idx)
    torch.testing.assert_close(scores, ref_s, rtol=1e-4, atol=1e-4)
    true = (queries.float() @ items.float().t()).gather(1, ids)
    finite = torch.isfinite(scores)
    torch.testing.assert_close(scores[finite], true[finite], rtol=1e-4, atol=1e-4)
    assert ids.shape == (queries.shape[0], k) and ids.dtype == torch.int64
    for row in ids:
        assert row.unique().numel() == k  # no duplicates
    if k:
        gaps = (ref_s[:, :-1] - ref_s[:, 1:]).abs()
        clear = torch.ones_like(ref_i, dtype=torch.bool)
        clear[:, :-1] &= gaps > 1e-3
        clear[:, 1:] &= gaps > 1e-3
        assert torch.equal(ids[clear], ref_i[clear])


@pytest.mark.parametrize("users,num_items,d,k", [(1, 1, 1, 1), (5, 33, 7, 4), (70, 257, 64, 20),
                                                 (300, 1000, 32, 50), (9, 64, 100, 64)])
def test_topk_matches_reference(users, num_items, d, k, on_device):
    q, it = torch.randn(users, d), torch.randn(num_items, d)
    ex = None
    if num_items > 3:
        rows = torch.randint(0, users, (users * 3,))
        cols = torch.randint(0, num_items, (users * 3,))
        keys = (rows * num_items + cols)[torch.randperm(users * 3)]
        counts = torch.bincount(keys // num_items, minlength=users)
        order = torch.argsort(keys // num_items, stable=True)  # grouped by row, unsorted within, duplicates
        indptr = torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)])
        ex = (indptr, (keys % num_items)[order])
    s, i = topk_scores(q, it, k, ex)
    assert_topk(q, it, k, ex, s, i)
    if ex is not None:  # nothing excluded is ranked while unexcluded items remain
        for u in range(users):
            banned = set(ex[1][ex[0][u]:ex[0][u + 1]].tolist())
            if num_items - len(banned) >= k:
                assert not banned & set(i[u].tolist())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_topk_dtypes(dtype, on_device):
    q, it = torch.randn(40, 24).to(dtype), torch.randn(300, 24).to(dtype)
    s, i = topk_scores(q, it, 10)
    assert s.dtype == torch.float32
    assert_topk(q, it, 10, None, s, i)


def test_topk_exact_ties_go_to_lowest_id(on_device):
    it = torch.nn.functional.normalize(torch.randn(100, 8), dim=1)  # unit rows: q . it peaks at it = q only
    it[[70, 90]] = it[5].clone()  # three identical items
    q = it[[5]].clone() * 10
    _, ids = topk_scores(q, it, 3)
    assert ids[0].tolist() == [5, 70, 90]
    _, ids = topk_scores(torch.zeros(3, 8), it, 7)  # all scores 0: ids in order
    assert ids.tolist() == [list(range(7))] * 3


def test_topk_excluded_fill_when_too_few_items_remain(on_device):
    it = torch.randn(10, 4)
    q = torch.randn(2, 4)
    ex = (torch.tensor([0, 8, 8]), torch.tensor([9, 0, 1, 2, 3, 4, 5, 6]))
    s, i = topk_scores(q, it, 4, ex)
    assert set(i[0, :2].tolist()) == {7, 8}
    assert torch.isinf(s[0, 2:]).all() and i[0, 2:].tolist() == [0, 1]  # -inf ones by lowest id
    assert torch.isfinite(s[1]).all()


def test_topk_gradients(on_device):
    q = torch.randn(6, 5, requires_grad=True)
    it = torch.randn(30, 5, requires_grad=True)
    ex = (torch.tensor([0, 2, 2, 2, 3, 3, 3]), torch.tensor([1, 2, 7]))
    s, i = topk_scores(q, it, 4, ex)
    g = torch.randn_like(s)
    (s * g).sum().backward()
    q2, it2 = q.detach().clone().requires_grad_(True), it.detach().clone().requires_grad_(True)
    ((q2 @ it2.t()).gather(1, i) * g).sum().backward()
    torch.testing.assert_close(q.grad, q2.grad)
    torch.testing.assert_close(it.grad, it2.grad)


def test_topk_sparse_csr_exclude_and_int32():
    q, it = torch.randn(12, 6), torch.randn(50, 6)
    mask = torch.rand(12, 50) < 0.3
    ex_csr = mask.float().to_sparse_csr()
    s, i = topk_scores(q, it, 5, ex_csr)
    ex = (ex_csr.crow_indices().int(), ex_csr.col_indices().int())
    s2, i2 = topk_scores(q, it, 5, ex)
    assert torch.equal(i, i2) and torch.equal(s, s2)
    assert not mask.gather(1, i).any()


# ------------------------------------------------------------------------------------- full ranking


def test_full_ranking_matches_brute_force_metrics():
    g = small_graph(80, 50)
    uv, iv = torch.randn(80, 16), torch.randn(50, 16)
    targets = torch.randint(0, 50, (30,))
    users = torch.arange(0, 60, 2)
    out = full_ranking(uv, iv, (g.seen_indptr, g.seen_indices), targets, ks=(5, 10), users=users)
    scores = uv[users] @ iv.t()
    seen = torch.zeros(80, 50, dtype=torch.bool)
    rows = torch.repeat_interleave(torch.arange(80), g.seen_indptr[1:] - g.seen_indptr[:-1])
    seen[rows, g.seen_indices] = True
    scores[seen[users]] = float("-inf")
    rank = (scores > scores.gather(1, targets[:, None])).sum(1)  # 0-based rank of the target
    for k in (5, 10):
        hit = rank < k
        assert out[f"HR@{k}"] == pytest.approx(hit.double().mean().item())
        ndcg = torch.where(hit, 1.0 / torch.log2(rank.double() + 2), torch.zeros(30, dtype=torch.float64))
        assert out[f"NDCG@{k}"] == pytest.approx(ndcg.mean().item())


def test_select_rows():
    indptr, indices = torch.tensor([0, 2, 2, 5]), torch.tensor([1, 3, 0, 4, 2])
    p, i = select_rows(indptr, indices, torch.tensor([2, 0, 1, 2]))
    assert p.tolist() == [0, 3, 5, 5, 8] and i.tolist() == [0, 4, 2, 1, 3, 0, 4, 2]


# ----------------------------------------------------------------------------- opcheck / compile


def test_opcheck(on_device):
    indptr, indices, values, _ = random_csr(9, 9, density=0.4)
    x = torch.randn(9, 5, requires_grad=True)
    torch.library.opcheck(torch.ops.fastrec.spmm, (indptr, indices, values, x))
    torch.library.opcheck(torch.ops.fastrec.lightgcn_propagate,
                          (indptr, indices, values, indptr, indices, values, x, [0.5, 0.3, 0.2]))
    q, it = torch.randn(4, 5, requires_grad=True), torch.randn(11, 5)
    ex_p, ex_i = torch.tensor([0, 1, 1, 3, 3]), torch.tensor([2, 0, 10])
    torch.library.opcheck(torch.ops.fastrec.topk_scores, (q, it, 3, ex_p, ex_i))
    torch.library.opcheck(torch.ops.fastrec.topk_scores, (q, it, 3, None, None))
    torch.library.opcheck(torch.ops.fastrec._graph_partition, (indptr, indices.numel(), 4))


def test_torch_compile_fullgraph(on_device):
    g = small_graph(20, 15)
    emb = torch.randn(g.num_nodes, 8)
    ip, ix, v = g.indptr, g.indices, g.values

    @torch.compile(fullgraph=True, backend="aot_eager")
    def f(e, q, it):
        out = torch.ops.fastrec.lightgcn_propagate(ip, ix, v, ip, ix, v, e, [0.25, 0.25, 0.25, 0.25])
        y = torch.ops.fastrec.spmm(ip, ix, v, out)
        s, i = torch.ops.fastrec.topk_scores(q, it, 3, None, None)
        return y, s, i

    q, it = torch.randn(5, 8), torch.randn(9, 8)
    y, s, i = f(emb, q, it)
    torch.testing.assert_close(y, spmm(ip, ix, v, lightgcn_propagate(g, emb, 3)))
    torch.testing.assert_close(s, topk_scores(q, it, 3)[0])


_Graph = namedtuple("_Graph", "indptr indices values is_symmetric")


def _Csr(indptr, indices, values):
    """A non-symmetric CSR as plain tensors (what lightgcn_propagate reads of a graph object)."""
    return _Graph(indptr, indices, values, False)


def test_csr_transpose_matches_dense_and_uses_no_syncing_op(on_device, no_sync_ops):
    from fastrec.ops.graph import csr_transpose

    indptr, indices, values, dense_a = random_csr(23, 17, density=0.3, seed=5)
    with no_sync_ops():
        t_indptr, t_indices, t_values = csr_transpose(indptr, indices, values, 17)
    assert t_indptr.dtype == indptr.dtype and t_indices.dtype == indices.dtype
    with torch.device("cpu"):  # else the constructor takes the test's default device
        back = torch.sparse_csr_tensor(t_indptr.cpu(), t_indices.cpu(), t_values.cpu(), size=(17, 23)).to_dense()
    assert torch.equal(back, dense_a.cpu().t())


def test_propagate_validate_false_forward_backward_use_no_syncing_op(on_device, no_sync_ops):
    indptr, indices, values, dense_a = random_csr(29, 29, density=0.25, seed=3)
    emb = torch.randn(29, 8, requires_grad=True)
    grad = torch.randn(29, 8)
    with no_sync_ops():
        out = lightgcn_propagate(_Csr(indptr, indices, values), emb, 2, validate=False)
        out.backward(grad)
    emb2 = emb.detach().clone().requires_grad_(True)
    ((emb2 + dense_a @ emb2 + dense_a @ (dense_a @ emb2)) / 3).backward(grad)
    torch.testing.assert_close(out, (emb2 + dense_a @ emb2 + dense_a @ (dense_a @ emb2)) / 3, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(emb.grad, emb2.grad, rtol=1e-5, atol=1e-5)


def test_propagate_compile_fullgraph_forward_backward_validate_false(on_device):
    indptr, indices, values, dense_a = random_csr(31, 31, density=0.2, seed=4)
    indptr, indices, values = indptr.clone(), indices.clone(), values.clone()  # not views of the CSR tensor

    @torch.compile(fullgraph=True, backend="aot_eager")
    def loss(e, ip, ix, v):  # the transpose for the backward is built inside the graph (no data-dependent shape)
        return lightgcn_propagate(_Csr(ip, ix, v), e, 3, validate=False).pow(2).sum()

    emb = torch.randn(31, 6, requires_grad=True)
    (got,) = torch.autograd.grad(loss(emb, indptr, indices, values), emb)
    emb2 = emb.detach().clone().requires_grad_(True)
    x, want = emb2, emb2 / 4
    for _ in range(3):
        x = dense_a @ x
        want = want + x / 4
    (ref,) = torch.autograd.grad(want.pow(2).sum(), emb2)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------------------------- property


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.integers(0, 40), d=st.integers(1, 40), density=st.floats(0.0, 1.0),
       index_dtype=st.sampled_from([torch.int32, torch.int64]),
       dtype=st.sampled_from([torch.float32, torch.bfloat16]), seed=st.integers(0, 1000))
def test_property_propagate_and_spmm(rows, d, density, index_dtype, dtype, seed, on_device):
    indptr, indices, values, _ = random_csr(rows, rows, density=density, dtype=index_dtype, seed=seed)
    emb = torch.randn(rows, d, generator=torch.Generator().manual_seed(seed), device="cpu").to(on_device, dtype)
    w = [0.4, 0.3, 0.2, 0.1]
    out = lightgcn_propagate(torch.sparse_csr_tensor(indptr, indices, values, size=(rows, rows)), emb,
                             layer_weights=w)
    ref = reference.lightgcn_propagate(indptr, indices, values, indptr, indices, values, emb, w)
    tol = 1e-4 if dtype == torch.float32 else 3e-2
    scale = 1 + ref.float().abs().amax().item() if rows else 1
    torch.testing.assert_close(out.float(), ref.float(), rtol=tol, atol=tol * scale)


@settings(max_examples=25, deadline=None)
@given(users=st.integers(0, 20), num_items=st.integers(1, 80), d=st.integers(1, 20), data=st.data(),
       duplicates=st.booleans(), seed=st.integers(0, 1000))
def test_property_topk(users, num_items, d, data, duplicates, seed):
    g = torch.Generator().manual_seed(seed)
    q, it = torch.randn(users, d, generator=g), torch.randn(num_items, d, generator=g)
    if duplicates:  # exact ties
        it = it[torch.randint(0, num_items, (num_items,), generator=g)]
        q = q.round()
        it = it.round()
    k = data.draw(st.integers(0, num_items))
    counts = torch.randint(0, num_items + 1, (users,), generator=g)
    indptr = torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)])
    indices = torch.randint(0, num_items, (int(indptr[-1]),), generator=g)
    s, i = topk_scores(q, it, k, (indptr, indices))
    ref_s, ref_i = reference.topk_scores(q, it, k, indptr, indices)
    torch.testing.assert_close(s, ref_s, rtol=1e-4, atol=1e-4)
    if duplicates:  # integer-valued inputs: exact scores, so ids must equal the reference's exactly
        assert torch.equal(i, ref_i)


# ----------------------------------------------------------------------------------------- bad input


def _csr():
    return torch.tensor([0, 1, 2]), torch.tensor([1, 0]), torch.tensor([1.0, 1.0])


BAD = [
    (lambda: spmm(*_csr()[:2], _csr()[2], torch.randn(2)), ValueError, "dense"),
    (lambda: spmm(torch.tensor([0, 1, 2]), torch.tensor([1, 5]), torch.ones(2), torch.randn(2, 3)),
     IndexError, "indices"),
    (lambda: spmm(torch.tensor([0, 1, 2]), torch.tensor([1, -1]), torch.ones(2), torch.randn(2, 3)),
     IndexError, "indices"),
    (lambda: spmm(torch.tensor([0, 2, 1]), torch.tensor([1, 0]), torch.ones(2), torch.randn(2, 3)),
     ValueError, "indptr"),
    (lambda: spmm(torch.tensor([0, 1, 3]), torch.tensor([1, 0]), torch.ones(2), torch.randn(2, 3)),
     ValueError, "indptr"),
    (lambda: spmm(torch.tensor([1, 1, 2]), torch.tensor([1, 0]), torch.ones(2), torch.randn(2, 3)),
     ValueError, "indptr"),
    (lambda: spmm(torch.tensor([0, 1, 2]), torch.tensor([1, 0]), torch.ones(3), torch.randn(2, 3)),
     ValueError, "values"),
    (lambda: spmm(torch.tensor([0, 1, 2]).int(), torch.tensor([1, 0]), torch.ones(2), torch.randn(2, 3)),
     ValueError, "indptr"),
    (lambda: spmm(torch.tensor([0.0, 1, 2]), torch.tensor([1, 0]), torch.ones(2), torch.randn(2, 3)),
     ValueError, "indptr"),
    (lambda: spmm(*_csr(), torch.randn(2, 3).int()), ValueError, "dense"),
    (lambda: lightgcn_propagate(small_graph(), torch.randn(5, 4)), ValueError, "emb"),
    (lambda: lightgcn_propagate("graph", torch.randn(5, 4)), TypeError, "graph"),
    (lambda: lightgcn_propagate(torch.randn(3, 3), torch.randn(3, 4)), TypeError, "graph"),
    (lambda: lightgcn_propagate(small_graph(), torch.randn(100, 4), num_layers=-1), ValueError, "num_layers"),
    (lambda: lightgcn_propagate(small_graph(), torch.randn(100, 4), layer_weights=[]), ValueError, "layer_weights"),
    (lambda: lightgcn_propagate(torch.sparse_csr_tensor(torch.tensor([0, 1, 2]), torch.tensor([1, 7]),
                                                        torch.ones(2), size=(2, 8)), torch.randn(2, 4)),
     ValueError, "square"),
    (lambda: topk_scores(torch.randn(3, 4), torch.randn(5, 3), 2), ValueError, "d="),
    (lambda: topk_scores(torch.randn(3, 4), torch.randn(5, 4), 6), ValueError, "k must"),
    (lambda: topk_scores(torch.randn(3, 4), torch.randn(5, 4), -1), ValueError, "k must"),
    (lambda: topk_scores(torch.randn(3, 4), torch.randn(5, 4).double(), 2), ValueError, "items"),
    (lambda: topk_scores(torch.randn(3, 4), torch.randn(5, 4).half(), 2), ValueError, "dtype"),
    (lambda: topk_scores(torch.randn(4), torch.randn(5, 4), 2), ValueError, "queries"),
    (lambda: topk_scores(torch.randn(3, 4), torch.randn(5, 4), 2, (torch.tensor([0, 1]), torch.tensor([0]))),
     ValueError, "exclude_indptr"),
    (lambda: topk_scores(torch.randn(2, 4), torch.randn(5, 4), 2, (torch.tensor([0, 1, 2]), torch.tensor([0, 5]))),
     IndexError, "exclude_indices"),
    (lambda: topk_scores(torch.randn(2, 4), torch.randn(5, 4), 2, (torch.tensor([0, 2, 1]), torch.tensor([0, 1]))),
     ValueError, "exclude_indptr"),
    (lambda: topk_scores(torch.full((2, 4), float("nan")), torch.randn(5, 4), 2), ValueError, "queries"),
    (lambda: topk_scores(torch.randn(2, 4), torch.randn(5, 4), 2, "seen"), TypeError, "exclude"),
]


@pytest.mark.parametrize("call,exc,match", BAD)
def test_bad_input_names_the_argument(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_bad_input_reference_path_checks_too(monkeypatch):
    # where the C++ kernel is not used (CUDA / no extension), the host-side checks must catch the same
    import fastrec.ops.graph as graph_ops

    monkeypatch.setattr(graph_ops, "cpu_is_compiled", lambda name: False)
    with pytest.raises(IndexError, match="indices"):
        spmm(torch.tensor([0, 1, 2]), torch.tensor([1, 5]), torch.ones(2), torch.randn(2, 3))
    with pytest.raises(ValueError, match="non-decreasing"):
        spmm(torch.tensor([0, 2, 1, 2]), torch.tensor([1, 0]), torch.ones(2), torch.randn(2, 3))


def test_empty_inputs():
    g = InteractionGraph(torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long), 0, 0)
    assert lightgcn_propagate(g, torch.randn(0, 8)).shape == (0, 8)
    g = InteractionGraph(torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long), 3, 2)
    emb = torch.randn(5, 8)
    torch.testing.assert_close(lightgcn_propagate(g, emb, 3), emb / 4)  # no edges: only layer 0 remains
    assert spmm(torch.zeros(1, dtype=torch.long), torch.empty(0, dtype=torch.long), torch.empty(0),
                torch.randn(4, 3)).shape == (0, 3)
    s, i = topk_scores(torch.randn(0, 4), torch.randn(5, 4), 3)
    assert s.shape == (0, 3) and i.shape == (0, 3)
    s, i = topk_scores(torch.randn(2, 4), torch.randn(5, 4), 0)
    assert s.shape == (2, 0)
