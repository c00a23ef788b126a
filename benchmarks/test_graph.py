"""lightgcn_propagate (forward, forward+backward) against torch.sparse CSR, the symmetric autograd.Function
and torch_geometric; topk_scores against torch chunked mm + topk and faiss; fastrec runs first in each case."""

import pytest

pytest.importorskip("faiss")
pytest.importorskip("torch_geometric")

from fastrec.bench.core import case_impls  # noqa: E402
from fastrec.bench.graph import cases  # noqa: E402

PAIRS, IDS = case_impls(cases(quick=False))


@pytest.mark.parametrize("case,impl", PAIRS, ids=IDS)
def test_graph(run_impl, case, impl):
    run_impl(case, impl)
