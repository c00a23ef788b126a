"""The benchmark harness shared by `fastrec bench` and the pytest-benchmark suites in benchmarks/.

A `Case` is one op at one shape with its implementations: fastrec's first, then the peers it is judged
against, all run in the same process, interleaved over rounds. Time is the best round's median of
repeated calls after a warm-up; memory is the peak resident-set growth during one call beyond the bytes of its outputs.
On a CUDA device (`device="cuda"`) time is the median of CUDA-event timings (triton.testing.do_bench, which
also flushes the L2 cache between calls) and memory the peak of the caching allocator beyond the outputs.
"""

from __future__ import annotations

import csv
import functools
import gc
import importlib.util
import os
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import torch


@dataclass
class Case:
    """One benchmark: `make()` builds the inputs once; each impl is called as impl(inputs)."""

    op: str
    shape: str
    make: Callable[[], Any]
    impls: dict[str, Callable[[Any], Any]]
    targets: dict[str, float] = field(default_factory=dict)  # peer -> required speedup of fastrec
    quick: bool = True  # part of `fastrec bench --quick`
    # at least this many interleaved rounds, each as long as one of the run's: a ratio judged at the 2% level
    # (constrained generate, tens of ms a call on a GPU) needs more than one round's few calls
    min_rounds: int = 1

    @property
    def name(self) -> str:
        return f"{self.op}[{self.shape}]"


@dataclass
class Row:
    op: str
    shape: str
    impl: str
    ms: float
    peak_extra_mb: float
    speedup: float = float("nan")  # this impl's time / fastrec's time (peers) ; 1.0 for fastrec
    target: float | None = None
    first_call_s: float | None = None  # wall seconds of its first call: compiles and autotuning, then one run
    option: str = ""  # "VAR=value": a fastrec kernel option this row sets (with_env), judged against the default


def with_env(fn: Callable, name: str, value: str) -> Callable:
    """fn with the environment variable `name` set to `value` while it runs, restored after (also when fn
    raises): a kernel option read per call, timed beside the default in the same run. Its rows carry the option
    ("VAR=value") into bench.csv, where the GPU report judges it against the default."""
    @functools.wraps(fn)
    def run(*args):
        old = os.environ.get(name)
        os.environ[name] = value
        try:
            return fn(*args)
        finally:
            if old is None:
                del os.environ[name]
            else:
                os.environ[name] = old
    run.option = f"{name}={value}"
    return run


def have(module: str) -> bool:
    """Whether an optional peer's package is installed (faiss, torch_geometric, vector_quantize_pytorch)."""
    return importlib.util.find_spec(module) is not None


def available(impls: dict[str, Callable[[Any], Any]], needs: dict[str, str]) -> dict[str, Callable[[Any], Any]]:
    """`impls` without the peers whose package (`needs[impl]`) is missing: they are skipped, not failed."""
    return {name: fn for name, fn in impls.items() if name not in needs or have(needs[name])}


def case_impls(cases: list[Case]) -> tuple[list[tuple[Case, str]], list[str]]:
    """(case, impl) pairs and their test ids, for `pytest.mark.parametrize` in benchmarks/."""
    pairs = [(c, impl) for c in cases for impl in c.impls]
    return pairs, [f"{'quick-' if c.quick else ''}{c.name}-{impl}" for c, impl in pairs]


def _output_bytes(out: Any) -> int:
    if isinstance(out, torch.Tensor):
        return out.numel() * out.element_size()
    if isinstance(out, (tuple, list)):
        return sum(_output_bytes(o) for o in out)
    if hasattr(out, "nbytes"):
        return int(out.nbytes)
    return 0


def peak_extra_memory_mb(fn: Callable[[], Any], interval: float = 0.0005) -> float:
    """Peak RSS growth while `fn` runs, minus the size of what it returns (the scratch it needed)."""
    gc.collect()
    proc = psutil.Process()
    base = proc.memory_info().rss
    peak = base
    done = threading.Event()

    def sample():
        nonlocal peak
        while not done.is_set():
            peak = max(peak, proc.memory_info().rss)
            time.sleep(interval)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out = fn()
    peak = max(peak, proc.memory_info().rss)
    done.set()
    sampler.join()
    return max(0.0, (peak - base - _output_bytes(out)) / 2**20)


def time_ms(fn: Callable[[], Any], min_time: float = 0.3, max_reps: int = 20, warmup: int = 1) -> float:
    """Median wall time of `fn` in ms over at least 3 calls (more while under `min_time` seconds)."""
    for _ in range(warmup):
        fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < 3 or (time.perf_counter() - start < min_time and len(times) < max_reps):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def time_ms_cuda(fn: Callable[[], Any], min_time: float = 0.3) -> float:
    """Median GPU time of `fn` in ms from CUDA events (triton's do_bench when present; L2 flushed per call)."""
    try:
        from triton.testing import do_bench

        return float(do_bench(fn, warmup=max(1, int(min_time * 250)), rep=max(1, int(min_time * 1000)),
                              return_mode="median"))
    except ImportError:  # pragma: no cover - triton ships with CUDA torch
        pass
    fn()
    torch.cuda.synchronize()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < 5 or (time.perf_counter() - start < min_time and len(times) < 100):
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        fn()
        end.record()
        end.synchronize()
        times.append(begin.elapsed_time(end))
    return statistics.median(times)


def peak_extra_cuda_mb(fn: Callable[[], Any]) -> float:
    """Peak of the CUDA caching allocator while `fn` runs, beyond what it held before and what it returns."""
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    out = fn()
    torch.cuda.synchronize()
    return max(0.0, (torch.cuda.max_memory_allocated() - base - _output_bytes(out)) / 2**20)


@dataclass
class KernelRow:
    """One kernel (CUDA) or operator (CPU) inside one implementation's call: where its time goes."""

    op: str
    shape: str
    impl: str
    kernel: str
    calls: float  # launches per call of the implementation
    ms: float  # device time per call of the implementation
    share: float  # of the implementation's summed kernel time


def kernel_profile(fn: Callable[[], Any], device: str = "cpu", runs: int = 3,
                   top: int = 8) -> list[tuple[str, float, float]]:
    """(kernel, launches per call, ms per call) of the `top` kernels by device time over `runs` calls of `fn`
    (torch.profiler; on the CPU the operators by self time instead), then "(other kernels)" for the rest.
    Call fn once before: compile and autotune launches would count otherwise."""
    from torch.profiler import ProfilerActivity, profile

    cuda = torch.device(device).type == "cuda"
    activities = [ProfilerActivity.CPU, ProfilerActivity.CUDA] if cuda else [ProfilerActivity.CPU]
    with profile(activities=activities) as prof:
        for _ in range(runs):
            fn()
        if cuda:
            torch.cuda.synchronize()
    totals: dict[str, list[float]] = {}
    for e in prof.key_averages():
        us = e.self_device_time_total if cuda else e.self_cpu_time_total
        if us <= 0 or (cuda and e.device_type != torch.autograd.DeviceType.CUDA):
            continue
        name = e.key if len(e.key) <= 70 else e.key[:67] + "..."
        total = totals.setdefault(name, [0.0, 0.0])
        total[0] += e.count / runs
        total[1] += us / 1e3 / runs
    ranked = sorted(totals.items(), key=lambda kv: -kv[1][1])
    rows = [(name, calls, ms) for name, (calls, ms) in ranked[:top]]
    rest = ranked[top:]
    if rest:
        rows.append(("(other kernels)", sum(c for _, (c, _) in rest), sum(m for _, (_, m) in rest)))
    return rows


def run_case(case: Case, min_time: float = 0.3, progress: Callable[[str], None] | None = None,
             rounds: int = 3, device: str = "cpu", kernels: list[KernelRow] | None = None,
             failures: list[str] | None = None) -> list[Row]:
    """Time every implementation of one case in this process; speedups relative to 'fastrec'.

    The implementations are interleaved over `rounds` rounds (at least the case's `min_rounds`, each as long
    as one of `rounds`) and each keeps its best round's median, so
    that a slow spell of the (shared, virtual) machine does not land on one implementation only. With
    `device="cuda"` the timings come from CUDA events (see time_ms_cuda); the inputs are the case's own.
    `kernels`: where to append the kernel profile (kernel_profile) of each fastrec implementation and of each
    peer faster than fastrec in this run (copy bounds aside), after the timings (so compiles and autotuning
    are done).
    A peer or earlier-design row that raises is dropped from the case and named in `failures` (printed too):
    the other rows keep their figures (a GPU lease is too short to lose a whole case to, say, a peer's
    out-of-memory). fastrec's own row raising fails the case.
    """
    cuda = torch.device(device).type == "cuda"
    inputs = case.make()
    calls = {impl: (lambda fn=fn: fn(inputs)) for impl, fn in case.impls.items()}
    mem, best = {}, {}

    def attempt(impl: str, measure: Callable[[], float]) -> float | None:
        """measure(), or None after dropping a failing peer (fastrec's failure fails the case)."""
        try:
            return measure()
        except Exception as exc:
            if impl == "fastrec":
                raise
            del calls[impl]
            line = f"{case.name} {impl}: {type(exc).__name__}: {exc}"
            print(f"fastrec bench: dropped {line}", flush=True)
            if failures is not None:
                failures.append(line)
            gc.collect()
            if cuda:
                torch.cuda.empty_cache()
            return None

    peak = peak_extra_cuda_mb if cuda else peak_extra_memory_mb
    first = {}

    def first_call_then_peak(impl: str, call: Callable[[], Any]) -> float:
        """The first call's wall time (it compiles and autotunes: what a user waits for once, and most of a
        GPU bench's time) into `first`; returns the peak memory of a second call, the one a user pays on every
        step (Triton's autotune allocates a 256 MB L2-flush buffer in the first)."""
        t0 = time.perf_counter()
        call()
        if cuda:
            torch.cuda.synchronize()
        first[impl] = time.perf_counter() - t0
        return peak(call)

    for impl, call in list(calls.items()):
        if progress:
            progress(f"{case.name} {impl}")
        mem[impl] = attempt(impl, lambda impl=impl, call=call: first_call_then_peak(impl, call))
    per_round = min_time / rounds
    for _ in range(max(rounds, case.min_rounds)):
        for impl, call in list(calls.items()):
            ms = attempt(impl, lambda call=call: time_ms_cuda(call, per_round) if cuda else time_ms(call, per_round))
            if ms is not None:
                best[impl] = min(best.get(impl, float("inf")), ms)
    if kernels is not None:
        for impl, call in calls.items():
            faster_peer = "bound" not in impl and best[impl] < best["fastrec"]  # how does it spend less time?
            if not (impl.startswith("fastrec") or faster_peer):
                continue
            if progress:
                progress(f"{case.name} {impl} (kernel profile)")
            try:
                found = kernel_profile(call, device)
            except Exception as exc:  # a profiler that cannot run here must not lose the timings
                print(f"fastrec bench: no kernel profile of {case.name} {impl}: {type(exc).__name__}: {exc}",
                      flush=True)
                continue
            spent = sum(ms for _, _, ms in found) or 1.0
            kernels += [KernelRow(case.op, case.shape, impl, name, calls_, ms, ms / spent)
                        for name, calls_, ms in found]
    rows = [Row(case.op, case.shape, impl, best[impl], mem[impl], target=case.targets.get(impl),
                first_call_s=first[impl], option=getattr(case.impls[impl], "option", "")) for impl in calls]
    base = best["fastrec"]
    for r in rows:
        r.speedup = r.ms / base
    inputs = calls = None  # free the device inputs before the next case builds its own
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    return rows


def format_table(rows: list[Row]) -> str:
    head = f"{'op':<22} {'shape':<30} {'impl':<28} {'ms':>10} {'vs fastrec':>11} {'target':>8} {'extra MB':>9}"
    lines = [head, "-" * len(head)]
    for r in rows:
        target = "" if r.target is None else (f"{r.target:g}x " + ("ok" if r.speedup >= r.target else "MISS"))
        speed = "1.00x" if r.impl == "fastrec" else f"{r.speedup:.2f}x"
        lines.append(f"{r.op:<22} {r.shape:<30} {r.impl:<28} {r.ms:>10.2f} {speed:>11} {target:>8} "
                     f"{r.peak_extra_mb:>9.1f}")
    return "\n".join(lines)


def _write_table(path: Path, header: list[str], lines: list[list[Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(lines)


def write_csv(rows: list[Row], path: Path) -> None:
    _write_table(path, ["op", "shape", "impl", "ms", "peer_ms_over_fastrec_ms", "target", "peak_extra_mb",
                        "first_call_s", "option"],
                 [[r.op, r.shape, r.impl, f"{r.ms:.4f}", f"{r.speedup:.4f}", r.target or "", f"{r.peak_extra_mb:.2f}",
                   "" if r.first_call_s is None else f"{r.first_call_s:.3f}", r.option] for r in rows])


def read_csv(path: Path) -> list[Row]:
    """The rows of a bench.csv (write_csv's format), e.g. one a GPU run brought back, to table or plot them
    (a CSV from before the first_call_s or option column reads as None or "" there)."""
    with open(path, newline="") as f:
        return [Row(r["op"], r["shape"], r["impl"], float(r["ms"]), float(r["peak_extra_mb"]),
                    speedup=float(r["peer_ms_over_fastrec_ms"]), target=float(r["target"]) if r["target"] else None,
                    first_call_s=float(r["first_call_s"]) if r.get("first_call_s") else None,
                    option=r.get("option") or "")
                for r in csv.DictReader(f)]


def write_kernels_csv(rows: list[KernelRow], path: Path) -> None:
    """The kernel profiles (run_case's `kernels`) as CSV: op, shape, impl, kernel, calls, ms, share."""
    _write_table(path, ["op", "shape", "impl", "kernel", "calls", "ms", "share"],
                 [[r.op, r.shape, r.impl, r.kernel, f"{r.calls:g}", f"{r.ms:.4f}", f"{r.share:.3f}"] for r in rows])


def markdown(rows: list[Row]) -> str:
    """The table as Markdown, one line per implementation (for docs/results.md)."""
    lines = ["| op | shape | impl | ms | peer ms / fastrec ms | target | extra MB |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        target = "" if r.target is None else f"{r.target:g}x " + ("met" if r.speedup >= r.target else "**missed**")
        speed = "-" if r.impl == "fastrec" else f"{r.speedup:.2f}x"
        lines.append(f"| {r.op} | {r.shape} | {r.impl} | {r.ms:.2f} | {speed} | {target} | {r.peak_extra_mb:.1f} |")
    return "\n".join(lines) + "\n"


def _ms(x: float) -> str:
    """Three significant digits: 0.0213 ms, 1.31 ms, 173 ms."""
    return f"{x:.3g}" if x < 1000 else f"{x:.0f}"


def _bar_label(r: Row) -> str:
    if r.impl == "fastrec":
        return f" {_ms(r.ms)} ms"
    verdict = "" if r.target is None else "met" if r.speedup >= r.target else "missed"
    if "copy" in r.impl and "bound" in r.impl:  # a copy of the same bytes: the fraction of its bandwidth reached
        target = "" if r.target is None else f" (target {100 * r.target:.0f}%: {verdict})"
        return f" {_ms(r.ms)} ms: fastrec at {100 * r.speedup:.0f}% of its bandwidth{target}"
    target = "" if r.target is None else f" (target {r.target:g}x: {verdict})"
    return f" {_ms(r.ms)} ms, {r.speedup:.2f}x{target}"


def plot(rows: list[Row], path: Path) -> None:
    """One horizontal bar group per case: time of each implementation, fastrec highlighted, on a linear axis
    from 0 (bar lengths compare), each peer labelled with its ratio to fastrec and the target's verdict."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = list(dict.fromkeys((r.op, r.shape) for r in rows))
    fig, axes = plt.subplots(len(cases), 1, figsize=(10, 1.2 + 0.45 * len(rows)), squeeze=False)
    for ax, (op, shape) in zip(axes[:, 0], cases, strict=True):
        group = [r for r in rows if (r.op, r.shape) == (op, shape)]
        colors = ["#d62728" if r.impl == "fastrec" else "#7f7f7f" for r in group]
        ax.barh([r.impl for r in group], [r.ms for r in group], color=colors)
        for i, r in enumerate(group):
            ax.text(r.ms, i, _bar_label(r), va="center", fontsize=8)
        ax.set_title(f"{op} {shape}", fontsize=9)
        ax.set_xlim(0, 1.8 * max(r.ms for r in group))  # room for the labels
        ax.invert_yaxis()
        ax.tick_params(labelsize=8)
    axes[-1, 0].set_xlabel("milliseconds (lower is better); ratio = that row's ms / fastrec's ms "
                           "(above 1: fastrec is faster)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
