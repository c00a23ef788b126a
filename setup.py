"""Build fastrec._C: CPU kernels always, CUDA kernels when a toolkit is found.

Environment switches:
  FASTREC_SKIP_CUDA=1   never build the CUDA kernels
  FASTREC_CUDA=1        require the CUDA build (fail loudly without a toolkit)
  FASTREC_PORTABLE=1    no -march=native (a wheel for other x86-64 machines)
  FASTREC_NO_NINJA=1    build without ninja (what happens where ninja is missing; sources still compile in parallel)
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


class _BuildExtension(cpp_extension.BuildExtension):
    """torch's BuildExtension; without ninja (a bare GPU machine may lack it) setuptools would compile one
    source at a time, so the C++ sources compile in parallel (MAX_JOBS, default all cores) and the few
    CUDA ones after them, one by one (torch swaps the compiler executable per CUDA file: not thread-safe)."""

    def build_extensions(self):
        if not self.use_ninja:
            self._compile_cpp_in_parallel()
        super().build_extensions()

    def _compile_cpp_in_parallel(self):
        from concurrent.futures import ThreadPoolExecutor

        compiler = self.compiler
        jobs = int(os.environ.get("MAX_JOBS") or os.cpu_count() or 1)

        def compile(sources, output_dir=None, macros=None, include_dirs=None, debug=0, extra_preargs=None,
                    extra_postargs=None, depends=None):
            macros, objects, extra_postargs, pp_opts, build = compiler._setup_compile(
                output_dir, macros, include_dirs, sources, depends, extra_postargs)
            cc_args = compiler._get_cc_args(pp_opts, debug, extra_preargs)
            todo = [obj for obj in objects if obj in build]

            def one(obj):
                src, ext = build[obj]
                compiler._compile(obj, src, ext, cc_args, extra_postargs, pp_opts)

            with ThreadPoolExecutor(jobs) as pool:
                list(pool.map(one, [o for o in todo if not build[o][0].endswith(".cu")]))
            for obj in todo:
                if build[obj][0].endswith(".cu"):
                    one(obj)
            return objects

        compiler.compile = compile


setup(
    ext_modules=[_extension()],
    cmdclass={"build_ext": _BuildExtension.with_options(use_ninja=os.environ.get("FASTREC_NO_NINJA") != "1")},
)
