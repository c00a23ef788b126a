"""Every GPU case of `fastrec bench --device cuda` (fastrec/bench/gpu.py, the issue-10 shapes) under
pytest-benchmark: residual_encode and sinkhorn_assign, lightgcn_propagate and topk_scores, the collab
splice, semantic fusion, trie-constrained generate, each against its GPU peers in the same run. Skips
without a CUDA GPU."""

import pytest
import torch

if not torch.cuda.is_available():
    pytest.skip("no CUDA GPU visible", allow_module_level=True)

from fastrec.bench.core import case_impls  # noqa: E402
from fastrec.bench.gpu import cases  # noqa: E402

PAIRS, IDS = case_impls(cases("cuda", quick=False))


@pytest.mark.parametrize("case,impl", PAIRS, ids=IDS)
def test_gpu(run_impl, case, impl):
    run_impl(case, impl, cuda=True)
