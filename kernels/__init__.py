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


def env_choice(name: str, choices: tuple[str, ...]) -> str:
    """Environment variable `name`: one of `choices`, the first when unset; anything else is a ValueError
    naming the variable (a kernel option mistyped must not fall back silently)."""
    value = os.environ.get(name, choices[0])
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value


__all__ = ["HAS_TRITON", "device_guard", "env_choice"]
