"""fastrec: fused kernels and end-to-end recipes for LLM-based recommendation.

`import fastrec` always works: without the compiled extension or a GPU, every op runs on its
plain-PyTorch reference (with one warning), and :func:`backends` says what is active.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Any


def _kernels_from_checkout() -> None:
    """Make the top-level kernels/ folder importable as fastrec.kernels when running from a source checkout.

    An install maps it through package-dir (pyproject.toml); a checkout built in place (`python setup.py
    build_ext --inplace`, as `make gpu-check` does) has no such mapping, so the folder beside this package
    is registered under the same name. An installed or editable fastrec.kernels always wins.
    """
    if "fastrec.kernels" in sys.modules or importlib.util.find_spec("fastrec.kernels") is not None:
        return
    init = Path(__file__).resolve().parent.parent / "kernels" / "__init__.py"
    if not init.is_file():
        return
    spec = importlib.util.spec_from_file_location("fastrec.kernels", init,
                                                  submodule_search_locations=[str(init.parent)])
    module = importlib.util.module_from_spec(spec)
    sys.modules["fastrec.kernels"] = module
    try:
        spec.loader.exec_module(module)
    except Exception:  # pragma: no cover - e.g. a broken triton: ops fall back as without kernels
        del sys.modules["fastrec.kernels"]
        return
    globals()["kernels"] = module


_kernels_from_checkout()

from fastrec import ops  # noqa: E402
from fastrec.ops import backends  # noqa: E402

__version__ = "0.1.0"
__all__ = ["ops", "backends", "__version__"]

_LAZY = {"nn", "data", "eval", "integrations", "recipes", "reference", "kernels", "bench"}


def __getattr__(name: str) -> Any:  # submodules load on first use, so `import fastrec` stays light
    if name in _LAZY:
        return importlib.import_module(f"fastrec.{name}")
    raise AttributeError(f"module 'fastrec' has no attribute {name!r}")
