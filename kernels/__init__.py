"""Triton kernels of fastrec (shipped as ``fastrec.kernels``).

They run on CUDA devices, and on the CPU under ``TRITON_INTERPRET=1`` (set before this is imported),
which is how the test suite checks them on a machine without a GPU.
"""

try:
    import triton  # noqa: F401

    HAS_TRITON = True
except ImportError:  # pragma: no cover
    HAS_TRITON = False

__all__ = ["HAS_TRITON"]
