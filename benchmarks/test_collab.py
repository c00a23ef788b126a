"""collab_inputs_embeds (SeLLa-Rec) against torch eager (mask), the original per-sample loop and the
allocation + copy bound; fastrec runs first in each case."""

import pytest

from fastrec.bench.collab import cases
from fastrec.bench.core import case_impls

PAIRS, IDS = case_impls(cases(quick=False))


@pytest.mark.parametrize("case,impl", PAIRS, ids=IDS)
def test_collab(run_impl, case, impl):
    run_impl(case, impl)
