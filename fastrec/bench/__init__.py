"""Benchmarks of every op family, shared by `fastrec bench` and benchmarks/ (pytest-benchmark)."""

from __future__ import annotations

import importlib

import torch

from fastrec.bench.core import (
    Case,
    KernelRow,
    Row,
    format_table,
    markdown,
    plot,
    read_csv,
    run_case,
    write_csv,
    write_kernels_csv,
)

# One module per op family, each exposing `cases(quick: bool) -> list[Case]`.
FAMILIES = ["quantize", "graph", "collab", "fusion", "lcrec", "embedding_optim"]


def all_cases(quick: bool = False, families: list[str] | None = None, device: str = "cpu") -> list[Case]:
    """The cases of `families` (all by default); on a CUDA device the GPU cases of fastrec.bench.gpu."""
    if torch.device(device).type == "cuda":
        from fastrec.bench import gpu

        return gpu.cases(device, quick, families)
    out = []
    for family in families or FAMILIES:
        if family not in FAMILIES:
            raise ValueError(f"unknown benchmark family {family!r}; choose from {FAMILIES}")
        module = importlib.import_module(f"fastrec.bench.{family}")
        out += [c for c in module.cases(quick) if c.quick or not quick]
    return out


__all__ = ["Case", "KernelRow", "Row", "FAMILIES", "all_cases", "format_table", "markdown", "plot", "read_csv",
           "run_case", "write_csv", "write_kernels_csv"]
