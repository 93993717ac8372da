"""How the C++/CUDA extension is compiled: one copy, used by setup.py (ahead-of-time build,
where torch is importable at build time) and by densecorr._ext (compile at first use).

Imports no torch at module level (setup.py loads this file by path, before torch may exist).

Environment knobs (both build paths):
  DENSECORR_CXX_FLAGS="..."   extra host compiler flags (e.g. "-march=native")
  DENSECORR_NO_CUDA=1         never build the CUDA sources
  TORCH_CUDA_ARCH_LIST        CUDA architectures (default here: "8.0;9.0", i.e. sm_80, sm_90)
  CUDA_HOME                   the CUDA toolkit (default: where the real nvcc lives)
"""
from __future__ import annotations

import glob
import hashlib
import os
import re
import shutil
import subprocess

# The stable-ABI version the kernels are compiled against (TORCH_TARGET_VERSION): an
# extension built with it loads under every torch release from this one on.
TARGET_TORCH = (2, 10)
# Whether csrc/ is written against the stable ABI only (torch/csrc/stable, headeronly): then
# the extension is a Python-limited-API (abi3) module that any torch >= TARGET_TORCH loads;
# else it is tied to the exact torch it was compiled against.
STABLE_ABI = True
DEFAULT_CUDA_ARCHS = "8.0;9.0"
SOURCE_SUFFIXES = (".cpp", ".h", ".cu", ".cuh")


class BuildConfigError(RuntimeError):
    """A build that cannot work as configured (e.g. CUDA toolkit and torch disagree)."""


def target_version_macro() -> str:
    major, minor = TARGET_TORCH
    return f"-DTORCH_TARGET_VERSION=0x{major:02x}{minor:02x}000000000000"


def cpp_sources(csrc: str) -> list[str]:
    """The host sources of the extension, sorted (paths under `csrc`)."""
    return sorted(glob.glob(os.path.join(csrc, "*.cpp")) + glob.glob(os.path.join(csrc, "cpu", "*.cpp")))


def cuda_sources(csrc: str) -> list[str]:
    return sorted(glob.glob(os.path.join(csrc, "cuda", "*.cu")) + glob.glob(os.path.join(csrc, "cuda", "*.cpp")))


def source_files(csrc: str) -> list[str]:
    """Every file a build reads (sources and headers), for hashing and packaging."""
    out = []
    for root, dirs, files in os.walk(csrc):
        dirs[:] = sorted(d for d in dirs if d not in ("tests", "emulation", "__pycache__"))
        out += [os.path.join(root, f) for f in sorted(files) if f.endswith(SOURCE_SUFFIXES)]
    return out


def source_hash(csrc: str, extra: str = "") -> str:
    h = hashlib.sha256(extra.encode())
    for path in source_files(csrc):
        h.update(os.path.relpath(path, csrc).encode())
        with open(path, "rb") as f:
            h.update(f.read())
    return h.hexdigest()[:16]


def cxx_flags() -> list[str]:
    # No -fopenmp: the kernels use torch's thread pool through torch::stable::parallel_for.
    flags = ["-O3", "-std=c++20", "-Wno-psabi"]
    if STABLE_ABI:
        flags.append(target_version_macro())
    return flags + os.environ.get("DENSECORR_CXX_FLAGS", "").split()


def nvcc_flags() -> list[str]:
    return ["-O3", "-std=c++20", "--use_fast_math"] + ([target_version_macro()] if STABLE_ABI else [])


def link_flags(debug: bool = False) -> list[str]:
    # -s: a stripped .so (symbols are not needed to load it; DENSECORR_DEBUG=1 keeps them).
    return [] if debug else ["-s"]


def compiler() -> str | None:
    """The host C++ compiler torch.utils.cpp_extension will call (CXX, else c++), if present."""
    return shutil.which(os.environ.get("CXX", "c++"))


def _nvcc_on_path() -> str | None:
    return shutil.which("nvcc")


def find_cuda_home() -> str | None:
    """The CUDA toolkit root: CUDA_HOME/CUDA_PATH if set, else where the *real* nvcc lives.

    The nvcc on PATH may be a wrapper script outside the toolkit (/usr/local/bin/nvcc ->
    exec /usr/local/cuda-13.0/bin/nvcc): nvcc's own dry run names its TOP directory.
    """
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            return os.environ[var]
    nvcc = _nvcc_on_path()
    if nvcc is None:
        return None
    try:
        out = subprocess.run([nvcc, "--dryrun", "--version"], capture_output=True, text=True, timeout=60)
        text = out.stdout + out.stderr
        m = re.search(r"^#\$ TOP=(.+?)\s*$", text, re.M)
        if m is None:  # --version alone may not print the environment: a dry compile does
            out = subprocess.run([nvcc, "--dryrun", "-c", "-x", "cu", os.devnull, "-o", os.devnull],
                                 capture_output=True, text=True, timeout=60)
            m = re.search(r"^#\$ TOP=(.+?)\s*$", out.stdout + out.stderr, re.M)
        if m is not None:
            top = os.path.realpath(m.group(1).strip().strip('"'))
            if os.path.exists(os.path.join(top, "bin", "nvcc")):
                return os.path.dirname(top) if os.path.basename(top) == "bin" else top
    except (OSError, subprocess.SubprocessError):
        pass
    return os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))


def nvcc_version(cuda_home: str) -> str | None:
    nvcc = os.path.join(cuda_home, "bin", "nvcc")
    try:
        out = subprocess.run([nvcc, "--version"], capture_output=True, text=True, timeout=60).stdout
    except OSError:
        return None
    m = re.search(r"release (\d+)\.(\d+)", out)
    return f"{m.group(1)}.{m.group(2)}" if m else None


def cuda_plan(torch_cuda: str | None) -> tuple[bool, str | None, str]:
    """(build CUDA?, CUDA_HOME, why), for a torch whose CUDA version is `torch_cuda`.

    CUDA sources are built wherever a CUDA build of torch and a CUDA toolkit are both
    present, with or without a visible GPU. A toolkit whose major version differs from
    torch's raises BuildConfigError (the result would not load).
    """
    if os.environ.get("DENSECORR_NO_CUDA") == "1":
        return False, None, "DENSECORR_NO_CUDA=1"
    if torch_cuda is None:
        return False, None, "torch is a CPU-only build"
    home = find_cuda_home()
    if home is None or not os.path.exists(os.path.join(home, "bin", "nvcc")):
        return False, None, "no CUDA toolkit (nvcc) found; set CUDA_HOME"
    have = nvcc_version(home)
    if have is None:
        return False, home, f"cannot run {home}/bin/nvcc"
    if have.split(".")[0] != torch_cuda.split(".")[0]:
        raise BuildConfigError(
            f"densecorr: the CUDA toolkit at {home} is CUDA {have} but torch was built with CUDA {torch_cuda}: "
            f"the majors must agree. Point CUDA_HOME at a CUDA {torch_cuda.split('.')[0]}.x toolkit, install the "
            f"torch build for CUDA {have.split('.')[0]}, or set DENSECORR_NO_CUDA=1 for the CPU kernels only."
        )
    return True, home, f"CUDA {have} at {home}"


def prepare_cuda_env(home: str) -> None:
    """Environment for torch.utils.cpp_extension's CUDA build (call before it is imported)."""
    os.environ["CUDA_HOME"] = home
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_CUDA_ARCHS)


def compiler_version() -> str:
    cxx = compiler()
    if cxx is None:
        return "none"
    try:
        return subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=60).stdout.splitlines()[0]
    except (OSError, IndexError, subprocess.SubprocessError):
        return cxx


def build_record(torch_version: str, cuda: str | None, cuda_archs: str | None, sources: str) -> dict:
    """What an extension was built against (densecorr/_C_build.json; checked at import)."""
    import sys

    return {
        "torch": torch_version,
        "abi": "stable" if STABLE_ABI else "torch",
        "min_torch": ".".join(map(str, TARGET_TORCH)) if STABLE_ABI else None,
        "python": "%d.%d" % sys.version_info[:2],
        "cuda": cuda,
        "cuda_archs": cuda_archs,
        "compiler": compiler_version(),
        "sources": sources,
    }


def compatible(record: dict, torch_version: str) -> str | None:
    """None when an extension described by `record` can load under `torch_version`, else why not."""
    running = _release(torch_version)
    if record.get("abi") == "stable":
        need = tuple(int(x) for x in str(record.get("min_torch", "2.10")).split("."))
        if running[:2] < need:
            return (f"it uses the LibTorch stable ABI of torch {record.get('min_torch')} and later; "
                    f"this is torch {torch_version}")
        return None
    if record.get("torch") != torch_version:
        return (f"it was compiled against torch {record.get('torch')} (not the stable ABI: only that exact "
                f"release can load it); this is torch {torch_version}")
    return None


def _release(version: str) -> tuple[int, ...]:
    m = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", version)
    return tuple(int(x) for x in m.groups(default="0")) if m else (0, 0, 0)
