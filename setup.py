"""Build of the densecorr._C extension (authoritative for the Python build).

A CUDAExtension is built where nvcc and a CUDA build of torch are both present, a
CppExtension otherwise. Environment knobs:
  DENSECORR_NO_EXTENSION=1   install the pure-Python package only (reference backend)
  DENSECORR_FORCE_CUDA=1     build the CUDA sources even without a visible GPU
  DENSECORR_CXX_FLAGS="..."  extra host compiler flags (e.g. "-march=native")
"""
import glob
import os
import shutil

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _sources(pattern):
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))


def _extensions():
    if os.environ.get("DENSECORR_NO_EXTENSION") == "1":
        return [], {}
    import torch
    from torch.utils import cpp_extension

    cxx = ["-O3", "-std=c++20", "-fopenmp", "-Wno-psabi"] + os.environ.get("DENSECORR_CXX_FLAGS", "").split()
    sources = _sources("csrc/*.cpp") + _sources("csrc/cpu/*.cpp")
    cuda_sources = _sources("csrc/cuda/*.cu") + _sources("csrc/cuda/*.cpp")
    with_cuda = torch.version.cuda is not None and shutil.which("nvcc") is not None and (
        torch.cuda.is_available() or os.environ.get("DENSECORR_FORCE_CUDA") == "1"
    )
    kwargs = dict(
        name="densecorr._C",
        include_dirs=[os.path.join(ROOT, "csrc")],
        extra_link_args=["-fopenmp"],
    )
    if with_cuda:
        ext = cpp_extension.CUDAExtension(
            sources=sources + cuda_sources,
            define_macros=[("WITH_CUDA", None)],
            extra_compile_args={"cxx": cxx, "nvcc": ["-O3", "-std=c++20", "--use_fast_math"]},
            **kwargs,
        )
    else:
        ext = cpp_extension.CppExtension(sources=sources, extra_compile_args={"cxx": cxx}, **kwargs)
    cmdclass = {"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)}
    return [ext], cmdclass


ext_modules, cmdclass = _extensions()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
