"""LC-Rec: trie-constrained generate() against unconstrained, a Python dict trie and LC-Rec's per-position
sets; RQ-VAE epoch and index build with fused ops against torch eager; fastrec runs first in each case."""

import pytest

pytest.importorskip("transformers")

from fastrec.bench.core import case_impls  # noqa: E402
from fastrec.bench.lcrec import cases  # noqa: E402

PAIRS, IDS = case_impls(cases(quick=False))


@pytest.mark.parametrize("case,impl", PAIRS, ids=IDS)
def test_lcrec(run_impl, case, impl):
    run_impl(case, impl)
