"""semantic_fusion_lookup (forward, forward+backward) against the eager composition; fastrec runs first."""

import pytest

from fastrec.bench.fusion import cases

PARAMS = [pytest.param(c, impl, id=f"{'quick-' if c.quick else ''}{c.name}-{impl}")
          for c in cases(quick=False) for impl in c.impls]


@pytest.mark.parametrize("case,impl", PARAMS)
def test_fusion(run_impl, case, impl):
    run_impl(case, impl)
