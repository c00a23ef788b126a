"""Builds an emulated CUDA kernel library (tests/cuda_emulator/*.cpp) and runs its launches in a forked child.

The child keeps a kernel's fault (an out-of-bounds access hitting a guard page) from killing pytest: it
becomes a test failure that names the fault.
"""

from __future__ import annotations

import ctypes
import os
import pickle
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
EMU = ROOT / "tests" / "cuda_emulator"
CXX = shutil.which(os.environ.get("CXX", "g++")) or shutil.which("c++")


def build(source: str, out_dir: Path) -> ctypes.CDLL:
    """Compiles tests/cuda_emulator/<source> (with csrc on the include path) into a shared library."""
    lib = out_dir / (Path(source).stem + ".so")
    cmd = [CXX, "-O2", "-shared", "-fPIC", "-Wall", "-Wno-unknown-pragmas", f"-I{ROOT / 'csrc'}", f"-I{EMU}",
           str(EMU / source), "-o", str(lib)]
    subprocess.run(cmd, check=True, capture_output=True)
    lib = ctypes.CDLL(str(lib))
    lib.emu_asserts.restype = lib.emu_divergent.restype = ctypes.c_int64
    return lib


def in_child(fn: Callable[[], Any]) -> tuple[int, Any]:
    """fn() in a forked child: (wait status, its result or the repr of what it raised)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.close(r)
        try:
            data, code = pickle.dumps(fn()), 0
        except BaseException as e:  # noqa: BLE001 - reported to the parent
            data, code = pickle.dumps(repr(e)), 3
        with os.fdopen(w, "wb") as f:
            f.write(data)
        os._exit(code)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    _, status = os.waitpid(pid, 0)
    return status, (pickle.loads(data) if data else None)


def emulate(lib: ctypes.CDLL, fn: Callable[..., Any], *args: Any, **kw: Any) -> tuple[Any, int]:
    """fn(lib, *args, **kw) in a forked child; checks that it did not fault and that no warp or block diverged
    at a shuffle or barrier, and returns (its result, the device asserts that failed)."""

    def run():
        lib.emu_reset()
        out = fn(lib, *args, **kw)
        return out, lib.emu_asserts(), lib.emu_divergent()

    status, result = in_child(run)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, f"the kernel faulted ({status}): {result}"
    out, asserts, divergent = result
    assert divergent == 0, "a shuffle or barrier was reached by only some threads"
    return out, asserts
