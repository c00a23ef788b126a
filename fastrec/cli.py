"""The `fastrec` command (also `python -m fastrec`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the bench imports torch: only when a command needs it
    from fastrec.bench import Row


def _bench(args: argparse.Namespace) -> int:
    import time

    from tqdm import tqdm

    from fastrec import backends
    from fastrec.bench import all_cases, run_case, write_csv, write_kernels_csv

    if getattr(args, "from_csv", None):
        return _bench_from_csv(Path(args.from_csv), Path(args.out))
    families = args.ops.split(",") if args.ops else None
    device = getattr(args, "device", "cpu")
    budget = getattr(args, "budget_s", 0.0) or float("inf")
    cuda = device.startswith("cuda")
    if cuda:
        import torch

        if not torch.cuda.is_available():
            print("fastrec bench: --device cuda but no CUDA device is visible", file=sys.stderr)
            return 2
    cases = all_cases(quick=args.quick, families=families, device=device)
    info = backends()
    where = f"{torch.cuda.get_device_name(device)}, backends {info['cuda']}" if cuda else f"backends {info['cpu']}"
    print(f"fastrec bench: {len(cases)} cases on {device}; {where}", flush=True)
    rows, failed, skipped = [], [], []
    kernels = [] if getattr(args, "kernels", False) else None
    out = Path(args.out)
    start = time.monotonic()
    with tqdm(cases, desc="bench", unit="case") as bar:
        for case in bar:
            if time.monotonic() - start > budget:
                skipped.append(case.name)
                continue
            case_start = time.monotonic()
            try:
                rows += run_case(case, min_time=0.2 if args.quick else 0.5, progress=bar.set_postfix_str,
                                 rounds=1 if cuda else 3, device=device, kernels=kernels, failures=failed)
            except Exception as exc:  # one case failing must not lose the others' numbers
                failed.append(f"{case.name}: {type(exc).__name__}: {exc}")
                print(f"fastrec bench: FAILED {failed[-1]}", file=sys.stderr, flush=True)
            # a line a case in the log (the bar rewrites itself): where a time-limited GPU run spends its budget
            bar.write(f"fastrec bench: {case.name} took {time.monotonic() - case_start:.1f} s "
                      f"({time.monotonic() - start:.0f} s so far)")
            # the CSVs after every case: a process that dies later (a driver fault, a time limit) keeps them
            write_csv(rows, out / "bench.csv")
            if kernels is not None:
                write_kernels_csv(kernels, out / "kernels.csv")
    write_csv(rows, out / "bench.csv")
    _table_and_chart(rows, out)
    print(f"wrote {out / 'bench.csv'}, {out / 'bench.md'} and {out / 'bench.png'}")
    if kernels is not None:
        write_kernels_csv(kernels, out / "kernels.csv")
        print(f"wrote {out / 'kernels.csv'} (where each fastrec implementation's time goes, kernel by kernel)")
    for name in skipped:
        print(f"fastrec bench: {name} skipped (the --budget-s of {budget:g} s was spent)")
    for line in failed:
        print(f"fastrec bench: FAILED {line}")
    return 1 if failed else 0


def _table_and_chart(rows: list[Row], out: Path) -> None:
    """Prints the table of `rows` and writes it as out/bench.md, and out/bench.png when there are rows."""
    from fastrec.bench import format_table, markdown, plot

    print(format_table(rows))
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.md").write_text(markdown(rows))
    if rows:
        plot(rows, out / "bench.png")


def _bench_from_csv(path: Path, out: Path) -> int:
    """The table, bench.md and bench.png of a bench.csv written elsewhere (a GPU run's), without running."""
    from fastrec.bench import read_csv

    if not path.is_file():
        print(f"fastrec bench: --from-csv {path}: no such file", file=sys.stderr)
        return 2
    rows = read_csv(path)
    if not rows:
        print(f"fastrec bench: --from-csv {path}: no rows", file=sys.stderr)
        return 2
    _table_and_chart(rows, out)
    print(f"wrote {out / 'bench.md'} and {out / 'bench.png'} from {path}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    """The main job of `make demo`: every end-to-end pipeline that exists, then the quick benchmarks."""
    from fastrec.recipes import cf, kirec, lcrec, sellarec

    cf.demo(Path(args.out) / "cf")
    sellarec.demo(str(Path(args.out) / "sellarec"))
    kirec.run_demo(args.out)
    lcrec.demo(args.out)
    return _bench(argparse.Namespace(quick=True, ops="", out=args.out, device="cpu", budget_s=0.0))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastrec", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    bench = sub.add_parser("bench", help="benchmark the ops against their peers (table, CSV, PNG)")
    bench.add_argument("--quick", action="store_true", help="the small shapes only (about a minute)")
    bench.add_argument("--ops", default="", help="comma-separated op families (default: all)")
    bench.add_argument("--out", default="results/bench", help="folder for bench.csv and bench.png")
    bench.add_argument("--device", default="cpu", help="cpu (default) or cuda: the GPU cases against GPU peers, "
                       "timed with CUDA events")
    bench.add_argument("--kernels", action="store_true",
                       help="also profile each fastrec implementation, and each peer faster than fastrec, "
                            "(torch.profiler) into kernels.csv: its kernels' device times (on the CPU: its "
                            "operators' self times)")
    bench.add_argument("--budget-s", type=float, default=0.0,
                       help="stop starting new cases after this many seconds (0: no limit)")
    bench.add_argument("--from-csv", default="", metavar="BENCH_CSV",
                       help="run nothing: table, bench.md and bench.png (in --out) of a bench.csv written "
                            "elsewhere, e.g. by make gpu-check on a GPU machine")
    bench.set_defaults(func=_bench)
    demo = sub.add_parser("demo", help="end-to-end demo on the embedded data set, then quick benchmarks")
    demo.add_argument("--out", default="results/demo", help="folder for everything the demo writes")
    demo.set_defaults(func=_demo)
    from fastrec.recipes import cf, kirec, lcrec, sellarec

    for recipe in (cf, sellarec, kirec, lcrec):
        recipe.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
