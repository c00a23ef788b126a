"""residual_encode / nearest_code against torch eager, faiss (flat and ResidualQuantizer),
vector-quantize-pytorch and the sgemm bound; fastrec runs first in each case."""

import pytest

pytest.importorskip("faiss")
pytest.importorskip("vector_quantize_pytorch")

from fastrec.bench.core import case_impls  # noqa: E402
from fastrec.bench.quantize import cases  # noqa: E402

PAIRS, IDS = case_impls(cases(quick=False))


@pytest.mark.parametrize("case,impl", PAIRS, ids=IDS)
def test_quantize(run_impl, case, impl):
    run_impl(case, impl)
