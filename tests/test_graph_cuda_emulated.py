"""The CUDA spmm / LightGCN kernels (csrc/cuda/graph_kernels.cuh) run on the CPU under a warp emulator.

The emulator (tests/cuda_emulator) compiles the kernels' own source as host C++ and runs every warp as 32
lanes that switch at each shuffle, so the edge-stream window, the shuffles, the merge-path plans, the carries
and the epilogue are the code a GPU runs. It also faults on any out-of-bounds access (each buffer sits against
an inaccessible page) and reports a shuffle that only part of a warp reaches. The host orchestration
(`run_pass`, `lightgcn`) mirrors csrc/cuda/graph.cu: one partition per CSR, two launches per pass.
"""

import ctypes

import numpy as np
import pytest
import torch
from cuda_emulator.harness import CXX, build, emulate
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastrec import reference

PLAN_FIELDS = 6

pytestmark = pytest.mark.skipif(CXX is None, reason="no C++ compiler to build the CUDA emulator")


@pytest.fixture(scope="module")
def emu(tmp_path_factory):
    lib = build("graph_emulated.cpp", tmp_path_factory.mktemp("cuda_emulator"))
    p, i64, i32, f32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_float
    lib.emu_partition.argtypes = [i32, p, i64, i64, i64, i64, p, i32]
    lib.emu_pass.argtypes = [i32, i32, p, p, p, p, i64, p, i64, i64, i64, i64, p, p, p, i32, f32, f32, p, i32, i32]
    return lib


def _ptr(a):
    return None if a is None else a.ctypes.data


def partition(emu, indptr, nnz, items, guard_after=True):
    rows = indptr.size - 1
    workers = (rows + nnz + items - 1) // items
    plan = np.zeros((workers, PLAN_FIELDS), np.int64)
    if workers:
        emu.emu_partition(indptr.dtype == np.int64, _ptr(indptr), rows, nnz, items, workers, _ptr(plan), guard_after)
    return plan


def run_pass(emu, indptr, indices, values, plan, x, nxt=None, out=None, x0=None, first=False, w0=0.0, w=0.0,
             vec=4, hint=True, guard_after=True):
    """One pass as graph.cu's launch_pass runs it (vec = 4: 16-byte lanes, which needs d % 4 == 0)."""
    rows, d = indptr.size - 1, x.shape[1]
    workers = plan.shape[0]
    if rows == 0 or d == 0 or workers == 0:
        return
    carry = np.full((workers, d), np.nan, np.float32)  # torch.empty: never read before written
    emu.emu_pass(indices.dtype == np.int64, vec, _ptr(indptr), _ptr(indices), _ptr(values), _ptr(plan), workers,
                 _ptr(x), rows, indices.size, x.shape[0], d, _ptr(nxt), _ptr(out), _ptr(x0), first, w0, w,
                 _ptr(carry), hint, guard_after)


def spmm(emu, indptr, indices, values, x, items=256, **kw):
    plan = partition(emu, indptr, indices.size, items)
    nxt = np.full((indptr.size - 1, x.shape[1]), np.nan, np.float32)
    run_pass(emu, indptr, indices, values, plan, x, nxt=nxt, **kw)
    return nxt


def lightgcn(emu, indptr, indices, values, emb, weights, items=256, **kw):
    """lightgcn_propagate_cuda's loop: one plan for every layer; the last layer writes only the sum."""
    plan = partition(emu, indptr, indices.size, items, kw.get("guard_after", True))
    out = np.full(emb.shape, np.nan, np.float32)
    cur = emb
    for layer in range(1, len(weights)):
        nxt = np.full(emb.shape, np.nan, np.float32) if layer < len(weights) - 1 else None
        run_pass(emu, indptr, indices, values, plan, cur, nxt=nxt, out=out, x0=emb, first=layer == 1,
                 w0=weights[0], w=weights[layer], **kw)
        cur = nxt
    return out


def power_law_csr(rows, cols, seed, index_dtype=np.int32, max_degree=700, empty=0.2):
    """A CSR whose degrees range from 0 to max_degree (long rows span several warps), random columns."""
    rng = np.random.default_rng(seed)
    deg = np.minimum((rng.pareto(1.2, rows) * 3).astype(np.int64), max_degree)
    deg[rng.random(rows) < empty] = 0
    if rows > 3:
        deg[rows // 2] = max_degree  # always one long row
    indptr = np.zeros(rows + 1, np.int64)
    np.cumsum(deg, out=indptr[1:])
    indices = rng.integers(0, cols, int(indptr[-1]))
    values = rng.standard_normal(int(indptr[-1])).astype(np.float32)
    return indptr.astype(index_dtype), indices.astype(index_dtype), values


def torch_spmm(indptr, indices, values, x):
    got = reference.spmm(torch.from_numpy(indptr.astype(np.int64)), torch.from_numpy(indices.astype(np.int64)),
                         torch.from_numpy(values).double(), torch.from_numpy(x).double())
    return got.double().numpy()


@pytest.mark.parametrize("index_dtype", [np.int32, np.int64])
@pytest.mark.parametrize("d,vec", [(64, 4), (64, 1), (4, 4), (8, 4), (3, 1), (1, 1), (136, 4), (40, 1)])
@pytest.mark.parametrize("items", [256, 16])
def test_emulated_spmm_matches_reference(emu, index_dtype, d, vec, items):
    """Every lane layout (G = 1..32 lanes a neighbour, column chunks past 32 lanes), both index widths, and a
    small plan (16 items a warp: many split rows, carries and chains) against the float64 product."""
    indptr, indices, values = power_law_csr(70, 90, seed=d + items, index_dtype=index_dtype)
    x = np.random.default_rng(d).standard_normal((90, d)).astype(np.float32)
    got, asserts = emulate(emu, spmm, indptr, indices, values, x, items=items, vec=vec)
    assert asserts == 0
    np.testing.assert_allclose(got, torch_spmm(indptr, indices, values, x), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("hint", [True, False])
def test_emulated_lightgcn_matches_reference(emu, hint):
    """The fused epilogue over three layers (x0 in the first, the running sum after), both L2 policies."""
    rng = np.random.default_rng(1)
    indptr, indices, values = power_law_csr(120, 120, seed=5, max_degree=300)
    emb = rng.standard_normal((120, 64)).astype(np.float32)
    weights = [0.25, 0.25, 0.25, 0.25]
    got, asserts = emulate(emu, lightgcn, indptr, indices, values, emb, weights, items=32, hint=hint)
    assert asserts == 0
    t = [torch.from_numpy(a.astype(np.int64) if a.dtype != np.float32 else a) for a in (indptr, indices, values)]
    want = reference.lightgcn_propagate(*t, *t, torch.from_numpy(emb).double(), weights)
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-5, atol=1e-4)


def test_emulated_results_are_bitwise_stable(emu):
    """The sum's order is fixed by (indptr, K, lane layout): guard placement, L2 hints and repeats give the
    same bits."""
    indptr, indices, values = power_law_csr(60, 80, seed=3)
    x = np.random.default_rng(3).standard_normal((80, 16)).astype(np.float32)
    base, _ = emulate(emu, spmm, indptr, indices, values, x, items=32)
    for kw in ({"hint": False}, {"guard_after": False}, {}):
        got, _ = emulate(emu, spmm, indptr, indices, values, x, items=32, **kw)
        assert np.array_equal(got, base, equal_nan=True), kw


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.integers(1, 60), cols=st.integers(1, 50), d=st.integers(1, 40), items=st.sampled_from([1, 3, 8, 64]),
       max_degree=st.integers(0, 200), seed=st.integers(0, 2**16), wide=st.booleans())
def test_emulated_spmm_property(emu, rows, cols, d, items, max_degree, seed, wide):
    dtype = np.int64 if wide else np.int32
    indptr, indices, values = power_law_csr(rows, cols, seed, dtype, max_degree=max_degree)
    x = np.random.default_rng(seed).standard_normal((cols, d)).astype(np.float32)
    got, asserts = emulate(emu, spmm, indptr, indices, values, x, items=items, vec=4 if d % 4 == 0 else 1)
    assert asserts == 0
    np.testing.assert_allclose(got, torch_spmm(indptr, indices, values, x), rtol=1e-5, atol=1e-4)


# ------------------------------------------------------------------ bad input: an assert, never a fault


def _bad_cases():
    indptr, indices, values = power_law_csr(40, 40, seed=11, max_degree=120)
    out_of_range = indices.copy()
    out_of_range[[0, 5, -1]] = [40, -1, 10**6]
    inverted = indptr.copy()
    inverted[20] = inverted[25] + 7
    beyond = indptr.copy()
    beyond[-1] += 50  # indptr ends past nnz
    negative = indptr.copy()
    negative[3:8] = -40
    huge = indptr.copy()
    huge[10] = 2**30
    return {"column out of range": (indptr, out_of_range, values),
            "indptr not monotone": (inverted, indices, values),
            "indptr ends past nnz": (beyond, indices, values),
            "indptr negative": (negative, indices, values),
            "indptr entry huge": (huge, indices, values)}


@pytest.mark.parametrize("guard_after", [True, False])
@pytest.mark.parametrize("case", sorted(_bad_cases()))
def test_emulated_bad_input_asserts_and_stays_in_bounds(emu, case, guard_after):
    """Each malformed CSR raises the kernels' device assert and reads and writes nothing outside its buffers
    (buffers against an inaccessible page on either side: a stray access kills the child process)."""
    indptr, indices, values = _bad_cases()[case]
    x = np.random.default_rng(0).standard_normal((40, 8)).astype(np.float32)

    def run(emu):
        for items in (256, 8):
            out = lightgcn(emu, indptr, indices, values, x, [0.5, 0.3, 0.2], items=items, guard_after=guard_after)
        return out

    out, asserts = emulate(emu, run)
    assert asserts > 0, f"{case}: no device assert"
    if case == "column out of range":  # the other edges are still summed: the rows without a bad column match
        good = np.ones(indptr.size - 1, bool)
        for k in (0, 5, indices.size - 1):
            good[np.searchsorted(indptr, k, side="right") - 1] = False
        t = [torch.from_numpy(a.astype(np.int64)) for a in (indptr, np.clip(indices, 0, 39))]
        want = reference.lightgcn_propagate(*t, torch.from_numpy(values), *t, torch.from_numpy(values),
                                            torch.from_numpy(x).double(), [0.5, 0.3, 0.2]).numpy()
        # two layers: a bad edge's row and every row reaching it in one hop differ; compare the untouched ones
        reach = good.copy()
        for r in np.flatnonzero(good):
            if not good[indices[indptr[r]:indptr[r + 1]].clip(0, 39)].all():
                reach[r] = False
        np.testing.assert_allclose(out[reach], want[reach], rtol=1e-5, atol=1e-4)
