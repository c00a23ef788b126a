"""fastrec: fused kernels and end-to-end recipes for LLM-based recommendation.

`import fastrec` always works: without the compiled extension or a GPU, every op runs on its
plain-PyTorch reference (with one warning), and :func:`backends` says what is active.
"""

from __future__ import annotations

import importlib
from typing import Any

from fastrec import ops
from fastrec.ops import backends

__version__ = "0.1.0"
__all__ = ["ops", "backends", "__version__"]

_LAZY = {"nn", "data", "eval", "integrations", "recipes", "reference", "kernels", "bench"}


def __getattr__(name: str) -> Any:  # submodules load on first use, so `import fastrec` stays light
    if name in _LAZY:
        return importlib.import_module(f"fastrec.{name}")
    raise AttributeError(f"module 'fastrec' has no attribute {name!r}")
