"""Build of densecorr (the project metadata is in pyproject.toml).

Two kinds of build, chosen by whether torch is importable *while building*:
  - not importable (pip's default isolated build: `pip install .`, `pip install git+...`,
    `python -m build`): a pure-Python wheel that carries the C++/CUDA sources as
    densecorr/_csrc; densecorr compiles them once, at first use, against the torch
    installed next to it (densecorr/_ext.py). No torch is ever downloaded for the build.
  - importable (`pip install --no-build-isolation .`, `python -m build --no-isolation`,
    ./run.sh): the extension densecorr._C is compiled here, against that torch, with the
    LibTorch stable ABI where the sources use it, and recorded in densecorr/_C_build.json.
    CUDA sources are compiled wherever nvcc and a CUDA build of torch are both present
    (GPU or not); see densecorr/_buildcfg.py for the rules and knobs.
Environment:
  DENSECORR_NO_EXTENSION=1   never compile here (pure-Python wheel, even with torch)
  DENSECORR_DEBUG=1          keep symbols in the .so (stripped by default)
"""
import glob
import importlib.util
import json
import os
import shutil

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

ROOT = os.path.dirname(os.path.abspath(__file__))
CSRC = os.path.join(ROOT, "csrc")


def _load_buildcfg():
    spec = importlib.util.spec_from_file_location("_densecorr_buildcfg", os.path.join(ROOT, "densecorr", "_buildcfg.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


cfg = _load_buildcfg()


class BuildPyWithSources(build_py):
    """Also copy csrc/ (sources and headers) into the package as densecorr/_csrc."""

    def run(self):
        super().run()
        if self.editable_mode:  # an editable install reads ../csrc directly
            return
        dest = os.path.join(self.build_lib, "densecorr", "_csrc")
        shutil.rmtree(dest, ignore_errors=True)
        for path in cfg.source_files(CSRC):
            target = os.path.join(dest, os.path.relpath(path, CSRC))
            os.makedirs(os.path.dirname(target), exist_ok=True)
            shutil.copy2(path, target)


def _packages():
    pkgs = find_packages(ROOT, include=["densecorr", "densecorr.*"])
    models = ["densecorr.models"] + ["densecorr.models." + p for p in find_packages(os.path.join(ROOT, "models"))]
    return pkgs + models


def _extension():
    """(ext_modules, cmdclass) for an ahead-of-time build, or ([], {}) for a pure-Python wheel."""
    if os.environ.get("DENSECORR_NO_EXTENSION") == "1":
        return [], {}
    if importlib.util.find_spec("torch") is None:
        print("densecorr: torch is not importable in this build environment: building the pure-Python wheel; "
              "the C++ kernels compile at first use against the installed torch")
        return [], {}
    import torch

    with_cuda, cuda_home, why = cfg.cuda_plan(torch.version.cuda)
    if with_cuda:
        cfg.prepare_cuda_env(cuda_home)
    from torch.utils import cpp_extension

    if with_cuda:
        cpp_extension.CUDA_HOME = cuda_home  # torch guessed it from the nvcc on PATH at import
    print(f"densecorr: compiling the C++ extension against torch {torch.__version__} "
          f"({'with CUDA: ' + why + ', archs ' + os.environ['TORCH_CUDA_ARCH_LIST'] if with_cuda else 'CPU only: ' + why})")
    debug = os.environ.get("DENSECORR_DEBUG") == "1"
    rel = lambda paths: [os.path.relpath(p, ROOT) for p in paths]  # noqa: E731
    kwargs = dict(
        name="densecorr._C",
        include_dirs=[CSRC],
        extra_link_args=cfg.link_flags(debug),
        py_limited_api=cfg.STABLE_ABI,
    )
    macros = [("Py_LIMITED_API", "0x030A0000")] if cfg.STABLE_ABI else []
    if with_cuda:
        ext = cpp_extension.CUDAExtension(
            sources=rel(cfg.cpp_sources(CSRC) + cfg.cuda_sources(CSRC)),
            define_macros=macros + [("WITH_CUDA", None)],
            extra_compile_args={"cxx": cfg.cxx_flags(), "nvcc": cfg.nvcc_flags()},
            **kwargs,
        )
    else:
        ext = cpp_extension.CppExtension(
            sources=rel(cfg.cpp_sources(CSRC)), define_macros=macros, extra_compile_args={"cxx": cfg.cxx_flags()},
            **kwargs,
        )
    base = cpp_extension.BuildExtension.with_options(use_ninja=True)

    class BuildExt(base):
        """Also record what the extension was built against, next to it (densecorr/_C_build.json)."""

        def run(self):
            super().run()
            meta = cfg.build_record(torch.__version__, torch.version.cuda if with_cuda else None,
                                    os.environ.get("TORCH_CUDA_ARCH_LIST") if with_cuda else None,
                                    cfg.source_hash(CSRC))
            built = self.get_ext_fullpath("densecorr._C")
            out_dir = os.path.dirname(built)
            with open(os.path.join(out_dir, "_C_build.json"), "w") as f:
                json.dump(meta, f, indent=1)
            # An in-place build next to an older one (e.g. _C.cpython-311-*.so from before the
            # abi3 build): Python would import the older one first.
            for stale in glob.glob(os.path.join(out_dir, "_C.*.so")):
                if os.path.abspath(stale) != os.path.abspath(built):
                    print(f"densecorr: removing the stale {os.path.relpath(stale)}")
                    os.remove(stale)

    return [ext], {"build_ext": BuildExt}


ext_modules, cmdclass = _extension()
options = {"bdist_wheel": {"py_limited_api": "cp310"}} if ext_modules and cfg.STABLE_ABI else {}
setup(
    packages=_packages(),
    package_dir={"densecorr.models": "models"},
    ext_modules=ext_modules,
    cmdclass={"build_py": BuildPyWithSources, **cmdclass},
    options=options,
)
