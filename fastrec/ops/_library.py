"""The one place that knows which backends exist: loads fastrec._C, fills in what it lacks.

Schemas are declared in C++ (csrc/fastrec.cpp). When the extension is missing, the same schemas are
declared here and every op runs on its plain-PyTorch reference. On CUDA devices, the compiled CUDA kernel
is used when built; otherwise the Triton kernel; otherwise the reference.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable

import torch

try:
    from fastrec import _C  # noqa: F401  (loading it registers the C++ schemas and kernels)

    HAS_C = True
    _C_ERROR = None
except ImportError as exc:  # pragma: no cover - exercised in the no-extension CI job only
    HAS_C = False
    _C_ERROR = exc
    warnings.warn(
        f"fastrec._C is not built ({exc}); fastrec ops run on their plain-PyTorch references. "
        "Build it with `pip install -e . --no-build-isolation`.",
        RuntimeWarning,
        stacklevel=2,
    )

try:
    import triton  # noqa: F401

    HAS_TRITON = True
except ImportError:  # pragma: no cover
    HAS_TRITON = False

LIB = torch.library.Library("fastrec", "FRAGMENT")

# Mirror of csrc/fastrec.cpp, used only when the extension is missing (a test checks they agree).
SCHEMAS: dict[str, str] = {}
_CUDA_BACKEND: dict[str, str] = {}


def _has_kernel(name: str, key: str) -> bool:
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"fastrec::{name}", key)


def define(name: str, schema: str, reference: Callable, triton_impl: Callable | None = None) -> None:
    """Make `torch.ops.fastrec.<name>` exist with a kernel for every device.

    `schema` is the text after the op name, as in csrc/fastrec.cpp.
    """
    SCHEMAS[name] = f"{name}{schema}"
    if not HAS_C:
        LIB.define(SCHEMAS[name])
        LIB.impl(name, reference, "CPU")
    if _has_kernel(name, "CUDA"):
        _CUDA_BACKEND[name] = "cuda-c++"
    elif triton_impl is not None and HAS_TRITON and os.environ.get("FASTREC_NO_TRITON") != "1":
        LIB.impl(name, triton_impl, "CUDA")
        _CUDA_BACKEND[name] = "triton"
    else:
        LIB.impl(name, reference, "CUDA")
        _CUDA_BACKEND[name] = "reference"


def cpu_is_compiled(name: str) -> bool:
    """True when the op's CPU kernel is the C++ one (which checks values itself, inside its pass)."""
    return HAS_C


def backends() -> dict[str, object]:
    """What runs each op: {'extension': ..., 'cpu': {op: backend}, 'cuda': {op: backend}, ...}."""
    cuda_built = bool(torch.ops.fastrec._built_with_cuda()) if HAS_C else False
    return {
        "extension": "fastrec._C" if HAS_C else f"missing ({_C_ERROR})",
        "extension_cuda_kernels": cuda_built,
        "cpu": {name: ("c++/openmp" if HAS_C and _has_kernel(name, "CPU") else "reference") for name in SCHEMAS},
        "cuda": dict(_CUDA_BACKEND),
        "cuda_device_visible": torch.cuda.is_available(),
        "triton": HAS_TRITON,
        "triton_interpret": os.environ.get("TRITON_INTERPRET") == "1",
        "cpu_threads": torch.get_num_threads(),
        # nearest_code / residual_encode on the AMX tile unit (bf16 dots, exact fp32 re-rank); FASTREC_CPU_AMX=0
        # turns it off
        "cpu_amx": bool(torch.ops.fastrec._cpu_amx()) if HAS_C else False,
    }
