"""The compiled kernels (densecorr._C): found, checked, or compiled at first use.

Where they come from, in order:
  1. densecorr/_C*.so built with the package (setup.py with torch importable at build time:
     ./run.sh, `pip install --no-build-isolation`, a binary wheel). Checked at import
     against the running torch with the record densecorr/_C_build.json: a build the ABI does
     not cover is an ImportError that says what to do, never a silent fallback.
  2. Else (a pure-Python wheel, the default of `pip install .` / git / sdist installs): the
     sources shipped in the package are compiled once, at first use (the first op on a CPU
     tensor, or build_info()), with torch.utils.cpp_extension against the installed torch,
     into a cache directory keyed by torch version, Python version and a hash of the
     sources (DENSECORR_CACHE_DIR, default ~/.cache/densecorr). A message says that it
     compiles, where, and how long it took; later processes load the cached library.
  3. Without a compiler (or if compiling fails): one warning that says how to get the
     kernels, and every op runs through the pure-PyTorch 'reference' backend.
     DENSECORR_BACKEND=cpu (or cuda) turns that into an error (densecorr.backends).

Environment: DENSECORR_DISABLE_EXTENSION=1 (use no compiled kernels, for tests),
DENSECORR_NO_JIT=1 (never compile at first use), DENSECORR_REBUILD=1 (retry a compile
that failed before), DENSECORR_CACHE_DIR, DENSECORR_VERBOSE_BUILD=1 (show the compiler).

Attributes `_C` (the loaded module, or None) and `EXTENSION_ERROR` (why not, or None) are
resolved on first access (module __getattr__), which is what triggers a first-use compile.
"""
from __future__ import annotations

import importlib.util
import json
import os
import sys
import time
import warnings

import torch

from densecorr import _buildcfg

_PKG_DIR = os.path.dirname(os.path.abspath(__file__))
_STATE: dict = {}


class ExtensionMismatchError(ImportError):
    """The installed densecorr._C cannot load under the running torch."""


def _csrc_dir() -> str | None:
    for path in (os.path.join(_PKG_DIR, "_csrc"), os.path.join(os.path.dirname(_PKG_DIR), "csrc")):
        if os.path.isfile(os.path.join(path, "densecorr.cpp")):
            return path
    return None


def cache_root() -> str:
    if os.environ.get("DENSECORR_CACHE_DIR"):
        return os.environ["DENSECORR_CACHE_DIR"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "densecorr")


def _prebuilt_record() -> dict | None:
    path = os.path.join(_PKG_DIR, "_C_build.json")
    if os.path.isfile(path):
        with open(path) as f:
            return json.load(f)
    return None


def _check_prebuilt() -> None:
    """Raise ExtensionMismatchError if the packaged _C was built for a torch it cannot load under."""
    record = _prebuilt_record()
    if record is None:
        return
    why = _buildcfg.compatible(record, torch.__version__)
    if why is not None:
        raise ExtensionMismatchError(
            f"densecorr: the installed C++ extension densecorr._C cannot load here: {why}. {_ADVICE}"
        )


_ADVICE = (
    "Reinstall densecorr against this torch (`pip install --force-reinstall --no-deps densecorr`, or from "
    "source `pip install .`, which compiles the kernels at first use), or set DENSECORR_DISABLE_EXTENSION=1 "
    "to run the (100-300x slower) reference backend on purpose."
)


def _load_prebuilt():
    _check_prebuilt()
    try:
        from densecorr import _C
    except ImportError as exc:  # e.g. a CUDA build beside a CPU-only torch
        raise ExtensionMismatchError(
            f"densecorr: the installed C++ extension densecorr._C cannot be loaded ({exc}). {_ADVICE}"
        ) from exc
    return _C, _prebuilt_record() or {"origin": "package"}


def _jit_dir(csrc: str, with_cuda: bool) -> str:
    flags = " ".join(_buildcfg.cxx_flags() + (_buildcfg.nvcc_flags() if with_cuda else []))
    key = _buildcfg.source_hash(csrc, extra=flags + str(with_cuda) + os.environ.get("TORCH_CUDA_ARCH_LIST", ""))
    tag = f"torch{torch.__version__.replace('+', '_')}-py{sys.version_info[0]}{sys.version_info[1]}-{key}"
    return os.path.join(cache_root(), tag)


def _jit_build(csrc: str):
    """Compile (or load from the cache) the extension from `csrc` against the running torch."""
    with_cuda, cuda_home, why_cuda = _buildcfg.cuda_plan(torch.version.cuda)
    if with_cuda:
        _buildcfg.prepare_cuda_env(cuda_home)
    from torch.utils import cpp_extension

    if with_cuda:
        cpp_extension.CUDA_HOME = cuda_home
    build_dir = _jit_dir(csrc, with_cuda)
    os.makedirs(build_dir, exist_ok=True)
    failed = os.path.join(build_dir, "FAILED")
    if os.path.exists(failed) and os.environ.get("DENSECORR_REBUILD") != "1":
        with open(failed) as f:
            raise RuntimeError(f"compiling failed before ({f.read().strip()}); DENSECORR_REBUILD=1 retries")
    record_path = os.path.join(build_dir, "_C_build.json")
    library = os.path.join(build_dir, "densecorr_C.so")
    if _buildcfg.STABLE_ABI and os.path.exists(record_path) and os.path.exists(library):
        # compiled before, by this or another process: load it, no compiler or ninja needed
        torch.ops.load_library(library)
        with open(record_path) as f:
            return torch.ops.densecorr_ext, json.load(f)
    fresh = not os.path.exists(record_path)
    if _buildcfg.compiler() is None:
        raise RuntimeError(f"no C++ compiler found ({os.environ.get('CXX', 'c++')})")
    if not cpp_extension.is_ninja_available():
        # the ninja package installs its binary next to the interpreter, maybe not on PATH
        os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")
    sources = _buildcfg.cpp_sources(csrc) + (_buildcfg.cuda_sources(csrc) if with_cuda else [])
    if fresh:
        what = f"with CUDA ({why_cuda}, archs {os.environ['TORCH_CUDA_ARCH_LIST']})" if with_cuda else "CPU"
        print(f"densecorr: compiling the C++ kernels ({what}) against torch {torch.__version__}, once: "
              f"1-3 minutes on 2 cores; cached in {build_dir}", file=sys.stderr, flush=True)
    start = time.time()
    defines = ["-DWITH_CUDA"] if with_cuda else []
    try:
        module = cpp_extension.load(
            name="densecorr_C",
            sources=sources,
            extra_cflags=_buildcfg.cxx_flags() + defines,
            extra_cuda_cflags=_buildcfg.nvcc_flags() + defines if with_cuda else None,
            extra_ldflags=_buildcfg.link_flags(os.environ.get("DENSECORR_DEBUG") == "1"),
            extra_include_paths=[csrc],
            build_directory=build_dir,
            with_cuda=with_cuda,
            is_python_module=not _buildcfg.STABLE_ABI,
            verbose=os.environ.get("DENSECORR_VERBOSE_BUILD") == "1",
        )
    except Exception as exc:
        last = str(exc).strip().splitlines()[-1:] or [type(exc).__name__]
        with open(failed, "w") as f:
            f.write(f"{last[0]}; log: run with DENSECORR_REBUILD=1 DENSECORR_VERBOSE_BUILD=1")
        raise RuntimeError(f"compiling the kernels failed ({last[0]})") from exc
    if fresh:
        record = _buildcfg.build_record(torch.__version__, torch.version.cuda if with_cuda else None,
                                        os.environ.get("TORCH_CUDA_ARCH_LIST") if with_cuda else None,
                                        _buildcfg.source_hash(csrc))
        record["origin"] = "compiled at first use"
        record["build_dir"] = build_dir
        record["build_seconds"] = round(time.time() - start, 1)
        with open(record_path, "w") as f:
            json.dump(record, f, indent=1)
        print(f"densecorr: compiled the C++ kernels in {time.time() - start:.0f} s", file=sys.stderr, flush=True)
    with open(record_path) as f:
        record = json.load(f)
    if _buildcfg.STABLE_ABI:
        module = torch.ops.densecorr_ext
    return module, record


def _resolve() -> None:
    """Find, check or compile the extension (once per process); sets _C and EXTENSION_ERROR."""
    if "_C" in _STATE:
        return
    module, record, error = None, None, None
    if os.environ.get("DENSECORR_DISABLE_EXTENSION") == "1":  # to test the pure-Python path
        error = "disabled by DENSECORR_DISABLE_EXTENSION=1"
    elif importlib.util.find_spec("densecorr._C") is not None:
        module, record = _load_prebuilt()  # a mismatch raises: never a silent 100x slowdown
    elif os.environ.get("DENSECORR_NO_JIT") == "1":
        error = "not built, and DENSECORR_NO_JIT=1 forbids compiling at first use"
    else:
        csrc = _csrc_dir()
        if csrc is None:
            error = "not built, and this installation carries no C++ sources to compile"
        else:
            try:
                module, record = _jit_build(csrc)
            except (RuntimeError, OSError, ImportError, _buildcfg.BuildConfigError) as exc:
                error = str(exc)
    _STATE.update(_C=module, EXTENSION_ERROR=error, record=record)
    globals().update(_C=module, EXTENSION_ERROR=error)
    if error is not None:
        hint = "" if "DENSECORR_DISABLE_EXTENSION" in error else (
            " To get them: install a C++ compiler (e.g. `apt install g++`) and ninja; densecorr compiles "
            "them at its next use (or: `pip install --no-build-isolation .` from a source checkout)."
        )
        warnings.warn(
            f"densecorr: the compiled kernels are not available ({error}); every op runs through the "
            f"pure-PyTorch 'reference' backend (100-300x slower).{hint} DENSECORR_BACKEND=cpu makes this "
            "an error instead.",
            RuntimeWarning,
            stacklevel=3,
        )


def __getattr__(name: str):
    if name in ("_C", "EXTENSION_ERROR"):
        _resolve()
        return _STATE[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def load() -> bool:
    """Load (compiling at first use if needed) the kernels now; True when they are in use."""
    _resolve()
    return _STATE["_C"] is not None


def has_kernel(op_name: str, dispatch_key: str) -> bool:
    """Whether densecorr_ext::<op_name> has a kernel registered for `dispatch_key`."""
    if not load():
        return False
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"densecorr_ext::{op_name}", dispatch_key)


def build_info() -> dict:
    """What the kernels in use contain: extension present, where from, torch built against,
    CUDA, OpenMP, CPU capability (compiles the kernels first if that is still to do)."""
    info = {"extension": load(), "torch": torch.__version__}
    if _STATE["_C"] is None:
        info["extension_error"] = _STATE["EXTENSION_ERROR"]
        return info
    record = _STATE["record"] or {}
    info["built_for_torch"] = record.get("torch")
    info["abi"] = record.get("abi")
    info["origin"] = record.get("origin", "package")
    module = _STATE["_C"]
    if hasattr(module, "build_info"):
        info.update(module.build_info())
    else:  # stable-ABI build: flags from an op, the rest from torch and the build record
        flags = int(torch.ops.densecorr_ext.build_flags())
        info.update(cuda=bool(flags & 1), cpu_simd="avx512" if flags & 8 else "avx2" if flags & 4 else "base",
                    cpu_capability=torch.backends.cpu.get_cpu_capability(), compiler=record.get("compiler"),
                    threads=torch.get_num_threads())
    return info


# A packaged extension is loaded (and checked against this torch) at import; a compile at
# first use waits for the first use. Disabling is decided now, so its warning comes at import.
if os.environ.get("DENSECORR_DISABLE_EXTENSION") == "1" or importlib.util.find_spec("densecorr._C") is not None:
    _resolve()
