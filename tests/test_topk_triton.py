"""The Triton top-K kernel (kernels/topk.py), called directly: under the interpreter on CPU tensors, and on CUDA
tensors where a GPU exists, against reference.topk_scores: exclusions, ties, k = 0 / k = I, odd shapes,
half dtypes, several item chunks, and bad exclusion CSR that must read nothing out of bounds."""

import os

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fastrec import reference

triton = pytest.importorskip("triton")
from fastrec.kernels import topk as tk  # noqa: E402

from fastrec.ops.graph import _triton_topk  # noqa: E402


@pytest.fixture
def dev(triton_device) -> torch.device:  # tests/conftest.py: CPU under the interpreter, or CUDA
    return triton_device


def csr(counts, num_items, g, lo=0, hi=None):
    """A CSR exclusion list with the given per-query counts: random ids (unsorted, duplicates possible)."""
    indptr = torch.cat([torch.zeros(1, dtype=torch.long), torch.as_tensor(counts).cumsum(0)])
    indices = torch.randint(lo, num_items if hi is None else hi, (int(indptr[-1]),), generator=g)
    return indptr, indices


def check(q, it, k, indptr=None, indices=None, exact=False):
    """Kernel == reference: scores close, ids equal wherever the reference's neighbours are not near-tied
    (everywhere when `exact`: integer-valued inputs make every score exact)."""
    s, i = tk.topk_scores(q, it, k, indptr, indices)
    rs, ri = reference.topk_scores(q.cpu(), it.cpu(), k, None if indptr is None else indptr.cpu(),
                                   None if indices is None else indices.cpu())
    s, i = s.cpu(), i.cpu()
    assert s.shape == (q.shape[0], k) and s.dtype == torch.float32 and i.dtype == torch.int64
    torch.testing.assert_close(s, rs, rtol=1e-5, atol=1e-5)
    if exact:
        assert torch.equal(i, ri)
        assert torch.equal(s, rs)
    elif k:
        gaps = (rs[:, :-1] - rs[:, 1:]).abs()
        clear = torch.ones_like(ri, dtype=torch.bool)
        clear[:, :-1] &= gaps > 1e-4
        clear[:, 1:] &= gaps > 1e-4
        assert torch.equal(i[clear], ri[clear])
    return s, i


@pytest.mark.parametrize("users,num_items,d,k", [(1, 1, 1, 1), (17, 70, 5, 4), (33, 200, 13, 10),
                                                 (5, 40, 3, 40), (20, 90, 70, 33)])
def test_matches_reference_with_exclusions(users, num_items, d, k, dev):
    g = torch.Generator().manual_seed(users + num_items)
    q, it = torch.randn(users, d, generator=g), torch.randn(num_items, d, generator=g)
    indptr, indices = csr(torch.randint(0, 6, (users,), generator=g), num_items, g)
    check(q.to(dev), it.to(dev), k, indptr.to(dev), indices.to(dev))
    check(q.to(dev), it.to(dev), k)  # and without exclusions


def test_exact_ties_go_to_the_lower_id_across_chunks(dev):
    it = torch.randn(100, 8).round()
    it[[70, 90]] = it[5].clone()  # three identical items, in different item chunks
    q = torch.cat([it[[5]] * 10, torch.zeros(2, 8), torch.randn(4, 8).round()])
    _, ids = check(q.to(dev), it.to(dev), 7, exact=True)
    assert ids[0, :3].tolist() == [5, 70, 90]
    assert ids[1].tolist() == list(range(7))  # all scores 0: ids in order


def test_excluded_items_fill_by_lowest_id_when_too_few_remain(dev):
    it, q = torch.randn(10, 4).round(), torch.randn(3, 4).round()
    indptr = torch.tensor([0, 8, 8, 18])
    indices = torch.tensor([9, 0, 1, 2, 3, 4, 5, 6] + list(range(10))[::-1])  # query 2 excludes everything
    s, i = check(q.to(dev), it.to(dev), 4, indptr.to(dev), indices.to(dev), exact=True)
    assert torch.isinf(s[0, 2:]).all() and i[0, 2:].tolist() == [0, 1]
    assert torch.isinf(s[2]).all() and i[2].tolist() == [0, 1, 2, 3]


def test_a_chunk_with_every_item_excluded_still_fills_its_top_k(dev):
    """Every query excludes ids 0..63 (whole tiles and item chunks, on the GPU and under the interpreter) and
    k exceeds what remains: the excluded ids 0..3 fill the last slots. A tile whose every score is -inf still
    reaches the empty slots (-inf, I), which a lower id beats."""
    g = torch.Generator().manual_seed(5)
    it, q = torch.randn(100, 4, generator=g).round(), torch.randn(2, 4, generator=g).round()
    indptr, indices = torch.tensor([0, 64, 128]), torch.arange(64).repeat(2)
    s, i = check(q.to(dev), it.to(dev), 40, indptr.to(dev), indices.to(dev), exact=True)
    assert torch.isinf(s[:, 36:]).all() and i[:, 36:].tolist() == [[0, 1, 2, 3]] * 2


def test_k_equals_item_count_and_duplicate_exclusions(dev):
    g = torch.Generator().manual_seed(3)
    q, it = torch.randn(9, 6, generator=g).round(), torch.randn(50, 6, generator=g).round()
    indptr = torch.tensor([0, 4, 4, 10, 10, 10, 12, 12, 12, 14])
    indices = torch.tensor([3, 3, 3, 49, 0, 0, 7, 7, 1, 2, 5, 5, 48, 48])
    check(q.to(dev), it.to(dev), 50, indptr.to(dev), indices.to(dev), exact=True)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_give_fp32_scores(dtype, dev):
    g = torch.Generator().manual_seed(1)
    q, it = torch.randn(19, 24, generator=g).to(dtype), torch.randn(150, 24, generator=g).to(dtype)
    indptr, indices = csr(torch.randint(0, 4, (19,), generator=g), 150, g)
    check(q.to(dev), it.to(dev), 12, indptr.to(dev), indices.to(dev))


def test_op_wrapper_falls_back_for_k_zero_and_large_k(dev):
    q, it = torch.randn(3, 4).round().to(dev), torch.randn(140, 4).round().to(dev)
    s, i = _triton_topk(q, it, 0, None, None)
    assert s.shape == (3, 0) and i.shape == (3, 0)
    assert not tk.supports(q, it, tk.MAX_K + 1) and tk.supports(q, it, tk.MAX_K)
    s, i = _triton_topk(q, it, 130, None, None)  # the reference, beyond MAX_K
    rs, ri = reference.topk_scores(q.cpu(), it.cpu(), 130)
    assert torch.equal(i.cpu(), ri) and torch.equal(s.cpu(), rs)
    s, i = _triton_topk(q[:0], it, 5, None, None)  # no queries
    assert s.shape == (0, 5) and i.shape == (0, 5) and i.dtype == torch.int64
    s, i = _triton_topk(q, it, 5, None, None)  # the kernel
    rs, ri = reference.topk_scores(q.cpu(), it.cpu(), 5)
    assert torch.equal(i.cpu(), ri)


def test_bad_exclusion_csr_reads_nothing_out_of_bounds(dev):
    """Without the host checks (torch.compile, CUDA graphs), ids outside [0, I) exclude nothing and a bad
    indptr is clamped to the index array; the result is still a valid ranking of real items."""
    q, it = torch.randn(4, 5).round(), torch.randn(30, 5).round()
    indptr = torch.tensor([0, 3, 3, 5, 6])
    indices = torch.tensor([-7, 2, 30, 1 << 40, 4, 29])  # two negative / too large ids
    keep = (indices >= 0) & (indices < 30)
    rows = torch.repeat_interleave(torch.arange(4), indptr[1:] - indptr[:-1])[keep]
    good_ptr = torch.cat([torch.zeros(1, dtype=torch.long), torch.bincount(rows, minlength=4).cumsum(0)])
    s, i = tk.topk_scores(q.to(dev), it.to(dev), 6, indptr.to(dev), indices.to(dev))
    rs, ri = reference.topk_scores(q, it, 6, good_ptr, indices[keep])
    assert torch.equal(i.cpu(), ri) and torch.equal(s.cpu(), rs)
    for bad_ptr in (torch.tensor([0, 3, 1, 9, 100]), torch.tensor([-5, 2, 2, 2, 2])):  # decreasing / outside
        s, i = tk.topk_scores(q.to(dev), it.to(dev), 6, bad_ptr.to(dev), indices.to(dev))
        assert ((i >= 0) & (i < 30)).all()
        assert all(row.unique().numel() == 6 for row in i.cpu())


def test_sorted_exclusions_sort_within_each_query():
    indptr, indices = torch.tensor([0, 3, 3, 6]), torch.tensor([5, 1, 5, 9, -2, 0])
    assert tk.sorted_exclusions(indptr, indices, 3, 8).tolist() == [1, 5, 5, -1, 0, 8]


def test_drop_excluded_empties_only_the_slots_its_query_excludes():
    """The threshold scheme drops excluded candidates after its scan: by (query, id) key, with the group's first
    query offsetting the rows; out-of-range exclusions and empty slots (id I) match nothing."""
    indptr, indices = torch.tensor([0, 2, 2, 5]), torch.tensor([4, 1, 3, 8, -1])  # query 2 also "excludes" 8, -1
    keys = tk.exclusion_keys(indptr, indices, 3, 8)
    scores = torch.tensor([[5.0, 4.0, 3.0], [2.0, 1.0, float("-inf")]])
    ids = torch.tensor([[1, 3, 8], [3, 4, 8]], dtype=torch.int32)  # rows are queries 1 and 2; id 8 = empty slot
    kept = tk.drop_excluded(scores, ids, keys, 1, 8)
    assert kept.tolist() == [2, 1]
    assert ids.tolist() == [[1, 3, 8], [8, 4, 8]]
    assert scores[1, 0] == float("-inf") and scores[0].tolist() == [5.0, 4.0, 3.0]


def test_merge_orders_by_score_then_id():
    s = torch.tensor([[1.0, 3.0, 1.0, float("-inf"), 3.0, float("-inf")]])
    i = torch.tensor([[9, 4, 2, 7, 1, 3]])
    ms, mi = tk.merge(s, i, 5)
    assert mi.tolist() == [[1, 4, 2, 9, 3]] and ms[0, :4].tolist() == [3.0, 3.0, 1.0, 1.0]


@settings(max_examples=15, deadline=None)
@given(users=st.integers(1, 20), num_items=st.integers(1, 70), d=st.integers(1, 20), data=st.data(),
       ties=st.booleans(), seed=st.integers(0, 1000))
def test_property_against_reference(users, num_items, d, data, ties, seed):
    if os.environ.get("TRITON_INTERPRET") != "1" and not torch.cuda.is_available():
        pytest.skip("needs the Triton interpreter or a GPU")
    dev = "cpu" if os.environ.get("TRITON_INTERPRET") == "1" else "cuda"
    g = torch.Generator().manual_seed(seed)
    q, it = torch.randn(users, d, generator=g), torch.randn(num_items, d, generator=g)
    if ties:  # integer-valued, duplicated rows: exact scores and many exact ties
        it = it[torch.randint(0, num_items, (num_items,), generator=g)].round()
        q = q.round()
    k = data.draw(st.integers(1, min(num_items, tk.MAX_K)))
    indptr, indices = csr(torch.randint(0, num_items + 1, (users,), generator=g), num_items, g)
    check(q.to(dev), it.to(dev), k, indptr.to(dev), indices.to(dev), exact=ties)


@pytest.mark.parametrize("k", [20, 100])
def test_gpu_block_sizes_under_the_interpreter(k, monkeypatch):
    """The GPU's BLOCK_U / BLOCK_I (and the smaller BLOCK_U for a large k) on CPU tensors, one item chunk."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("needs the Triton interpreter")
    monkeypatch.setattr(tk, "_interpret", lambda: False)  # the GPU configuration...
    monkeypatch.setattr(tk, "_num_chunks", lambda *a: 1)
    monkeypatch.setattr(tk, "precision", lambda dtype: "ieee")  # ...computed by the interpreter
    g = torch.Generator().manual_seed(k)
    q, it = torch.randn(67, 9, generator=g).round(), torch.randn(130, 9, generator=g).round()
    it[100:] = it[:30]  # exact ties across tiles
    indptr, indices = csr(torch.randint(0, 9, (67,), generator=g), 130, g)
    check(q, it, k, indptr, indices, exact=True)


def test_nan_scores_rank_as_minus_inf_with_real_ids(dev):
    q, it = torch.randn(3, 4).round(), torch.randn(20, 4).round()
    q[1, 2] = float("nan")  # the whole row scores NaN
    it[7, 0] = float("nan")  # one item scores NaN for every query
    s, i = tk.topk_scores(q.to(dev), it.to(dev), 5, None, None)
    s, i = s.cpu(), i.cpu()
    assert i[1].tolist() == [0, 1, 2, 3, 4] and torch.isneginf(s[1]).all()
    assert ((i >= 0) & (i < 20)).all() and 7 not in i[0].tolist() and 7 not in i[2].tolist()
    clean = torch.cat([torch.arange(7), torch.arange(8, 20)])
    rs, ri = reference.topk_scores(q[[0, 2]], it[clean], 5)
    assert torch.equal(i[[0, 2]], clean[ri]) and torch.equal(s[[0, 2]], rs)


def test_a_bad_dot_precision_setting_is_named(dev, monkeypatch):
    monkeypatch.setenv("FASTREC_TOPK_DOT", "fp64")
    with pytest.raises(ValueError, match="FASTREC_TOPK_DOT"):
        tk.topk_scores(torch.randn(2, 4, device=dev), torch.randn(9, 4, device=dev), 3, None, None)


# ------------------------------------------------------------------ the threshold scheme (sample, scan, sort)


def check_threshold(q, it, k, indptr=None, indices=None, exact=False, stride=4, cap=None, monkeypatch=None,
                    fallback=False):
    """The threshold scheme == reference (as check), and it fell back to the insertion scan iff `fallback`."""
    calls = []
    insertion = tk._insertion_topk
    monkeypatch.setattr(tk, "_insertion_topk", lambda *a: calls.append(1) or insertion(*a))
    original = tk.topk_scores
    monkeypatch.setattr(tk, "topk_scores", lambda *a: original(*a, scheme="threshold", stride=stride, cap=cap))
    try:
        check(q, it, k, indptr, indices, exact=exact)
    finally:
        monkeypatch.setattr(tk, "topk_scores", original)
    assert bool(calls) == fallback


@pytest.mark.parametrize("users,num_items,d,k,stride", [(1, 64, 1, 1, 1), (17, 300, 5, 4, 4), (33, 500, 13, 10, 8),
                                                       (20, 400, 70, 33, 2), (9, 1000, 64, 20, 16)])
def test_threshold_scheme_matches_reference_with_exclusions(users, num_items, d, k, stride, dev, monkeypatch):
    g = torch.Generator().manual_seed(users + num_items)
    q, it = torch.randn(users, d, generator=g), torch.randn(num_items, d, generator=g)
    indptr, indices = csr(torch.randint(0, 30, (users,), generator=g), num_items, g)
    check_threshold(q.to(dev), it.to(dev), k, indptr.to(dev), indices.to(dev), stride=stride,
                    monkeypatch=monkeypatch)
    check_threshold(q.to(dev), it.to(dev), k, stride=stride, monkeypatch=monkeypatch)


def test_threshold_scheme_in_query_groups(dev, monkeypatch):
    """Candidate slots for a few queries at a time (a group's exclusion offsets index the whole list)."""
    monkeypatch.setattr(tk, "CANDIDATE_BYTES", 8 * 150 * 7)  # 7 queries a group at cap 150
    g = torch.Generator().manual_seed(8)
    q, it = torch.randn(23, 6, generator=g), torch.randn(300, 6, generator=g)
    indptr, indices = csr(torch.randint(0, 25, (23,), generator=g), 300, g)
    check_threshold(q.to(dev), it.to(dev), 4, indptr.to(dev), indices.to(dev), stride=3, cap=150,
                    monkeypatch=monkeypatch)


def test_threshold_scheme_exact_ties_and_integer_scores(dev, monkeypatch):
    g = torch.Generator().manual_seed(3)
    q = torch.randn(40, 6, generator=g).round()
    it = torch.randn(200, 6, generator=g).round()
    it = it[torch.randint(0, 50, (600,), generator=g)]  # many duplicated items: exact ties everywhere
    indptr, indices = csr(torch.randint(0, 20, (40,), generator=g), 600, g)
    check_threshold(q.to(dev), it.to(dev), 12, indptr.to(dev), indices.to(dev), exact=True, stride=3, cap=600,
                    monkeypatch=monkeypatch)  # 12 copies of each item: ties crowd the threshold


def test_threshold_scheme_falls_back_when_a_query_overflows_its_slots(dev, monkeypatch):
    g = torch.Generator().manual_seed(4)
    q, it = torch.randn(10, 8, generator=g), torch.randn(300, 8, generator=g)
    # a sample of every 30th item puts about 30 k candidates a query above its threshold: 2 k slots overflow
    check_threshold(q.to(dev), it.to(dev), 5, stride=30, cap=10, monkeypatch=monkeypatch, fallback=True)
    check_threshold(q.to(dev), it.to(dev), 5, stride=30, cap=300, monkeypatch=monkeypatch)


def test_threshold_scheme_with_more_sample_exclusions_than_its_room(dev, monkeypatch):
    """A query excluding over EXTRA_EXCLUDED sample items gets tau = -inf: every item it keeps is a candidate."""
    g = torch.Generator().manual_seed(5)
    q, it = torch.randn(3, 4, generator=g), torch.randn(400, 4, generator=g)
    indptr = torch.tensor([0, 150, 150, 160])
    indices = torch.cat([torch.arange(0, 300, 2), torch.randint(0, 400, (10,), generator=g)])
    tau = tk.thresholds(q.to(dev), it.to(dev), 3, indptr.to(dev), indices.to(dev), "ieee", 2).cpu()
    assert torch.isneginf(tau[0]) and torch.isfinite(tau[1:]).all()
    check_threshold(q.to(dev), it.to(dev), 3, indptr.to(dev), indices.to(dev), stride=2, cap=400,
                    monkeypatch=monkeypatch)


def test_threshold_scheme_nan_scores_fall_back(dev, monkeypatch):
    q, it = torch.randn(3, 4).round(), torch.randn(40, 4).round()
    it[7, 0] = float("nan")
    s, i = tk.topk_scores(q.to(dev), it.to(dev), 5, None, None, scheme="threshold", stride=2)
    rs, ri = tk.topk_scores(q.to(dev), it.to(dev), 5, None, None, scheme="insertion")
    assert torch.equal(s.cpu(), rs.cpu()) and torch.equal(i.cpu(), ri.cpu()) and 7 not in i.cpu().tolist()
    with pytest.raises(ValueError, match="scheme"):
        tk.topk_scores(q.to(dev), it.to(dev), 5, None, None, scheme="heap")


@settings(max_examples=15, deadline=None)
@given(users=st.integers(1, 12), num_items=st.integers(1, 120), d=st.integers(1, 12), data=st.data(),
       ties=st.booleans(), stride=st.integers(1, 9), seed=st.integers(0, 1000))
def test_thresholds_bound_each_querys_kth_best_score(users, num_items, d, data, ties, stride, seed):
    """tau never exceeds a query's k-th best score among the items it keeps (else a top-k item could be missed),
    so at least k candidates always reach it; and the whole scheme equals the reference."""
    if os.environ.get("TRITON_INTERPRET") != "1" and not torch.cuda.is_available():
        pytest.skip("needs the Triton interpreter or a GPU")
    dev = "cpu" if os.environ.get("TRITON_INTERPRET") == "1" else "cuda"
    g = torch.Generator().manual_seed(seed)
    q, it = torch.randn(users, d, generator=g), torch.randn(num_items, d, generator=g)
    if ties:
        it, q = it[torch.randint(0, num_items, (num_items,), generator=g)].round(), q.round()
    k = data.draw(st.integers(1, min(num_items, tk.MAX_K)))
    indptr, indices = csr(torch.randint(0, num_items + 1, (users,), generator=g), num_items, g)
    tau = tk.thresholds(q.to(dev), it.to(dev), k, indptr.to(dev), indices.to(dev), "ieee", stride).cpu()
    scores = (q.double() @ it.double().t())
    for u in range(users):
        keep = torch.ones(num_items, dtype=torch.bool)
        keep[indices[indptr[u]:indptr[u + 1]]] = False
        kept = scores[u][keep].sort(descending=True).values
        if kept.numel() >= k:
            assert tau[u] <= kept[k - 1] and (kept >= tau[u]).sum() >= k
        else:
            assert torch.isneginf(tau[u]) or (kept < tau[u]).any()  # too few kept items: the scheme falls back
    s, i = tk.topk_scores(q.to(dev), it.to(dev), k, indptr.to(dev), indices.to(dev), scheme="threshold",
                          stride=stride)
    rs, ri = reference.topk_scores(q, it, k, indptr, indices)
    torch.testing.assert_close(s.cpu(), rs, rtol=1e-5, atol=1e-5)
    if ties:
        assert torch.equal(i.cpu(), ri)


def test_sample_plan_keeps_the_sample_bounded_and_the_slots_proportional():
    assert tk.sample_plan(1_000_000, 20) == (16, 4 * 20 * 16)  # the bench's shape: 64 k slots, 16 k expected
    stride, cap = tk.sample_plan(10_000_000, 20)
    assert stride == 153 and 10_000_000 / stride <= tk.MAX_SAMPLE and cap == 4 * 20 * stride
    assert tk.sample_plan(100, 3) == (16, 192) and tk.sample_plan(100, 3, 2, 7) == (2, 7)


@pytest.mark.parametrize("config", range(len(tk.CANDIDATE_CONFIGS)))
def test_threshold_scheme_in_its_gpu_blocks_under_the_interpreter(config, monkeypatch):
    """The candidate scan in each GPU tile autotune may pick (64 or 128 queries x 64 items, d in 32-wide slices:
    two here) on CPU tensors."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("needs the Triton interpreter")
    monkeypatch.setattr(tk, "_interpret", lambda: False)  # the GPU configuration...
    monkeypatch.setattr(tk, "_num_chunks", lambda *a: 2)
    monkeypatch.setattr(tk, "precision", lambda dtype: "ieee")  # ...computed by the interpreter
    c = tk.CANDIDATE_CONFIGS[config]
    monkeypatch.setattr(tk, "CANDIDATE_CONFIGS", [c])
    assert tk._candidate_blocks(64) == (c.kwargs["BLOCK_U"], c.kwargs["BLOCK_I"], 32, c.num_warps)
    g = torch.Generator().manual_seed(9)
    q, it = torch.randn(150, 64, generator=g).round(), torch.randn(500, 64, generator=g).round()
    it[400:] = it[:100]  # exact ties across tiles and chunks
    indptr, indices = csr(torch.randint(0, 9, (150,), generator=g), 500, g)
    check_threshold(q, it, 10, indptr, indices, exact=True, stride=5, cap=500, monkeypatch=monkeypatch)


@pytest.mark.parametrize("dot,tuned,configs", [("ieee", "candidates_tuned", "CANDIDATE_CONFIGS"),
                                                ("tf32x3", "candidates_split_tuned", "SPLIT_CONFIGS")])
def test_the_autotuned_candidate_scan_resets_its_counts_for_every_trial(dot, tuned, configs, monkeypatch):
    """On a GPU autotune runs the scan once per config (and its benchmark several times) before the real launch:
    each run must start from zero counts (reset_to_zero), or the candidate lists would hold every trial's appends.
    Here under the interpreter, with a stand-in benchmark that runs each config twice and finds the second fastest."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("needs the Triton interpreter")
    trials = []

    def bench(call, quantiles):
        call()
        call()
        trials.append(len(trials))
        return [1.0 if len(trials) == 2 else 2.0] * 3

    tuned, configs = getattr(tk, tuned), getattr(tk, configs)
    monkeypatch.setattr(tk, "_autotunes", lambda queries: True)
    monkeypatch.setattr(tk, "precision", lambda dtype: dot)
    monkeypatch.setattr(tuned, "_do_bench", bench)
    monkeypatch.setattr(tuned, "cache", {})
    g = torch.Generator().manual_seed(12)
    q, it = torch.randn(150, 40, generator=g).round(), torch.randn(400, 40, generator=g).round()
    indptr, indices = csr(torch.randint(0, 9, (150,), generator=g), 400, g)
    check_threshold(q, it, 10, indptr, indices, exact=True, stride=5, cap=400, monkeypatch=monkeypatch)
    assert trials == list(range(len(configs)))
    assert list(tuned.cache.values()) == [configs[1]]


def test_split_tf32_keeps_ten_mantissa_bits_and_an_exact_remainder():
    x = torch.randn(1000, generator=torch.Generator().manual_seed(13)) * 1e3
    hi, lo = tk.split_tf32(x)
    assert torch.equal(hi + lo, x) and not (hi.view(torch.int32) & 8191).any()
    assert (lo.abs() <= x.abs() * 2.0**-10).all()


@pytest.mark.parametrize("config", [None, *range(len(tk.SPLIT_CONFIGS))])
def test_the_split_candidate_scan_matches_reference(config, monkeypatch):
    """fp32 with tf32x3 dots and d <= 64 (the GPU default) takes candidates_split_kernel: item-major tiles, the
    queries split once. Under the interpreter in its own small blocks (config None) and in each GPU config's,
    with exclusions, exact ties across tiles and chunks, and a d below the block's."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("needs the Triton interpreter")
    calls, fallbacks = [], []
    split, insertion = tk.split_tf32, tk._insertion_topk
    monkeypatch.setattr(tk, "split_tf32", lambda x: calls.append(x.shape) or split(x))  # the split path only
    monkeypatch.setattr(tk, "_insertion_topk", lambda *a: fallbacks.append(1) or insertion(*a))
    if config is not None:
        c = tk.SPLIT_CONFIGS[config]
        monkeypatch.setattr(tk, "_interpret", lambda: False)
        monkeypatch.setattr(tk, "_num_chunks", lambda *a: 2)
        monkeypatch.setattr(tk, "SPLIT_CONFIGS", [c])
        assert tk._split_blocks(50) == (c.kwargs["BLOCK_U"], c.kwargs["BLOCK_I"], 64, c.num_warps, c.num_stages)
    g = torch.Generator().manual_seed(10)
    for d, rounded in ((50, True), (7, False)):
        q, it = torch.randn(70, d, generator=g), torch.randn(500, d, generator=g)
        if rounded:
            q, it = q.round(), it.round()
            it[400:] = it[:100]  # exact ties across tiles and chunks
        indptr, indices = csr(torch.randint(0, 9, (70,), generator=g), 500, g)
        s, i = tk.topk_scores(q, it, 10, indptr, indices, dot="tf32x3", scheme="threshold", stride=5, cap=500)
        rs, ri = reference.topk_scores(q, it, 10, indptr, indices)
        torch.testing.assert_close(s, rs, rtol=1e-5, atol=1e-5)
        if rounded:
            assert torch.equal(i, ri) and torch.equal(s, rs)
    assert calls == [(70, 50), (70, 7)] and not fallbacks
    monkeypatch.setenv("FASTREC_TOPK_SPLIT", "0")  # the built-in tf32x3 scan instead
    tk.topk_scores(q, it, 10, indptr, indices, dot="tf32x3", scheme="threshold", stride=5, cap=500)
    assert len(calls) == 2
    monkeypatch.setenv("FASTREC_TOPK_SPLIT", "yes")
    with pytest.raises(ValueError, match="FASTREC_TOPK_SPLIT"):
        tk.topk_scores(q, it, 10, indptr, indices, dot="tf32x3", scheme="threshold", stride=5, cap=500)


def _threshold_at_scale(device, monkeypatch, users=300, num_items=70_000):
    """From 65,536 items the default is the threshold scheme: it answers without falling back, as the reference
    does, with many item chunks (a GPU splits 70,000 items over its SMs)."""
    calls = []
    insertion = tk._insertion_topk
    monkeypatch.setattr(tk, "_insertion_topk", lambda *a: calls.append(1) or insertion(*a))
    g = torch.Generator().manual_seed(11)
    q, it = torch.randn(users, 64, generator=g), torch.randn(num_items, 64, generator=g)
    indptr, indices = csr(torch.randint(0, 60, (users,), generator=g), num_items, g)
    check(q.to(device), it.to(device), 20, indptr.to(device), indices.to(device))
    assert not calls


@pytest.mark.cuda
def test_threshold_scheme_at_scale_on_a_gpu(cuda_device, monkeypatch):
    _threshold_at_scale(cuda_device, monkeypatch)
