"""The machine a measurement ran on and how much memory it took: the one copy of the peak-RSS
probe and the machine description, used by evaluation (densecorr.evaluation, the CLI) and by
the benchmarks.

    reset_peak_rss()        # start a new peak (Linux: /proc/self/clear_refs)
    ...work...
    peak_rss_mb()           # MiB, VmHWM since the reset (process-wide peak where resets are refused)
    machine_info("cpu")     # cpu, cores, threads, RAM, platform, versions, GPU if any

and `signals_deferred()`, a block in which SIGINT/SIGTERM wait (process-level, like the rest).
"""
from __future__ import annotations

import contextlib
import os
import platform
import resource
import signal
import sys
import time
from typing import Iterator


def proc_status_bytes(field: str) -> int:
    """A "kB" field of /proc/self/status (VmRSS, VmHWM, VmData), in bytes; RuntimeError where
    the file or the field does not exist (not Linux)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError as exc:
        raise RuntimeError(f"cannot read /proc/self/status ({exc})") from None
    raise RuntimeError(f"/proc/self/status has no {field}")


def reset_peak_rss() -> bool:
    """Reset the peak resident set (VmHWM) to the current one (Linux >= 4.0); False where not
    permitted, and then `peak_rss_mb` keeps reporting the process-wide peak."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_mb(reset: bool = False) -> float:
    """Peak resident memory of this process in MiB (Linux VmHWM; `reset=True` restarts the
    count where the kernel allows it, else the process-wide peak is returned)."""
    if reset:
        reset_peak_rss()
    with contextlib.suppress(RuntimeError, ValueError):
        return proc_status_bytes("VmHWM") / 2**20
    usage = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return usage / 2**20 if sys.platform == "darwin" else usage / 1024


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), else what `platform` says."""
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def machine_info(device: str = "cpu") -> dict:
    """A JSON-ready description of the machine and the software: cpu, cores (all and usable),
    torch threads, RAM, load average, platform, Python, torch, triton, densecorr and its build,
    the date; the GPU and CUDA version when `device` is a CUDA device."""
    import torch

    info = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch_threads": torch.get_num_threads(),
        "ram_gib": None,
        "load_average": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    with contextlib.suppress(OSError, ValueError, IndexError):
        with open("/proc/meminfo") as f:
            info["ram_gib"] = round(int(f.readline().split()[1]) / 2**20, 1)
    try:
        import triton

        info["triton"] = triton.__version__
    except Exception:  # not installed, or broken: either way there is no usable triton
        info["triton"] = None
    info["densecorr"] = densecorr_info()
    if str(device).startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
        info["cuda"] = torch.version.cuda
    return info


def densecorr_info() -> dict:
    """densecorr's version and build (extension compiled? CUDA? OpenMP? vector width)."""
    try:
        import densecorr
    except Exception as exc:  # report, do not fail: this describes a possibly broken install
        return {"error": f"{type(exc).__name__}: {exc}"}
    info = {"version": getattr(densecorr, "__version__", None)}
    try:
        info["build_info"] = densecorr.build_info()
    except Exception as exc:
        info["build_info"] = {"error": f"{type(exc).__name__}: {exc}"}
    return info


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Block SIGINT and SIGTERM (their handlers run right after), so that a few steps that
    belong together (renames of an output, a first import) are not cut in the middle by Ctrl-C
    or a polite kill. Used by densecorr.cli.output and densecorr.training.log."""
    sigs = {signal.SIGINT, signal.SIGTERM}
    try:
        old = signal.pthread_sigmask(signal.SIG_BLOCK, sigs)
    except (AttributeError, OSError, ValueError):  # no pthread_sigmask (Windows)
        yield
        return
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


__all__ = ["proc_status_bytes", "reset_peak_rss", "peak_rss_mb", "cpu_model", "machine_info", "densecorr_info", "signals_deferred"]
