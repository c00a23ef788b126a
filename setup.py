"""Build fastrec._C: CPU kernels always, CUDA kernels when a toolkit is found.

Environment switches:
  FASTREC_SKIP_CUDA=1   never build the CUDA kernels
  FASTREC_CUDA=1        require the CUDA build (fail loudly without a toolkit)
  FASTREC_PORTABLE=1    no -march=native (a wheel for other x86-64 machines)
"""

import glob
import os
import sys

# torch guesses CUDA_HOME from `which nvcc` and gets it wrong here; the toolkit is the standard one.
if "CUDA_HOME" not in os.environ and os.path.isdir("/usr/local/cuda"):
    os.environ["CUDA_HOME"] = "/usr/local/cuda"

from setuptools import setup  # noqa: E402
from torch.utils import cpp_extension  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def _want_cuda() -> bool:
    if os.environ.get("FASTREC_SKIP_CUDA") == "1":
        return False
    if os.environ.get("FASTREC_CUDA") == "1":
        if cpp_extension.CUDA_HOME is None:
            sys.exit("FASTREC_CUDA=1 but no CUDA toolkit was found (set CUDA_HOME)")
        return True
    return cpp_extension.CUDA_HOME is not None


def _cuda_include_dirs() -> list[str]:
    """cusparse.h and friends live in the nvidia wheels, not in the toolkit torch was built with."""
    dirs = []
    try:
        import nvidia

        for base in nvidia.__path__:
            cand = os.path.join(base, "cu13", "include")
            if os.path.isdir(cand):
                dirs.append(cand)
    except ImportError:
        pass
    return dirs


def _extension():
    sources = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/cpu/*.cpp"))
    cxx = ["-O3", "-fopenmp", "-Wall", "-Wno-unknown-pragmas"]
    if os.environ.get("FASTREC_PORTABLE") != "1":
        cxx.append("-march=native")
    kwargs = dict(
        name="fastrec._C",
        sources=sources,
        include_dirs=[os.path.join(HERE, "csrc")],
        extra_link_args=["-fopenmp"],
        py_limited_api=False,
    )
    if not _want_cuda():
        return cpp_extension.CppExtension(extra_compile_args={"cxx": cxx}, **kwargs)
    import torch

    if not torch.cuda.is_available() and not os.environ.get("TORCH_CUDA_ARCH_LIST"):
        os.environ["TORCH_CUDA_ARCH_LIST"] = "8.0;9.0"
    kwargs["sources"] = sources + sorted(glob.glob("csrc/cuda/*.cu"))
    kwargs["include_dirs"] += _cuda_include_dirs()
    nvcc = ["-O3", "--expt-relaxed-constexpr", "-lineinfo"]
    return cpp_extension.CUDAExtension(
        extra_compile_args={"cxx": cxx + ["-DFASTREC_WITH_CUDA"], "nvcc": nvcc + ["-DFASTREC_WITH_CUDA"]},
        **kwargs,
    )


setup(
    ext_modules=[_extension()],
    cmdclass={"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)},
)
