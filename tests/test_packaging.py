"""Packaging and extension loading: what pip builds, what the sdist and wheel carry, the
build-record check at import, the compile-at-first-use path and its refusals, and the CUDA
toolkit discovery rules (densecorr/_buildcfg.py, densecorr/_ext.py, setup.py).

The slow, end-to-end checks (a fresh venv per install mode, a real compile at first use,
the abi3 wheel under another torch) are in .ci/run; these take seconds.
"""
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
import torch

import densecorr
from densecorr import _buildcfg, _ext

ROOT = Path(__file__).resolve().parents[1]


def _tracked_copy(dest: Path) -> Path:
    """A copy of the repository's tracked files (no build outputs, no venv)."""
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    for rel in files:
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    return dest


# ------------------------------------------------------------------ metadata


def test_version_matches_metadata():
    try:
        assert importlib.metadata.version("densecorr") == densecorr.__version__
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("densecorr is not installed (running from a bare checkout)")


def test_pyproject_license_and_torch_range():
    text = (ROOT / "pyproject.toml").read_text()
    assert 'license = "MIT"' in text and (ROOT / "LICENSE").read_text().startswith("MIT License")
    assert '"torch>=2.13,<2.15"' in text
    build_requires = text.split("[build-system]")[1].split("[project]")[0]
    assert "torch" not in build_requires.split("requires")[1].split("]")[0], "a torch build requirement downloads torch"


# ------------------------------------------------------------------ sdist and wheel contents


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The sdist and a pure-Python wheel built from a copy of the tracked files."""
    src = _tracked_copy(tmp_path_factory.mktemp("src"))
    out = tmp_path_factory.mktemp("dist")
    env = dict(os.environ, DENSECORR_NO_EXTENSION="1")
    run = subprocess.run([sys.executable, "setup.py", "-q", "sdist", "-d", str(out), "bdist_wheel", "-d", str(out)],
                         cwd=src, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    sdist = next(out.glob("densecorr-*.tar.gz"))
    wheel = next(out.glob("densecorr-*.whl"))
    return src, sdist, wheel


def test_sdist_carries_every_source_and_header(built):
    src, sdist, _ = built
    with tarfile.open(sdist) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    need = {str(p.relative_to(src)) for p in (src / "csrc").rglob("*") if p.suffix in (".cpp", ".h", ".cu", ".cuh")}
    assert need and need <= names, sorted(need - names)
    assert {"LICENSE", "CMakeLists.txt", "setup.py", "pyproject.toml", "densecorr/_buildcfg.py"} <= names


def test_wheel_is_pure_python_with_sources(built):
    src, _, wheel = built
    assert wheel.name.endswith("-py3-none-any.whl"), wheel.name
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        meta = z.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    shipped = {n[len("densecorr/_csrc/"):] for n in names if n.startswith("densecorr/_csrc/")}
    expected = {os.path.relpath(p, src / "csrc") for p in _buildcfg.source_files(str(src / "csrc"))}
    assert expected and shipped == expected
    assert not any(n.endswith(".so") for n in names)
    assert "densecorr/models/__init__.py" in names and "densecorr/_buildcfg.py" in names
    assert "License-Expression: MIT" in meta
    assert "Requires-Dist: torch<2.15,>=2.13" in meta or "Requires-Dist: torch>=2.13,<2.15" in meta


# ------------------------------------------------------------------ build record check


def test_compatible_rules():
    stable = {"abi": "stable", "min_torch": "2.10", "torch": "2.13.0+cpu"}
    assert _buildcfg.compatible(stable, "2.13.0+cpu") is None
    assert _buildcfg.compatible(stable, "2.14.1") is None
    assert "2.10 and later" in _buildcfg.compatible(stable, "2.9.1")
    pinned = {"abi": "torch", "torch": "2.13.0+cpu"}
    assert _buildcfg.compatible(pinned, "2.13.0+cpu") is None
    assert "only that exact release" in _buildcfg.compatible(pinned, "2.14.1")


def test_mismatched_prebuilt_extension_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(_ext, "_prebuilt_record", lambda: {"abi": "torch", "torch": "1.0.0"})
    with pytest.raises(_ext.ExtensionMismatchError, match=r"compiled against torch 1\.0\.0.*Reinstall densecorr"):
        _ext._check_prebuilt()
    monkeypatch.setattr(_ext, "_prebuilt_record", lambda: {"abi": "stable", "min_torch": "2.10"})
    _ext._check_prebuilt()  # any torch >= 2.10: no error


def test_running_build_records_its_torch():
    info = densecorr.build_info()
    if not info["extension"]:
        pytest.skip(f"extension not available: {info.get('extension_error')}")
    if info.get("built_for_torch") is not None:
        assert _buildcfg.compatible({"abi": info["abi"], "torch": info["built_for_torch"], "min_torch": "2.10"},
                                    torch.__version__) is None


# ------------------------------------------------------------------ compile at first use: refusals


_NO_PREBUILT = (
    "import importlib.util, os, sys, warnings\n"
    "real = importlib.util.find_spec\n"
    "importlib.util.find_spec = lambda n, *a: None if n == 'densecorr._C' else real(n, *a)\n"
)


def _run(code, tmp_path, **env):
    full = dict(os.environ, DENSECORR_CACHE_DIR=str(tmp_path / "cache"), **env)
    for var in ("DENSECORR_BACKEND", "DENSECORR_DISABLE_EXTENSION"):
        if var not in env:
            full.pop(var, None)
    return subprocess.run([sys.executable, "-c", code], env=full, capture_output=True, text=True, cwd=tmp_path,
                          timeout=300)


def test_without_compiler_one_warning_and_reference_backend(tmp_path):
    """No compiler: one warning saying how to get the kernels, ops run on the reference
    backend; DENSECORR_BACKEND=cpu makes the missing extension an error (one process)."""
    code = _NO_PREBUILT + (
        "import torch\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always')\n"
        "    import densecorr\n"
        "    q = torch.randn(1, 4, 3)\n"
        "    out = densecorr.global_attention(q, q, q)\n"
        "    densecorr.global_attention(q, q, q)\n"
        "msgs = [str(x.message) for x in w if 'densecorr' in str(x.message)]\n"
        "assert len(msgs) == 1, msgs\n"
        "assert 'no C++ compiler' in msgs[0] and 'reference' in msgs[0] and 'DENSECORR_BACKEND=cpu' in msgs[0], msgs\n"
        "assert densecorr.build_info()['extension'] is False\n"
        "os.environ['DENSECORR_BACKEND'] = 'cpu'\n"
        "try:\n"
        "    densecorr.global_attention(q, q, q)\n"
        "    print('no error')\n"
        "except RuntimeError as e:\n"
        "    print('error:', e)\n"
    )
    run = _run(code, tmp_path, CXX=str(tmp_path / "no-such-c++"))
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.startswith("error:") and "backend 'cpu'" in run.stdout and "no C++ compiler" in run.stdout
    assert "compiling" not in run.stderr


def test_failed_compile_is_not_retried(tmp_path):
    """A compile that failed leaves a FAILED marker: later processes warn at once instead
    of spending minutes compiling again (DENSECORR_REBUILD=1 retries)."""
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "c++").write_text("#!/bin/sh\necho 'fake compiler: refusing' >&2\nexit 1\n")
    (fake / "c++").chmod(0o755)
    code = _NO_PREBUILT + (
        "import torch, densecorr\n"
        "print(densecorr.build_info().get('extension_error'))\n"
    )
    first = _run(code, tmp_path, CXX=str(fake / "c++"))
    assert first.returncode == 0, first.stderr[-3000:]
    assert "compiling the kernels failed" in first.stdout
    markers = list((tmp_path / "cache").glob("*/FAILED"))
    assert len(markers) == 1
    second = _run(code, tmp_path, CXX=str(fake / "c++"))
    assert "failed before" in second.stdout and "DENSECORR_REBUILD=1" in second.stdout
    assert "compiling the C++ kernels" not in second.stderr


# ------------------------------------------------------------------ CUDA toolkit discovery


@pytest.fixture
def fake_toolkit(tmp_path, monkeypatch):
    """A toolkit at tmp/cuda-13.0 whose nvcc reports CUDA 13.0 and its TOP, and a wrapper
    script tmp/bin/nvcc outside it that execs it (as /usr/local/bin/nvcc does here)."""
    home = tmp_path / "cuda-13.0"
    (home / "bin").mkdir(parents=True)
    (home / "bin" / "nvcc").write_text(
        "#!/bin/sh\n"
        f"case \"$*\" in *--dryrun*) echo '#$ TOP={home}/bin/..' >&2 ;; esac\n"
        "case \"$*\" in *--version*) echo 'Cuda compilation tools, release 13.0, V13.0.48' ;; esac\n"
    )
    wrapper = tmp_path / "bin" / "nvcc"
    wrapper.parent.mkdir()
    wrapper.write_text(f"#!/bin/sh\nexec {home}/bin/nvcc \"$@\"\n")
    for f in (home / "bin" / "nvcc", wrapper):
        f.chmod(0o755)
    monkeypatch.setenv("PATH", f"{wrapper.parent}{os.pathsep}{os.environ['PATH']}")
    for var in ("CUDA_HOME", "CUDA_PATH", "DENSECORR_NO_CUDA", "TORCH_CUDA_ARCH_LIST"):
        monkeypatch.delenv(var, raising=False)
    return home


def test_cuda_home_is_the_real_nvcc_location(fake_toolkit):
    assert Path(_buildcfg.find_cuda_home()).resolve() == fake_toolkit.resolve()


def test_cuda_plan(fake_toolkit, monkeypatch):
    assert _buildcfg.cuda_plan(None)[0] is False  # CPU torch: no CUDA sources
    ok, home, why = _buildcfg.cuda_plan("13.0")  # GPU or not: toolkit + CUDA torch is enough
    assert ok and Path(home).resolve() == fake_toolkit.resolve() and "13.0" in why
    with pytest.raises(_buildcfg.BuildConfigError, match=r"CUDA 13\.0 but torch was built with CUDA 12\.8"):
        _buildcfg.cuda_plan("12.8")
    monkeypatch.setenv("DENSECORR_NO_CUDA", "1")
    assert _buildcfg.cuda_plan("13.0")[0] is False


def test_default_cuda_arch_list(fake_toolkit, monkeypatch):
    _buildcfg.prepare_cuda_env(str(fake_toolkit))
    assert os.environ["TORCH_CUDA_ARCH_LIST"] == "8.0;9.0" and os.environ["CUDA_HOME"] == str(fake_toolkit)
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "9.0a")
    _buildcfg.prepare_cuda_env(str(fake_toolkit))
    assert os.environ["TORCH_CUDA_ARCH_LIST"] == "9.0a"


# ------------------------------------------------------------------ stable ABI sources


def test_csrc_uses_only_the_stable_abi():
    """No ATen/c10/pybind11 header or TORCH_LIBRARY (unstable) in the extension's sources."""
    bad = (r"<ATen/", r"<c10/", r"<torch/extension\.h>", r"<torch/library\.h>", r"<torch/torch\.h>", r"pybind11",
           r"(?<!STABLE_)TORCH_LIBRARY(_IMPL)?\(", r"\bat::", r"\bc10::")
    offenders = []
    for path in _buildcfg.source_files(str(ROOT / "csrc")):
        text = Path(path).read_text()
        code = "\n".join(line.split("//")[0] for line in text.splitlines())
        offenders += [f"{os.path.relpath(path, ROOT)}: {b}" for b in bad if re.search(b, code)]
    assert not offenders, offenders
    assert _buildcfg.STABLE_ABI and _buildcfg.target_version_macro() == "-DTORCH_TARGET_VERSION=0x020a000000000000"


@pytest.mark.skipif(shutil.which("c++") is None, reason="no C++ compiler")
def test_cuda_glue_type_checks_against_the_stable_headers():
    """csrc/cuda/ops.cpp (the CUDA glue) against torch's stable headers, host compiler,
    -fsyntax-only: seconds, on any machine (no nvcc, no CUDA torch needed)."""
    from torch.utils.cpp_extension import include_paths

    cmd = ["c++", "-fsyntax-only", "-std=c++20", _buildcfg.target_version_macro(), f"-I{ROOT / 'csrc'}"]
    cmd += [f"-I{p}" for p in include_paths()] + [str(ROOT / "csrc" / "cuda" / "ops.cpp")]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-4000:]
