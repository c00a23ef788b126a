"""semantic_fusion_lookup (forward, forward+backward) against the eager composition; fastrec runs first."""

import pytest

from fastrec.bench.core import case_impls
from fastrec.bench.fusion import cases

PAIRS, IDS = case_impls(cases(quick=False))


@pytest.mark.parametrize("case,impl", PAIRS, ids=IDS)
def test_fusion(run_impl, case, impl):
    run_impl(case, impl)
