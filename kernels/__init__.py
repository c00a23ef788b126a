"""Triton kernels of fastrec (shipped as ``fastrec.kernels``).

They run on CUDA devices, and on the CPU under ``TRITON_INTERPRET=1`` (set before this is imported),
which is how the test suite checks them on a machine without a GPU.

Integer arguments that only bound a mask (row and query counts) are `do_not_specialize`: Triton would
otherwise compile a new variant for every such count that is 1 or a multiple of 16, for no speed (the
test suite on a GPU is mostly compile time).
"""

try:
    import triton  # noqa: F401

    HAS_TRITON = True
except ImportError:  # pragma: no cover
    HAS_TRITON = False

import contextlib
import os

import torch


def device_guard(t: torch.Tensor) -> contextlib.AbstractContextManager:
    """Launch on `t`'s GPU: Triton launches on the current device, which need not be the tensor's (a second
    GPU). On the CPU (the interpreter) there is nothing to guard."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


HALF_DTYPES = (torch.float16, torch.bfloat16)


def interpret() -> bool:
    """Whether Triton runs under its CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def dot_scheme(a: torch.dtype, b: torch.dtype) -> tuple[bool, str]:
    """(upcast, input_precision) of a Triton tl.dot of operands of dtypes a and b on a GPU:

    - both fp16 or both bf16: native tensor-core dots, fp32 accumulation (half products are exact in fp32);
    - one half, one fp32: both upcast, "tf32x3" on tensor cores. A half value is exact in tf32 (at most 11
      significant bits, within fp32's exponent range), so its low part is zero and only the fp32 operand is
      really split: a product's error is <= 2^-22 of it, under the fp32 accumulation's own bound for 4 or more
      terms. IEEE dots would run these on CUDA cores at FMA speed: KIRec's reduction of a bf16 table of LLM
      embeddings by an fp32 Linear is 27 GFLOP forward and again backward in the H200 bench's shape;
    - both fp32: IEEE fp32 dots.
    FASTREC_TF32=1 takes one tf32 dot (about 1e-3 relative) wherever an operand is fp32. The interpreter computes
    in fp32 anyway: (True, "ieee")."""
    if interpret():
        return True, "ieee"
    if a == b and a in HALF_DTYPES:
        return False, "ieee"
    if os.environ.get("FASTREC_TF32") == "1":
        return True, "tf32"
    return True, "tf32x3" if a in HALF_DTYPES or b in HALF_DTYPES else "ieee"


def env_choice(name: str, choices: tuple[str, ...]) -> str:
    """Environment variable `name`: one of `choices`, the first when unset; anything else is a ValueError
    naming the variable (a kernel option mistyped must not fall back silently)."""
    value = os.environ.get(name, choices[0])
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value


__all__ = ["HAS_TRITON", "HALF_DTYPES", "device_guard", "dot_scheme", "env_choice", "interpret"]
