"""The CUDA trie_mask kernel (csrc/cuda/trie_kernels.cuh) run on the CPU under the block emulator.

tests/cuda_emulator compiles the kernel's own source as host C++ and runs each block's 256 threads as fibers
that switch at __syncthreads (the `__shared__` walk result is shared by the block), one block per beam as
trie_mask_cuda launches it. Every buffer sits against an inaccessible page, so an out-of-bounds access faults
(in a forked child: a test failure), and a barrier only some threads reach is reported.
"""

import ctypes

import numpy as np
import pytest
import torch
from cuda_emulator.harness import CXX, build, emulate
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_trie import random_generated, random_trie

from fastrec import reference

pytestmark = pytest.mark.skipif(CXX is None, reason="no C++ compiler to build the CUDA emulator")
NEG = float("-inf")


@pytest.fixture(scope="module")
def emu(tmp_path_factory):
    lib = build("trie_emulated.cpp", tmp_path_factory.mktemp("cuda_emulator"))
    p, i64, i32, f32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_float
    lib.emu_trie_mask.argtypes = [i32, p, p, p, p, p, i64, i64, i64, i64, i64, f32, p, i32]
    return lib


def trie_mask(emu, scores, generated, indptr, tokens, children, fill=NEG, guard_after=True):
    """trie_mask_cuda's launch on numpy arrays: fp32 scores [R, V], generated [R, G] int32 or int64."""
    out = np.full_like(scores, np.nan)
    r, v = scores.shape
    emu.emu_trie_mask(generated.dtype == np.int64, scores.ctypes.data, generated.ctypes.data, indptr.ctypes.data,
                      tokens.ctypes.data, children.ctypes.data, r, v, generated.shape[1], indptr.size - 1,
                      tokens.size, fill, out.ctypes.data, guard_after)
    return out


def random_case(n_items, levels, codes, rows, depth, seed, vocab=None):
    """test_trie's random trie and generated rows (following items, leaving the trie, ending them), as numpy,
    with fp32 scores over a vocabulary that holds every token."""
    offset = 3
    seqs, trie = random_trie(n_items, levels, codes, offset, seed)
    vocab = vocab or offset + levels * codes + 2
    gen = random_generated(seqs, rows, depth, vocab, seed).numpy()
    scores = np.random.default_rng(seed).standard_normal((rows, vocab)).astype(np.float32)
    return scores, gen, *(t.numpy() for t in trie)


def reference_mask(scores, gen, indptr, tokens, children, fill=NEG):
    t = [torch.from_numpy(a) for a in (scores, gen, indptr, tokens, children)]
    return reference.trie_mask(*t, fill).numpy()


@pytest.mark.parametrize("depth", [0, 1, 2, 3, 5])
@pytest.mark.parametrize("id_dtype", [np.int32, np.int64])
def test_emulated_trie_mask_matches_reference(emu, depth, id_dtype):
    scores, gen, indptr, tokens, children = random_case(60, 3, 7, rows=9, depth=depth, seed=depth)
    got, asserts = emulate(emu, trie_mask, scores, gen.astype(id_dtype), indptr, tokens, children)
    assert asserts == 0
    np.testing.assert_array_equal(got, reference_mask(scores, gen, indptr, tokens, children))


def test_emulated_trie_mask_wide_vocabulary_and_root(emu):
    """A vocabulary wider than the block (several fill strides per thread) and a root with more edges than
    threads (several scatter strides)."""
    scores, gen, indptr, tokens, children = random_case(900, 2, 400, rows=3, depth=1, seed=7, vocab=1300)
    for rows in (gen[:, :0], gen):
        got, _ = emulate(emu, trie_mask, scores, np.ascontiguousarray(rows), indptr, tokens, children, fill=-7.0)
        np.testing.assert_array_equal(got, reference_mask(scores, rows, indptr, tokens, children, -7.0))


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n_items=st.integers(1, 40), levels=st.integers(1, 4), codes=st.integers(1, 9), rows=st.integers(1, 6),
       depth=st.integers(0, 6), seed=st.integers(0, 2**16), guard_after=st.booleans())
def test_emulated_trie_mask_property(emu, n_items, levels, codes, rows, depth, seed, guard_after):
    scores, gen, indptr, tokens, children = random_case(n_items, levels, codes, rows, depth, seed)
    got, _ = emulate(emu, trie_mask, scores, gen, indptr, tokens, children, guard_after=guard_after)
    np.testing.assert_array_equal(got, reference_mask(scores, gen, indptr, tokens, children))


def _malformed():
    _, _, indptr, tokens, children = random_case(30, 3, 5, rows=1, depth=0, seed=1)
    cases = {}
    ip = indptr.copy()
    ip[1] = -5
    cases["indptr negative"] = (ip, tokens, children)
    ip = indptr.copy()
    ip[2:] = 10**9
    cases["indptr past the edges"] = (ip, tokens, children)
    ip = indptr.copy()
    ip[1], ip[2] = ip[2], ip[1] - 1  # an inverted range
    cases["indptr inverted"] = (ip, tokens, children)
    ch = children.copy()
    ch[::3] = np.resize(np.array([10**9, -7, 2**40]), ch[::3].size)
    cases["children out of range"] = (indptr, tokens, ch)
    tok = tokens.copy()
    tok[::2] = -3
    tok[1::4] = 10**6
    cases["tokens outside the vocabulary"] = (indptr, tok, children)
    return cases


@pytest.mark.parametrize("guard_after", [True, False])
@pytest.mark.parametrize("case", sorted(_malformed()))
def test_emulated_trie_mask_malformed_trie_stays_in_bounds(emu, case, guard_after):
    """A malformed trie (unchecked under validate=False or capture) reads and writes nothing outside its
    buffers: the kernel clamps edge ranges, ends the walk on a bad child and skips tokens outside [0, V)."""
    indptr, tokens, children = _malformed()[case]
    scores, gen, *_ = random_case(30, 3, 5, rows=8, depth=2, seed=2)
    got, _ = emulate(emu, trie_mask, scores, gen, indptr, tokens, children, guard_after=guard_after)
    # every entry is the row's score or the fill: never garbage
    assert np.all((got == scores) | (got == NEG))
