"""lightgcn_propagate (forward, forward+backward) against torch.sparse CSR, the symmetric autograd.Function
and torch_geometric; topk_scores against torch chunked mm + topk and faiss; fastrec runs first in each case."""

import pytest

pytest.importorskip("faiss")
pytest.importorskip("torch_geometric")

from fastrec.bench.graph import cases  # noqa: E402

PARAMS = [pytest.param(c, impl, id=f"{'quick-' if c.quick else ''}{c.name}-{impl}")
          for c in cases(quick=False) for impl in c.impls]


@pytest.mark.parametrize("case,impl", PARAMS)
def test_graph(run_impl, case, impl):
    run_impl(case, impl)
