"""LC-Rec: trie-constrained generate() against unconstrained, a Python dict trie and LC-Rec's per-position
sets; RQ-VAE epoch and index build with fused ops against torch eager; fastrec runs first in each case."""

import pytest

pytest.importorskip("transformers")

from fastrec.bench.lcrec import cases  # noqa: E402

PARAMS = [pytest.param(c, impl, id=f"{'quick-' if c.quick else ''}{c.name}-{impl}")
          for c in cases(quick=False) for impl in c.impls]


@pytest.mark.parametrize("case,impl", PARAMS)
def test_lcrec(run_impl, case, impl):
    run_impl(case, impl)
