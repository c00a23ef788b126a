"""One KIRec embedding training step (forward, backward, update) at 1M items: fused sparse Adam against dense
torch Adam and torch sparse gradients + SparseAdam; fastrec runs first."""

import pytest

from fastrec.bench.core import case_impls
from fastrec.bench.embedding_optim import cases

PAIRS, IDS = case_impls(cases(quick=False))


@pytest.mark.parametrize("case,impl", PAIRS, ids=IDS)
def test_embedding_optim(run_impl, case, impl):
    run_impl(case, impl)
