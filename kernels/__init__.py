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
import warnings
from concurrent.futures import ThreadPoolExecutor

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


def bf16x3_planes(x: torch.Tensor) -> torch.Tensor:
    """[3, *x.shape] bf16 planes hi, mid, lo of an fp32 tensor: hi = x rounded to bf16, mid the rest rounded, lo
    what is left (every subtraction exact in fp32). Their sum is x exactly: x has 24 significant bits, each plane
    takes 8 (the rest after hi has at most 16, after mid at most 8), except where |x| < 2^-110 and lo's bits fall
    below bf16's smallest subnormal (an error <= 2^-134 then). A bf16 value times a plane is exact in fp32, so
    three native bf16 tensor-core dots against the planes ("bf16x3") compute a bf16 x fp32 GEMM with exact
    products, only the fp32 accumulation rounding, at twice tf32's rate and with the bf16 operand never
    converted. A non-finite x (or one past bf16's largest, 3.39e38) gives NaN planes."""
    planes = torch.empty(3, *x.shape, dtype=torch.bfloat16, device=x.device)
    planes[0].copy_(x)  # copy_ rounds to nearest even
    rest = x - planes[0]
    planes[1].copy_(rest)
    planes[2].copy_(rest - planes[1])
    return planes


def env_choice(name: str, choices: tuple[str, ...]) -> str:
    """Environment variable `name`: one of `choices`, the first when unset; anything else is a ValueError
    naming the variable (a kernel option mistyped must not fall back silently)."""
    value = os.environ.get(name, choices[0])
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value


# tuning keys whose configs were compiled by `launch_autotuned` (once per key and process)
_COMPILED: set[tuple] = set()


def launch_autotuned(tuned, grid, *args, **kwargs) -> None:
    """``tuned[grid](*args, **kwargs)`` for a ``triton.autotune``d kernel. The first launch of a tuning key on a
    GPU compiles every config autotune will time at once, in threads (Triton's AsyncCompileMode; its compiler
    releases the GIL), instead of one by one inside autotune's timing loop (1-5 s a config, 3-7 configs a key;
    offline in 2 threads, the encode kernel's 7 configs took about 9 s against 16 s: docs/gpu.md).
    FASTREC_PARALLEL_COMPILE=0 turns this off."""
    if env_choice("FASTREC_PARALLEL_COMPILE", ("1", "0")) == "1" and not interpret():
        compile_configs(tuned, grid, args, kwargs)
    tuned[grid](*args, **kwargs)


def tuning_key(tuned, args: tuple, kwargs: dict) -> tuple:
    """The key autotune caches its choice under: the values of its `key` arguments and every tensor's dtype
    (as triton.runtime.Autotuner.run builds it), with the kernel's identity."""
    named = dict(zip(tuned.arg_names, args, strict=False))  # args: the leading arguments, kwargs the rest
    named |= {k: v for k, v in kwargs.items() if k in tuned.arg_names}
    return (id(tuned), *(named[k] for k in tuned.keys if k in named),
            *(str(v.dtype) for v in named.values() if hasattr(v, "dtype")))


def compile_configs(tuned, grid, args: tuple, kwargs: dict, workers: int | None = None) -> None:
    """Compiles, in parallel, the configs autotune keeps (after its pruning) for this launch's key, into the
    kernel's own cache under the key the launch looks up (``Autotuner.warmup``: the launch's arguments, so the
    same specialization); a key seen before does nothing. A failure here is only a warning: the launch then
    compiles each config itself and reports a config that cannot compile as autotune does."""
    key = tuning_key(tuned, args, kwargs)
    if key in _COMPILED or len(tuned.configs) < 2 or not hasattr(triton, "AsyncCompileMode"):  # Triton >= 3.4
        return
    _COMPILED.add(key)
    workers = workers or min(len(tuned.configs), os.cpu_count() or 1)
    if workers < 2:
        return
    try:
        with ThreadPoolExecutor(workers) as pool, triton.AsyncCompileMode(pool, ignore_errors=True):
            tuned.warmup(*args, grid=grid, **kwargs)
    except Exception as exc:  # noqa: BLE001 (a speed-up only: the launch compiles on its own)
        name = getattr(tuned.fn, "__name__", tuned.fn)
        warnings.warn(f"fastrec: compiling {name}'s autotune configs in parallel failed ({type(exc).__name__}: "
                      f"{exc}); they compile one by one", stacklevel=3)


__all__ = ["HAS_TRITON", "HALF_DTYPES", "bf16x3_planes", "compile_configs", "device_guard", "dot_scheme", "env_choice",
           "interpret", "launch_autotuned"]
