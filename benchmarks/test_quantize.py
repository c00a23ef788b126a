"""residual_encode / nearest_code against torch eager, faiss (flat and ResidualQuantizer),
vector-quantize-pytorch and the sgemm bound; fastrec runs first in each case."""

import pytest

pytest.importorskip("faiss")
pytest.importorskip("vector_quantize_pytorch")

from fastrec.bench.quantize import cases  # noqa: E402

PARAMS = [pytest.param(c, impl, id=f"{'quick-' if c.quick else ''}{c.name}-{impl}")
          for c in cases(quick=False) for impl in c.impls]


@pytest.mark.parametrize("case,impl", PARAMS)
def test_quantize(run_impl, case, impl):
    run_impl(case, impl)
