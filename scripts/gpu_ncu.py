"""Stage `ncu` of `make gpu-check` (in the time its other stages leave): the hardware counters of fastrec's own
kernels in the benchmark's cases, for the work that follows a GPU run without a GPU (why a kernel misses its
target: occupancy, stall reasons, L2 hit rate, DRAM and tensor-pipe throughput).

    ncu --nvtx --nvtx-include "fastrec/" ... python3 scripts/gpu_ncu.py [--ops residual_encode,topk_scores]

For each chosen case of `fastrec bench --device cuda --quick` it builds the inputs, calls fastrec's default
implementation twice (Triton compiles and autotunes there, outside the profile), then once more inside the
NVTX range "fastrec", the only range ncu profiles. Then, in the same way, the other fastrec implementations (the
kernel options and earlier designs the bench times beside the default), case by case: ncu stops after
GPU_CHECK_NCU_KERNELS kernels, which the defaults of every case should get first. No new case starts after
--budget-s seconds (ncu's replays count: the program waits while a kernel is replayed). --device cpu --tiny
walks the same flow at toy sizes without NVTX (the tests do; it measures nothing).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import sys
import time

import torch

# The cases whose targets the first H200 run missed, each with the fastrec variants worth comparing
DEFAULT_OPS = "residual_encode,topk_scores,lightgcn_propagate fwd,splice_collab_tokens fwd,semantic_fusion fwd+bwd"


def profiled_range(device: str):
    """The NVTX range ncu is told to profile (nothing on the CPU)."""
    if device != "cuda":
        return contextlib.nullcontext()
    return torch.cuda.nvtx.range("fastrec")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", default=DEFAULT_OPS, help="comma-separated bench case ops (exact names)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="toy sizes (a dry run)")
    parser.add_argument("--budget-s", type=float, default=150.0, help="no new case starts after this")
    args = parser.parse_args(argv)
    from fastrec.bench import gpu

    wanted = [op.strip() for op in args.ops.split(",") if op.strip()]
    chosen = [c for c in gpu.cases(args.device, quick=True, tiny=args.tiny) if c.op in wanted]
    missing = set(wanted) - {c.op for c in chosen}
    if missing:
        print(f"gpu_ncu: no bench case named {sorted(missing)}", file=sys.stderr)
        return 2
    start = time.monotonic()
    for case, impls in profile_order(chosen):
        if time.monotonic() - start > args.budget_s:
            print(f"gpu_ncu: {case.name} {', '.join(impls)} not profiled (the {args.budget_s:g} s budget was spent)",
                  flush=True)
            continue
        profile_case(case, impls, args.device)
    print(f"gpu_ncu: {len(chosen)} cases ok", flush=True)
    return 0


def profile_order(cases: list) -> list[tuple]:
    """(case, its fastrec implementations to profile): every case's default first, then each case's variants."""
    defaults = [(c, ["fastrec"]) for c in cases]
    variants = [(c, [i for i in c.impls if i.startswith("fastrec, ")]) for c in cases]
    return defaults + [(c, impls) for c, impls in variants if impls]


def profile_case(case, impls: list[str], device: str) -> None:
    """Builds the case's inputs and runs each of `impls` twice (compiles, autotuning), then once in the range."""
    inputs = case.make()
    for impl in impls:
        fn = case.impls[impl]
        for _ in range(2):  # compile and autotune outside the profiled range
            fn(inputs)
        if device == "cuda":
            torch.cuda.synchronize()
        print(f"gpu_ncu: profiling {case.name} / {impl}", flush=True)
        with profiled_range(device):
            fn(inputs)
        if device == "cuda":
            torch.cuda.synchronize()
    inputs = None
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


if __name__ == "__main__":
    sys.exit(main())
