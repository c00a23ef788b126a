"""pytest-benchmark plumbing: every case times fastrec and its peers in the same run; at the end of the
session a table of ratios (peer ms / fastrec ms), targets and peak extra memory is printed and written
to results/benchmarks/benchmarks.csv and .png.

Run: `make bench` (all shapes) or `pytest benchmarks --benchmark-only -k quick`.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from fastrec.bench import Row, format_table, plot, write_csv
from fastrec.bench.core import peak_extra_cuda_mb, peak_extra_memory_mb

_ROWS: list[Row] = []
_INPUTS: dict[str, object] = {}


@pytest.fixture
def run_impl(benchmark):
    """Benchmark one implementation of a case; inputs are built once per case and shared by its impls."""

    def run(case, impl: str, cuda: bool = False):
        """cuda: the case runs on the GPU; each call ends with a synchronize (so the wall time is the GPU
        time) and the memory column is the CUDA caching allocator's peak, not host RSS."""
        if case.name not in _INPUTS:
            _INPUTS.clear()  # one case's inputs in memory at a time
            _INPUTS[case.name] = case.make()
        inputs = _INPUTS[case.name]
        fn = case.impls[impl]
        if cuda:
            import torch

            def fn(i, call=fn):
                out = call(i)
                torch.cuda.synchronize()
                return out

        mem = (peak_extra_cuda_mb if cuda else peak_extra_memory_mb)(lambda: fn(inputs))
        benchmark.group = case.name
        benchmark.extra_info["peak_extra_mb"] = round(mem, 2)
        benchmark.pedantic(fn, args=(inputs,), rounds=5, warmup_rounds=1, iterations=1)
        ms = benchmark.stats.stats.median * 1e3
        _ROWS.append(Row(case.op, case.shape, impl, ms, mem, target=case.targets.get(impl)))

    return run


def pytest_terminal_summary(terminalreporter):
    if not _ROWS:
        return
    base = {(r.op, r.shape): r.ms for r in _ROWS if r.impl == "fastrec"}
    rows = [r for r in _ROWS if (r.op, r.shape) in base]
    for r in rows:
        r.speedup = r.ms / base[(r.op, r.shape)]
    terminalreporter.write_sep("=", "fastrec vs peers (same run)")
    terminalreporter.write_line(format_table(rows))
    out = Path("results/benchmarks")
    write_csv(rows, out / "benchmarks.csv")
    plot(rows, out / "benchmarks.png")
    terminalreporter.write_line(f"wrote {out / 'benchmarks.csv'} and {out / 'benchmarks.png'}")
