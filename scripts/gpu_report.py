"""Stage 4 of `make gpu-check`: gpu-check.md from what the stages left in OUT, and the short table last.

    python3 scripts/gpu_report.py OUT

Reads OUT/stages.tsv (stage, status, seconds), OUT/pytest.xml, OUT/sanitizer.log, OUT/bench.csv and
OUT/kernels.csv; writes OUT/gpu-check.md (environment, stages, test counts, sanitizer summary, the benchmark
table, where the time of fastrec and of the peers faster than it goes); prints the stages and the benchmark
ratios, then the verdict. Exit 1 when a stage did not pass (skipped is a pass with a note: e.g.
compute-sanitizer missing).
"""

from __future__ import annotations

import csv
import datetime
import platform
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path


def environment() -> list[tuple[str, str]]:
    rows = [("date (UTC)", datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M")),
            ("python", platform.python_version())]
    try:
        import torch

        rows += [("GPU", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none visible"),
                 ("torch", torch.__version__), ("CUDA (torch)", str(torch.version.cuda))]
        import triton

        rows.append(("triton", triton.__version__))
    except Exception as exc:  # the report must come out even from a broken install
        rows.append(("environment", f"incomplete: {type(exc).__name__}: {exc}"))
    return rows


def stages(out: Path) -> list[tuple[str, str, str]]:
    path = out / "stages.tsv"
    if not path.is_file():
        return []
    return [tuple(line.split("\t")) for line in path.read_text().splitlines() if line.count("\t") == 2]


def pytest_counts(out: Path) -> str:
    path = out / "pytest.xml"
    if not path.is_file():
        if ("pytest", "not selected") in [(name, status) for name, status, _ in stages(out)]:
            return "not run (GPU_CHECK_STAGES)"
        return "no pytest.xml (pytest did not finish)"
    root = ET.parse(path).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    n = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    passed = n["tests"] - n["failures"] - n["errors"] - n["skipped"]
    text = f"{passed} passed, {n['failures']} failed, {n['errors']} errors, {n['skipped']} skipped"
    failed = [f"{case.get('classname')}::{case.get('name')}" for case in suite.iter("testcase")
              if case.find("failure") is not None or case.find("error") is not None]
    return text + "".join(f"\n    - {name}" for name in failed[:30])


def sanitizer_summary(out: Path) -> str:
    path = out / "sanitizer.log"
    if not path.is_file():
        return "not run"
    text = path.read_text(errors="replace")
    summary = re.findall(r"ERROR SUMMARY: .*", text)
    calls = re.findall(r"gpu_sanitize: (\d+) calls ok", text)
    return (summary[-1] if summary else "no error summary") + (f"; driver: {calls[-1]} calls ok" if calls else "")


def bench_failures(out: Path) -> list[str]:
    """The bench's failures in gpu-check.log: cases that failed and rows dropped from a case, as printed when
    they happened (so a bench stopped by its time limit still names them) and again at its end."""
    path = out / "gpu-check.log"
    if not path.is_file():
        return []
    found = re.findall(r"fastrec bench: (?:FAILED|dropped) ([^\r\n]+)", path.read_text(errors="replace"))
    return list(dict.fromkeys(found))


def csv_rows(path: Path) -> list[dict]:
    """The rows of a CSV the bench wrote (bench.csv, kernels.csv); none when it is missing."""
    if not path.is_file():
        return []
    with open(path) as f:
        return list(csv.DictReader(f))


def kernel_tables(rows: list[dict]) -> list[str]:
    """One table per (op, shape, implementation profiled): its kernels by device time per call."""
    md = []
    groups = list(dict.fromkeys((r["op"], r["shape"], r["impl"]) for r in rows))
    for op, shape, impl in groups:
        md += ["", f"**{op}** [{shape}] {impl}", "", "| kernel | launches | ms | share |", "|---|---|---|---|"]
        md += [f"| `{r['kernel']}` | {float(r['calls']):g} | {float(r['ms']):.3f} | {100 * float(r['share']):.0f}% |"
               for r in rows if (r["op"], r["shape"], r["impl"]) == (op, shape, impl)]
    return md


def verdict(rows: list[dict], row: dict) -> str:
    if not row["target"]:
        return ""
    return "met" if float(row["peer_ms_over_fastrec_ms"]) >= float(row["target"]) else "missed"


OPTION_NOISE = 0.03  # timing differences under this fraction are not a verdict on a default


def option_verdicts(rows: list[dict]) -> list[tuple[dict, str]]:
    """Each kernel option's row (bench.csv's `option`, set by with_env) with what to do about its case's default:
    the defaults are guesses from offline SASS counts until a GPU run judges them."""
    out = []
    for r in rows:
        if not r.get("option"):
            continue
        ratio = float(r["peer_ms_over_fastrec_ms"])  # option ms / default ms
        if ratio < 1 - OPTION_NOISE:
            what = f"the option is {100 * (1 / ratio - 1):.0f}% faster: make it the default"
        elif ratio > 1 + OPTION_NOISE:
            what = f"the default is {100 * (ratio - 1):.0f}% faster: keep it"
        else:
            what = f"within {100 * OPTION_NOISE:.0f}%: keep the default"
        out.append((r, what))
    return out


def option_table(rows: list[dict]) -> list[str]:
    verdicts = option_verdicts(rows)
    if not verdicts:
        return []
    md = ["", "## Kernel options (each against the default, same run)", "",
          "| op | option | default ms | with the option ms | verdict |", "|---|---|---|---|---|"]
    default = {(r["op"], r["shape"]): float(r["ms"]) for r in rows if r["impl"] == "fastrec"}
    return md + [f"| {r['op']} [{r['shape']}] | `{r['option']}` | {default[r['op'], r['shape']]:.3f} | "
                 f"{float(r['ms']):.3f} | {what} |" for r, what in verdicts]


def main(argv: list[str]) -> int:
    out = Path(argv[1] if len(argv) > 1 else "results/gpu-check")
    env, done, bench = environment(), stages(out), csv_rows(out / "bench.csv")
    ok = bool(done) and all(status in ("ok", "skipped", "not selected") for _, status, _ in done)
    md = ["# make gpu-check", "", "| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in env]
    md += ["", "## Stages", "", "| stage | status | seconds |", "|---|---|---|"]
    md += [f"| {name} | {status} | {secs} |" for name, status, secs in done]
    md += ["", "## pytest -m cuda", "", pytest_counts(out), "", "## compute-sanitizer memcheck", "",
           sanitizer_summary(out), "", "## Benchmark (`fastrec bench --device cuda --quick`)", "",
           "Medians of CUDA-event timings, all implementations in the same run; ratio = peer ms / fastrec ms "
           "(above 1: fastrec is faster); target = the ratio asked of fastrec; first call s = the wall time of "
           "its first call (compiles, autotuning and one run; fastrec's row in a case that checks its result before "
           "timing compiled there, so the log's time for the case holds those).", ""]
    if bench:
        md += ["| op | shape | impl | ms | ratio | target | extra MB | first call s |",
               "|---|---|---|---|---|---|---|---|"]
        for r in bench:
            ratio = "-" if r["impl"] == "fastrec" else f"{float(r['peer_ms_over_fastrec_ms']):.2f}x"
            if "bound" in r["impl"]:  # a copy of the same bytes: the ratio is the fraction of its bandwidth
                ratio += f" ({100 * float(r['peer_ms_over_fastrec_ms']):.0f}% of its bandwidth)"
            target = f"{float(r['target']):g}x {verdict(bench, r)}" if r["target"] else ""
            first = f"{float(r['first_call_s']):.1f}" if r.get("first_call_s") else "-"
            md.append(f"| {r['op']} | {r['shape']} | {r['impl']} | {float(r['ms']):.3f} | {ratio} | {target} | "
                      f"{float(r['peak_extra_mb']):.1f} | {first} |")
    else:
        md.append("no bench.csv (the benchmark did not run or failed before its first case)")
    md += option_table(bench)
    failures = bench_failures(out)
    if failures:
        md += ["", "Failed in the bench (a case, or one row of a case; the other rows kept their figures):", ""]
        md += [f"- {line}" for line in failures]
    kernels = csv_rows(out / "kernels.csv")
    if kernels:
        md += ["", "## Where the time goes (torch.profiler, per call: each fastrec implementation, and each peer "
               "that beat fastrec)"]
        md += kernel_tables(kernels)
    md += ["", f"Verdict: {'all stages passed' if ok else 'FAILED'}; full log: gpu-check.log", ""]
    (out / "gpu-check.md").write_text("\n".join(md))

    # the short table, printed last
    print("\n" + "=" * 100)
    print("gpu-check summary  " + "  ".join(f"{k}: {v}" for k, v in env if k in ("GPU", "torch", "date (UTC)")))
    for name, status, secs in done:
        print(f"  {name:<10} {status:<22} {secs:>5} s")
    print(f"  tests      {pytest_counts(out).splitlines()[0]}")
    print(f"  memcheck   {sanitizer_summary(out)}")
    for r in bench:
        if r["impl"] == "fastrec":
            print(f"  {r['op'][:30]:<30} {r['shape'][:44]:<44} fastrec {float(r['ms']):9.3f} ms")
        else:
            target = f"(target {float(r['target']):g}x: {verdict(bench, r)})" if r["target"] else ""
            ratio = float(r["peer_ms_over_fastrec_ms"])
            share = f" = {100 * ratio:.0f}% of its bandwidth" if "bound" in r["impl"] else ""
            print(f"      vs {r['impl'][:36]:<36} {float(r['peer_ms_over_fastrec_ms']):7.2f}x{share} {target}")
    for r, what in option_verdicts(bench):
        print(f"  option {r['option']:<36} {r['op'][:30]:<30} {what}")
    print(f"gpu-check: {'all stages passed' if ok else 'FAILED'} -> {out / 'gpu-check.md'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
