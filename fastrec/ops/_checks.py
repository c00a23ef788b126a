"""Argument checks shared by every op: each failure names the argument it is about."""

from __future__ import annotations

import torch

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
INDEX_DTYPES = (torch.int32, torch.int64)


def tensor(name: str, value: object, ndim: int | None = None, dtypes: tuple = ()) -> torch.Tensor:
    """Check that `value` is a tensor of rank `ndim` with one of `dtypes`; return it."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if ndim is not None and value.dim() != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {tuple(value.shape)}")
    if dtypes and value.dtype not in dtypes:
        names = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        raise ValueError(f"{name} must have dtype in ({names}), got {str(value.dtype).replace('torch.', '')}")
    return value


def same_device(**tensors: torch.Tensor) -> None:
    devices = {name: t.device for name, t in tensors.items()}
    if len(set(devices.values())) > 1:
        raise ValueError(f"tensors are on different devices: {devices}")


def same_dtype(**tensors: torch.Tensor) -> None:
    dtypes = {name: t.dtype for name, t in tensors.items()}
    if len(set(dtypes.values())) > 1:
        raise ValueError(f"tensors differ in dtype: {dtypes}")


def can_read(value: torch.Tensor) -> bool:
    """Whether a host-side value check may read `value`: not while torch.compile traces, nor while a CUDA
    graph is being captured (a sync there breaks the capture); the kernels bound-check themselves then."""
    if torch.compiler.is_compiling():
        return False
    return not (value.device.type == "cuda" and torch.cuda.is_current_stream_capturing())


def finite(name: str, value: torch.Tensor) -> None:
    """Reject NaN/Inf. A value check needs a host sync, so it is skipped while tracing or capturing."""
    if not can_read(value) or value.numel() == 0:  # numel() may be data-dependent while tracing
        return
    if not bool(torch.isfinite(value).all()):
        raise ValueError(f"{name} contains NaN or Inf")
