"""Test setup.

Without a GPU, TRITON_INTERPRET=1 makes the Triton kernels run on the CPU (it must be set before triton
defines a kernel); with a GPU they run for real, in their GPU block sizes. `device` parametrises a test
over every available device: CPU always, CUDA when present (those cases carry the `cuda` marker, so
`pytest -m cuda` selects them, and they skip cleanly on a machine without a GPU).
"""

import contextlib
import os

import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def _interpreter_scalars_index() -> None:
    """Triton 3.6 interprets a scalar as a 1-element array and indexes it with int(array), which numpy >= 2.4
    refuses ("only 0-dimensional arrays..."), so `range(n)` over a kernel argument fails under
    TRITON_INTERPRET=1 (triton 3.6 is torch 2.11's). Triton 3.8 squeezes first; do the same where it does not.
    Test harness only: compiled kernels never take this path."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        return
    try:
        import inspect

        from triton.runtime import interpreter
    except ImportError:
        return
    patch = getattr(interpreter, "_patch_lang_tensor", None)
    if patch is None or "squeeze" in inspect.getsource(patch):
        return

    def patched(tensor, scope):
        patch(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.squeeze()))

    interpreter._patch_lang_tensor = patched


_interpreter_scalars_index()

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

DEVICES = [
    pytest.param("cpu", id="cpu"),
    pytest.param("cuda", id="cuda", marks=[pytest.mark.cuda,
                                          pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")]),
]


@pytest.fixture(params=DEVICES)
def device(request) -> torch.device:
    """Each available device in turn: 'cpu', then 'cuda' (marked `cuda`, skipped without a GPU)."""
    return torch.device(request.param)


@pytest.fixture
def on_device(device):
    """`device`, also torch's default device while the test runs, so every factory call (randn, tensor,
    arange, ...) lands there and one test body serves every device. Generators must be made on it too."""
    if device.type != "cpu":
        torch.set_default_device(device)
    try:
        yield device
    finally:
        torch.set_default_device(None)


@pytest.fixture
def cuda_device() -> torch.device:
    """A CUDA device, or a clean skip. Tests that only make sense on a GPU also carry @pytest.mark.cuda."""
    if not HAS_CUDA:
        pytest.skip("no CUDA device")
    return torch.device("cuda")

SHARED_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture
def shared_data() -> Path:
    """../shared/data, or a clean skip where it is absent (CI machines may not have it)."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present on this machine")
    return SHARED_DATA.resolve()


# ops that synchronise the host on CUDA (a data-dependent shape or a read of a device value)
SYNC_OPS = ("nonzero", "_local_scalar_dense", "unique", "_unique", "_unique2", "unique_consecutive", "unique_dim",
            "masked_select", "bincount", "item", "is_nonzero", "equal")


class NoSyncOps(TorchDispatchMode):
    """Fails on any aten op that would sync the host on CUDA, or a boolean-mask index (a nonzero on CUDA)."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func._schema.name
        if name.startswith("aten::"):
            base = name[len("aten::"):]
            assert base not in SYNC_OPS, f"{name} syncs the host on CUDA"
            if base == "repeat_interleave":
                assert (kwargs or {}).get("output_size") is not None, "repeat_interleave without output_size syncs"
            if base in ("index", "index_put", "index_put_"):
                idx = args[1]
                assert not any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in idx), \
                    f"{name} with a boolean mask syncs"
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def _cuda_syncs_raise():
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.fixture
def cuda_syncs_raise():
    """A context manager under which any host sync on CUDA raises (torch.cuda.set_sync_debug_mode("error")),
    restored to "default" on the way out: how the cuda-marked tests prove a path never syncs."""
    return _cuda_syncs_raise


@pytest.fixture
def no_sync_ops():
    """A context manager that fails on any op that would sync the host on CUDA: the CPU-side check of the
    zero-sync paths (the cuda-marked tests run them under torch.cuda.set_sync_debug_mode("error"))."""
    return NoSyncOps


# Triton kernels called directly: on CUDA tensors (marked `cuda`), or on CPU ones under the interpreter.
TRITON_DEVICES = [
    pytest.param("cpu", id="cpu", marks=pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1",
                                                           reason="Triton on the CPU needs TRITON_INTERPRET=1")),
    pytest.param("cuda", id="cuda", marks=[pytest.mark.cuda,
                                          pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")]),
]


@pytest.fixture(params=TRITON_DEVICES)
def triton_device(request) -> torch.device:
    """Where a Triton kernel called directly runs: the CPU under TRITON_INTERPRET=1, or a CUDA device."""
    return torch.device(request.param)
