"""collab_inputs_embeds (SeLLa-Rec) against torch eager (mask), the original per-sample loop and the
allocation + copy bound; fastrec runs first in each case."""

import pytest

from fastrec.bench.collab import cases

PARAMS = [pytest.param(c, impl, id=f"{'quick-' if c.quick else ''}{c.name}-{impl}")
          for c in cases(quick=False) for impl in c.impls]


@pytest.mark.parametrize("case,impl", PARAMS)
def test_collab(run_impl, case, impl):
    run_impl(case, impl)
