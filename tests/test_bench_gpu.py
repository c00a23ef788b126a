"""The GPU benchmark (`fastrec bench --device cuda`, run by `make gpu-check`) dry-run at toy sizes: every case
builds its inputs and every implementation runs once and agrees with fastrec where outputs are comparable,
so the GPU run cannot die on a typo. The torch.compile peers are skipped here (an inductor build each);
their eager code is the peer next to them. On a GPU the same dry run runs on CUDA."""

import dataclasses

import pytest
import torch

from fastrec.bench import core, gpu

CASES = gpu.cases("cpu", quick=True, tiny=True)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_gpu_bench_case_runs_at_toy_size(case, device):
    if device.type == "cuda":
        case = next(c for c in gpu.cases("cuda", quick=True, tiny=True) if c.name == case.name)
    inputs = case.make()
    assert "fastrec" in case.impls
    for impl, fn in case.impls.items():
        if "torch.compile" in impl:  # an inductor build each (tens of seconds); timed in the bench itself
            continue
        out = fn(inputs)
        if impl == "fastrec":
            first = out
        elif isinstance(out, torch.Tensor) and isinstance(first, torch.Tensor) and out.shape == first.shape \
                and out.dtype == first.dtype and out.is_floating_point() and "bound" not in impl:
            torch.testing.assert_close(out.float(), first.float(), rtol=2e-2, atol=2e-2)


def test_cases_without_a_target_to_reach_run_last():
    """A GPU bench cut short by its time budget loses the rows no target needs (sinkhorn, met on the first H200
    run; trie_mask and collab_inputs_embeds, none), not a target's: they close the default order; named families
    keep the order given."""
    ops = [c.op for c in CASES]
    late = [i for i, op in enumerate(ops) if op in gpu.LAST_OPS]
    assert late and late == list(range(len(ops) - len(late), len(ops)))
    assert {"lcrec generate", "semantic_fusion fwd+bwd", "residual_encode"} <= set(ops[:late[0]])
    assert [c.op for c in gpu.cases("cpu", quick=True, families=["lcrec"], tiny=True)] == ["trie_mask",
                                                                                         "lcrec generate"]


def test_cuda_timer_needs_a_gpu_and_cpu_rows_come_back():
    case = next(c for c in CASES if c.op == "residual_encode")
    rows = core.run_case(core.Case(case.op, case.shape, case.make, {k: v for k, v in case.impls.items()
                                                                    if "compile" not in k}),
                         min_time=0.01, rounds=1, device="cpu")
    assert [r.impl for r in rows][0] == "fastrec" and all(r.ms > 0 for r in rows)


def test_sanitizer_driver_calls_every_op(device):
    """scripts/gpu_sanitize.py (stage 2 of make gpu-check) runs through on every available device."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "gpu_sanitize.py"
    spec = importlib.util.spec_from_file_location("gpu_sanitize", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--device", str(device)]) == 0


def test_optional_peers_are_skipped_when_their_package_is_missing(monkeypatch):
    """faiss is absent on the GPU machine: its peers drop out of the CPU cases instead of failing them."""
    from fastrec.bench import graph, quantize

    monkeypatch.setattr(core, "have", lambda module: module != "faiss")
    assert core.available({"fastrec": 1, "faiss X": 2, "pyg": 3}, {"faiss X": "faiss", "pyg": "torch_geometric"}) \
        == {"fastrec": 1, "pyg": 3}
    monkeypatch.setattr("fastrec.bench.core.importlib.util.find_spec", lambda name: None if name == "faiss" else 1)
    names = [impl for c in quantize.cases(quick=True) + graph.topk_cases(quick=True) for impl in c.impls]
    assert names and not any("faiss" in n for n in names)


def test_the_bench_checks_codes_against_exact_search():
    """The residual_encode case refuses codes that are not exact fp32 search's (beyond fp32 rounding ties)."""
    g = torch.Generator().manual_seed(0)
    x, codebooks = torch.randn(200, 8, generator=g), torch.randn(3, 16, 8, generator=g)
    from fastrec import reference

    codes, _ = reference.residual_encode(x, codebooks)
    assert gpu.check_exact_codes(x, codebooks, codes) == 0
    wrong = codes.clone()
    wrong[5, 1] = (wrong[5, 1] + 1) % 16
    with pytest.raises(AssertionError, match="level 1"):
        gpu.check_exact_codes(x, codebooks, wrong)


def test_the_bench_checks_the_fusion_lookup_against_eager(monkeypatch):
    """The semantic_fusion case refuses a lookup whose output or weight gradient is off the eager composition's
    (here scaled by 1 + 1e-3, a tenfold margin past the check's 1e-4)."""
    inputs = gpu._fusion_inputs("cpu", 50, 24, 3, 8)
    gpu.check_fusion(inputs)
    right = gpu._fusion_fastrec
    monkeypatch.setattr(gpu, "_fusion_fastrec", lambda i: right(i) * (1 + 1e-3))
    with pytest.raises(AssertionError, match="output"):
        gpu.check_fusion(inputs)

    def wrong_gradient(i):  # the output right, the weight's gradient 1 + 1e-3 times too large
        scaled = right({**i, "weight": i["weight"] * (1 + 1e-3)})
        return scaled + (right(i) - scaled).detach()

    monkeypatch.setattr(gpu, "_fusion_fastrec", wrong_gradient)
    with pytest.raises(AssertionError, match="weight gradient"):
        gpu.check_fusion(inputs)


def test_the_bench_checks_lightgcn_splice_and_trie_mask_before_timing(monkeypatch):
    """The LightGCN, splice and trie_mask cases check fastrec's result on their own inputs (at toy size here) and
    refuse a wrong one: a propagation 1e-3 too large (forward, then only its gradient), one changed spliced
    element, one changed mask entry."""
    monkeypatch.setattr(gpu, "_TINY", True)
    graph = gpu._graph_inputs("Amazon-Book", "cpu")
    splice = gpu._splice_inputs("cpu", 2, 40, 24, torch.bfloat16)
    trie = gpu._trie_inputs("cpu")
    gpu.check_lightgcn(graph)
    gpu.check_splice(splice)
    gpu.check_trie_mask(trie)
    assert graph["emb"].grad is None  # the check leaves no gradient behind for the timed calls

    right = gpu.lightgcn_propagate
    monkeypatch.setattr(gpu, "lightgcn_propagate", lambda *a, **k: right(*a, **k) * (1 + 1e-3))
    with pytest.raises(AssertionError, match="lightgcn_propagate forward"):
        gpu.check_lightgcn(graph)

    def wrong_gradient(g, emb, *a, **k):
        scaled = right(g, emb * (1 + 1e-3), *a, **k)
        return scaled + (right(g, emb, *a, **k) - scaled).detach()

    monkeypatch.setattr(gpu, "lightgcn_propagate", wrong_gradient)
    with pytest.raises(AssertionError, match="lightgcn_propagate embedding gradient"):
        gpu.check_lightgcn(graph)

    def one_element_changed(fn):  # to a value neither a score, an embedding nor the fill
        def run(*a, **k):
            out = fn(*a, **k).clone()
            out.view(-1)[3] = 12345.0
            return out
        return run

    monkeypatch.setattr(gpu, "splice_collab_tokens", one_element_changed(gpu.splice_collab_tokens))
    with pytest.raises(AssertionError, match="splice_collab_tokens"):
        gpu.check_splice(splice)
    monkeypatch.setattr(gpu, "trie_mask", one_element_changed(gpu.trie_mask))
    with pytest.raises(AssertionError, match="trie_mask"):
        gpu.check_trie_mask(trie)


def test_the_bench_checks_that_constrained_generate_yields_items():
    """The lcrec generate case refuses a generation with any sequence that is not an item of the index."""
    from fastrec.bench.lcrec import _generate, _lm_setup

    s = _lm_setup(num_items=50, hidden=32, layers=1, batch=3, vocab=2_000)
    out = _generate(s, 4, [s["proc"]])
    assert gpu.check_valid_items(s, out) == 1.0
    prompt = s["batch"]["input_ids"].shape[1]
    broken = out.clone()
    broken[0, prompt] = s["tok"].eos_token_id  # not an index token
    with pytest.raises(AssertionError, match="valid items"):
        gpu.check_valid_items(s, broken)


def _gpu_report():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "gpu_report.py"
    spec = importlib.util.spec_from_file_location("gpu_report", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_report_verdict_counts_and_unselected_stages(tmp_path, capsys):
    """gpu_report.py (make gpu-check's last step): stages left out by GPU_CHECK_STAGES do not fail the verdict
    and say so; a failed stage does; pytest.xml's failures are counted and named."""
    report = _gpu_report()
    (tmp_path / "stages.tsv").write_text("import\tok\t2\npytest\tnot selected\t0\nsanitizer\tskipped\t0\n")
    assert report.pytest_counts(tmp_path) == "not run (GPU_CHECK_STAGES)"
    assert report.main(["gpu_report.py", str(tmp_path)]) == 0
    (tmp_path / "stages.tsv").write_text("import\tok\t2\npytest\tFAILED (rc 124)\t240\n")
    (tmp_path / "pytest.xml").write_text(
        '<testsuites><testsuite tests="3" failures="1" errors="0" skipped="1">'
        '<testcase classname="tests.test_x" name="test_a"/><testcase classname="tests.test_x" name="test_b">'
        '<failure message="boom"/></testcase><testcase classname="tests.test_x" name="test_c"><skipped/>'
        '</testcase></testsuite></testsuites>')
    counts = report.pytest_counts(tmp_path)
    assert counts.startswith("1 passed, 1 failed, 0 errors, 1 skipped") and "tests.test_x::test_b" in counts
    assert report.main(["gpu_report.py", str(tmp_path)]) == 1
    assert "FAILED" in capsys.readouterr().out


def test_kernel_option_rows_set_their_variable_only_while_they_run(monkeypatch):
    """The bench's variant rows (e.g. "fastrec, no L2 stream hints") set a kernel option for their call alone:
    the variable is back as it was afterwards, also when the call raises."""
    import os

    monkeypatch.setenv("FASTREC_SPMM_STREAM_HINTS", "1")
    seen = core.with_env(lambda: os.environ["FASTREC_SPMM_STREAM_HINTS"], "FASTREC_SPMM_STREAM_HINTS", "0")()
    assert seen == "0" and os.environ["FASTREC_SPMM_STREAM_HINTS"] == "1"
    monkeypatch.delenv("FASTREC_SPMM_STREAM_HINTS")

    def boom():
        raise RuntimeError("kernel failed")

    with pytest.raises(RuntimeError, match="kernel failed"):
        core.with_env(boom, "FASTREC_SPMM_STREAM_HINTS", "0")()
    assert "FASTREC_SPMM_STREAM_HINTS" not in os.environ


def test_kernel_option_rows_are_judged_against_the_default_in_the_report(tmp_path, capsys):
    """A with_env row carries its option into bench.csv (read back by read_csv; a CSV from before the column
    reads as no option), and gpu_report.py says, per option, whether to flip the default: faster beyond the
    noise margin, slower, or within it."""
    case = core.Case("toy", "1", lambda: None, {"fastrec": lambda i: 1,
                                                "fastrec, other": core.with_env(lambda i: 2, "FASTREC_TOY", "0")})
    rows = core.run_case(case, min_time=0.01)
    assert [r.option for r in rows] == ["", "FASTREC_TOY=0"]
    rows = [core.Row("a", "1", "fastrec", 2.0, 0.0, speedup=1.0),
            core.Row("a", "1", "fastrec, quick", 1.0, 0.0, speedup=0.5, option="FASTREC_A=1"),
            core.Row("b", "2", "fastrec", 1.0, 0.0, speedup=1.0),
            core.Row("b", "2", "fastrec, slow", 1.5, 0.0, speedup=1.5, option="FASTREC_B=0"),
            core.Row("b", "2", "fastrec, same", 1.01, 0.0, speedup=1.01, option="FASTREC_C=0"),
            core.Row("b", "2", "peer", 3.0, 0.0, speedup=3.0, target=2.0)]
    core.write_csv(rows, tmp_path / "bench.csv")
    assert [r.option for r in core.read_csv(tmp_path / "bench.csv")] == [r.option for r in rows]
    (tmp_path / "stages.tsv").write_text("bench\tok\t60\n")
    _gpu_report().main(["gpu_report.py", str(tmp_path)])
    md = (tmp_path / "gpu-check.md").read_text()
    assert "| a [1] | `FASTREC_A=1` | 2.000 | 1.000 | the option is 100% faster: make it the default |" in md
    assert "| b [2] | `FASTREC_B=0` | 1.000 | 1.500 | the default is 50% faster: keep it |" in md
    assert "`FASTREC_C=0` | 1.000 | 1.010 | within 3%: keep the default |" in md
    assert "FASTREC_A=1" in capsys.readouterr().out and "peer" not in md.split("## Kernel options")[1]
    old = tmp_path / "old.csv"  # a bench.csv from before the option column (the first H200 run's)
    old.write_text("\n".join(",".join(line.split(",")[:-1])
                             for line in (tmp_path / "bench.csv").read_text().splitlines()) + "\n")
    assert [r.option for r in core.read_csv(old)] == [""] * len(rows)


def test_kernel_profile_rows_reach_the_report(tmp_path, device):
    """`fastrec bench --kernels` (make gpu-check's bench stage): run_case profiles every fastrec implementation
    after timing it; the top kernels (CUDA) or operators (CPU) come back per call, the rest summed, shares
    adding up to one; kernels.csv round-trips into gpu-check.md's "where the time goes" tables."""
    a = torch.randn(192, 192, device=device)

    def slow_peer(x):
        for _ in range(20):
            x = (x @ a).tanh()
        return x.sum()

    case = core.Case("toy matmul", "192x192", lambda: a,
                     {"fastrec": lambda x: (x @ x).relu().sum(), "slow peer": slow_peer,
                      "fast peer": lambda x: x.sum(), "copy (bound)": lambda x: x.clone()})
    kernels = []
    core.run_case(case, min_time=0.01, rounds=1, device=str(device), kernels=kernels)
    # fastrec, and the peer faster than fastrec; not the slower peer, not a copy bound
    assert {k.impl for k in kernels} == {"fastrec", "fast peer"}
    kernels = [k for k in kernels if k.impl == "fastrec"]
    assert any("mm" in k.kernel or "gemm" in k.kernel.lower() for k in kernels), [k.kernel for k in kernels]
    assert all(k.calls > 0 and k.ms > 0 for k in kernels)
    assert abs(sum(k.share for k in kernels) - 1) < 1e-6
    core.write_kernels_csv(kernels, tmp_path / "kernels.csv")
    (tmp_path / "stages.tsv").write_text("bench\tok\t5\n")
    assert _gpu_report().main(["gpu_report.py", str(tmp_path)]) == 0
    md = (tmp_path / "gpu-check.md").read_text()
    assert "## Where the time goes" in md and "**toy matmul** [192x192] fastrec" in md
    assert f"`{kernels[0].kernel}`" in md


def test_ncu_driver_runs_the_chosen_cases(device, capsys):
    """scripts/gpu_ncu.py (the ncu stage of make gpu-check) at toy sizes: every fastrec implementation
    of the chosen cases runs (on CUDA once inside the NVTX range ncu profiles); an unknown case is an error."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "gpu_ncu.py"
    spec = importlib.util.spec_from_file_location("gpu_ncu", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    ops = "residual_encode,lightgcn_propagate fwd"
    assert module.main(["--device", device.type, "--tiny", "--ops", ops]) == 0
    out = capsys.readouterr().out
    assert "profiling residual_encode" in out and "lightgcn_propagate fwd" in out and "2 cases ok" in out
    if device.type == "cuda":
        assert "fastrec, no L2 stream hints" in out
    assert module.main(["--device", device.type, "--tiny", "--ops", "no such op"]) == 2
    assert set(module.DEFAULT_OPS.split(",")) <= {c.op for c in CASES}
    # ncu stops after GPU_CHECK_NCU_KERNELS kernels: every case's default comes before any case's variants
    one, two = (core.Case(op, "1", lambda: None, {"fastrec": None, "fastrec, option": None, "peer": None})
                for op in ("a", "b"))
    bare = core.Case("c", "1", lambda: None, {"fastrec": None, "peer": None})
    assert [(c.op, impls) for c, impls in module.profile_order([one, bare, two])] == [
        ("a", ["fastrec"]), ("c", ["fastrec"]), ("b", ["fastrec"]), ("a", ["fastrec, option"]),
        ("b", ["fastrec, option"])]


def test_a_failing_kernel_profile_keeps_the_timings(monkeypatch, capsys):
    """Where torch.profiler cannot run (a GPU machine without CUPTI), the case's timings still come back."""
    def broken(*args, **kwargs):
        raise RuntimeError("CUPTI unavailable")

    monkeypatch.setattr(core, "kernel_profile", broken)
    case = core.Case("toy", "1", lambda: torch.ones(4), {"fastrec": lambda x: x * 2, "peer": lambda x: x + x})
    kernels = []
    rows = core.run_case(case, min_time=0.01, rounds=1, kernels=kernels)
    assert [r.impl for r in rows] == ["fastrec", "peer"] and kernels == []
    assert "no kernel profile of toy[1] fastrec: RuntimeError: CUPTI unavailable" in capsys.readouterr().out


def test_a_failing_peer_is_dropped_and_the_case_keeps_its_other_rows(capsys):
    """A peer (or an earlier-design row) that raises, at once or only in a later timing call (an OOM under a
    grown allocator, a compile error), is dropped and named; fastrec and the other peers keep their figures.
    fastrec itself raising still fails the case."""
    calls = {"n": 0}

    def fails_later(x):
        calls["n"] += 1
        if calls["n"] > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (toy)")
        return x + 1

    def fails_at_once(x):
        raise RuntimeError("no kernel image")

    impls = {"fastrec": lambda x: x * 2, "fails later": fails_later, "peer": lambda x: x + x,
             "fails at once": fails_at_once}
    case = core.Case("toy", "1", lambda: torch.ones(4), impls)
    failures, kernels = [], []
    rows = core.run_case(case, min_time=0.01, rounds=2, kernels=kernels, failures=failures)
    assert [r.impl for r in rows] == ["fastrec", "peer"]
    assert all(r.ms > 0 for r in rows) and rows[1].speedup == rows[1].ms / rows[0].ms
    assert failures == ["toy[1] fails at once: RuntimeError: no kernel image",
                        "toy[1] fails later: OutOfMemoryError: CUDA out of memory (toy)"]
    assert {k.impl for k in kernels} <= {"fastrec", "peer"}
    assert "fastrec bench: dropped toy[1] fails at once" in capsys.readouterr().out

    broken = core.Case("toy", "1", lambda: torch.ones(4), {"fastrec": fails_at_once, "peer": lambda x: x + x})
    with pytest.raises(RuntimeError, match="no kernel image"):
        core.run_case(broken, min_time=0.01, rounds=1, failures=failures)


def test_the_memory_column_comes_from_a_second_call(monkeypatch):
    """An implementation's first call compiles and autotunes (Triton's autotune allocates a 256 MB L2-flush
    buffer), so its peak memory is taken on a later call: what a user pays on every step."""
    log = []
    monkeypatch.setattr(core, "peak_extra_memory_mb", lambda fn: log.append("measure") or fn() or 0.0)
    impls = {"fastrec": lambda x: log.append("fastrec"), "peer": lambda x: log.append("peer")}
    core.run_case(core.Case("toy", "1", lambda: 1, impls), min_time=0.01, rounds=1)
    assert log[:6] == ["fastrec", "measure", "fastrec", "peer", "measure", "peer"]


def test_the_first_call_is_timed_apart_and_reaches_the_report(tmp_path, monkeypatch, capsys):
    """Each row keeps its first call's wall time (compiles and autotuning on a GPU: what a user waits for once,
    and where a time-limited GPU bench spends its budget), apart from the timed calls; gpu-check.md shows it
    per row, and the bench prints each case's wall time as it ends."""
    import argparse
    import time

    import fastrec.bench
    from fastrec import cli

    def compiles_once(x, done=[]):  # noqa: B006 (the state of one "kernel")
        if not done:
            time.sleep(0.2)
            done.append(1)
        return x + 1

    rows = core.run_case(core.Case("toy", "1", lambda: torch.ones(4), {"fastrec": compiles_once,
                                                                      "peer": lambda x: x + 1}),
                         min_time=0.01, rounds=1)
    assert rows[0].first_call_s >= 0.2 and rows[0].ms < 50 and rows[1].first_call_s < 0.2
    core.write_csv(rows, tmp_path / "bench.csv")
    (tmp_path / "stages.tsv").write_text("bench\tok\t5\n")
    assert _gpu_report().main(["gpu_report.py", str(tmp_path)]) == 0
    md = (tmp_path / "gpu-check.md").read_text()
    assert "| first call s |" in md
    assert f"| {rows[0].peak_extra_mb:.1f} | {rows[0].first_call_s:.1f} |" in md

    toy = [core.Case("toy case", "1", lambda: torch.ones(8), {"fastrec": lambda x: x * 2})]
    monkeypatch.setattr(fastrec.bench, "all_cases", lambda **kwargs: toy)
    cli._bench(argparse.Namespace(quick=True, ops="", out=str(tmp_path / "b"), device="cpu", budget_s=0.0))
    assert "fastrec bench: toy case[1] took " in capsys.readouterr().out


def test_a_case_asks_for_more_interleaved_rounds(monkeypatch):
    """A case judged at the 2% level (constrained generate) runs at least its min_rounds interleaved rounds,
    each as long as one of the run's, and keeps each implementation's best round."""
    seen, times = [], iter([5.0, 9.0, 4.0, 9.5, 6.0, 8.0, 4.5, 9.0, 5.5, 9.9])
    monkeypatch.setattr(core, "time_ms", lambda call, min_time: seen.append((call(), min_time)) or next(times))
    case = core.Case("toy", "1", lambda: 1, {"fastrec": lambda x: "fastrec", "peer": lambda x: "peer"}, min_rounds=5)
    rows = core.run_case(case, min_time=0.3, rounds=3)
    assert [impl for impl, _ in seen] == ["fastrec", "peer"] * 5 and all(t == pytest.approx(0.1) for _, t in seen)
    assert [(r.impl, r.ms) for r in rows] == [("fastrec", 4.0), ("peer", 8.0)] and rows[1].speedup == 2.0
    gen = [c for c in CASES if c.op == "lcrec generate"]
    assert gen and gen[0].min_rounds >= 5


def test_bench_names_dropped_rows_in_its_exit_code_and_the_gpu_report(tmp_path, monkeypatch, capsys):
    """`fastrec bench` exits 1 when a row was dropped, bench.csv keeps the case's other rows, and gpu-check.md
    lists the dropped row under the benchmark table (read from the bench's closing lines in gpu-check.log)."""
    import argparse

    import fastrec.bench
    from fastrec import cli

    def no_image(x):
        raise RuntimeError("no kernel image")

    toy = [core.Case("toy", "1", lambda: torch.ones(8), {"fastrec": lambda x: x * 2, "broken peer": no_image,
                                                         "peer": lambda x: x + x}),
           core.Case("broken", "2", lambda: torch.ones(8), {"fastrec": no_image, "peer": lambda x: x + x})]
    monkeypatch.setattr(fastrec.bench, "all_cases", lambda **kwargs: toy)
    args = argparse.Namespace(quick=True, ops="", out=str(tmp_path), device="cpu", budget_s=0.0, kernels=False)
    assert cli._bench(args) == 1
    assert [r.split(",")[2] for r in (tmp_path / "bench.csv").read_text().splitlines()[1:]] == ["fastrec", "peer"]
    printed = capsys.readouterr()
    (tmp_path / "gpu-check.log").write_text(printed.out + printed.err)
    (tmp_path / "stages.tsv").write_text("bench\tFAILED (rc 1)\t5\n")
    report = _gpu_report()
    assert report.main(["gpu_report.py", str(tmp_path)]) == 1
    md = (tmp_path / "gpu-check.md").read_text()
    for line in ["- toy[1] broken peer: RuntimeError: no kernel image", "- broken[2]: RuntimeError: no kernel image"]:
        assert md.count(line) == 1, md  # printed when it happened and at the end: listed once
    # a bench stopped by its time limit prints no closing lines: the ones printed on the way still count,
    # also behind the progress bar's carriage returns
    (tmp_path / "gpu-check.log").write_text("bench:  50%|#  \rfastrec bench: dropped toy[1] p: E: m\rbench: 60%\n")
    assert report.bench_failures(tmp_path) == ["toy[1] p: E: m"]


def test_bench_writes_its_csvs_after_every_case(tmp_path, monkeypatch):
    """`fastrec bench` writes bench.csv (and kernels.csv) after each case: a run that dies in a later case (a
    driver fault, the device call's time limit) keeps the figures of the cases before it."""
    import argparse

    import fastrec.bench
    from fastrec import cli

    def dies(x):
        raise KeyboardInterrupt  # not an Exception: the run stops here, as a killed process would

    toy = [core.Case("first", "1", lambda: torch.ones(8), {"fastrec": lambda x: x * 2, "peer": lambda x: x + x}),
           core.Case("second", "1", lambda: torch.ones(8), {"fastrec": dies})]
    monkeypatch.setattr(fastrec.bench, "all_cases", lambda **kwargs: toy)
    args = argparse.Namespace(quick=True, ops="", out=str(tmp_path), device="cpu", budget_s=0.0, kernels=True)
    with pytest.raises(KeyboardInterrupt):
        cli._bench(args)
    rows = (tmp_path / "bench.csv").read_text().splitlines()
    assert len(rows) == 3 and rows[1].startswith("first,1,fastrec") and rows[2].startswith("first,1,peer")
    assert "first,1,fastrec," in (tmp_path / "kernels.csv").read_text()


def test_a_bench_csv_from_elsewhere_comes_back_as_table_markdown_and_plot(tmp_path, capsys):
    """`fastrec bench --from-csv` (a GPU run's bench.csv, on a machine without the GPU): read_csv inverts
    write_csv, and the table, bench.md and a linear-axis bench.png with each ratio and verdict are rebuilt;
    a missing or empty file is a clear error (exit 2)."""
    from fastrec import cli

    rows = [core.Row("toy", "1", "fastrec", 2.0, 1.5, speedup=1.0, first_call_s=12.5),
            core.Row("toy", "1", "peer", 5.0, 3.25, speedup=2.5, target=3.0),
            core.Row("toy", "1", "copy (bound)", 0.5, 0.0, speedup=0.25, target=0.7)]
    core.write_csv(rows, tmp_path / "bench.csv")
    assert core.read_csv(tmp_path / "bench.csv") == rows
    assert core._bar_label(rows[1]) == " 5 ms, 2.50x (target 3x: missed)"
    assert core._bar_label(rows[2]) == " 0.5 ms: fastrec at 25% of its bandwidth (target 70%: missed)"
    assert core._bar_label(core.Row("toy", "1", "sgemm only (bound)", 4.0, 0.0, 2.0)) == " 4 ms, 2.00x"
    assert cli.main(["bench", "--from-csv", str(tmp_path / "bench.csv"), "--out", str(tmp_path / "plots")]) == 0
    assert "3x MISS" in capsys.readouterr().out
    assert "| toy | 1 | peer | 5.00 | 2.50x | 3x **missed** |" in (tmp_path / "plots" / "bench.md").read_text()
    assert (tmp_path / "plots" / "bench.png").stat().st_size > 10_000
    assert cli.main(["bench", "--from-csv", str(tmp_path / "none.csv"), "--out", str(tmp_path)]) == 2
    old = "op,shape,impl,ms,peer_ms_over_fastrec_ms,target,peak_extra_mb\n"  # before the first_call_s column
    (tmp_path / "old.csv").write_text(old + "toy,1,fastrec,2.0000,1.0000,,1.50\n")
    assert core.read_csv(tmp_path / "old.csv") == [dataclasses.replace(rows[0], first_call_s=None)]
    (tmp_path / "empty.csv").write_text(old)
    assert cli.main(["bench", "--from-csv", str(tmp_path / "empty.csv"), "--out", str(tmp_path)]) == 2
    assert "no rows" in capsys.readouterr().err


def test_gpu_check_dry_run_returns_at_most_eight_files_with_the_ncu_counters(tmp_path):
    """scripts/gpu_check.sh end to end without a GPU (GPU_CHECK_DRY_RUN=1; a stand-in ncu that runs the
    profiled program): every stage passes, ncu runs in the time left, and $OUT holds at most the eight plain
    files the device tool brings back (the bench's own folder with bench.md and bench.png is removed)."""
    import os
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    if shutil.which("bash") is None or shutil.which("timeout") is None:
        pytest.skip("needs bash and coreutils' timeout")
    root = Path(__file__).resolve().parents[1]
    fake = tmp_path / "bin" / "ncu"
    fake.parent.mkdir()
    fake.write_text('#!/usr/bin/env bash\nwhile [ $# -gt 0 ] && [ "$1" != "$PYTHON" ]; do shift; done\n'
                    '"$@"\nrc=$?\necho "  Section: GPU Speed Of Light Throughput (stand-in)"\nexit $rc\n')
    fake.chmod(0o755)
    out = tmp_path / "out"
    env = {**os.environ, "PATH": f"{fake.parent}:{os.environ['PATH']}", "GPU_CHECK_DRY_RUN": "1",
           "PYTHON": sys.executable, "OUT": str(out), "GPU_CHECK_PYTEST_ARGS": "tests/test_bench_gpu.py",
           "GPU_CHECK_NCU_OPS": "residual_encode"}
    env.pop("TRITON_INTERPRET", None)
    proc = subprocess.run(["bash", "scripts/gpu_check.sh"], cwd=root, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    stages = dict(line.split("\t")[:2] for line in (out / "stages.tsv").read_text().splitlines())
    assert stages["bench"] == "ok" and stages["pytest"] == "ok" and stages["ncu"] == "ok", stages
    files = sorted(p.name for p in out.iterdir())
    assert all((out / f).is_file() for f in files) and len(files) <= 8, files
    assert {"gpu-check.md", "bench.csv", "kernels.csv", "gpu-check.log", "stages.tsv", "ncu.txt"} <= set(files)
    assert "gpu_ncu: profiling residual_encode" in (out / "ncu.txt").read_text()
