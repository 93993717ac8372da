"""The measuring side of the harness, run in fresh processes: `python -m densecorr.bench.worker JOB OUT`.

Three kinds of job (JSON in the file JOB, result JSON written to OUT); "model_time" is the
models suite's (densecorr/bench/models_bench.py), the other two:
- "time": one case, all its providers side by side in this process: each provider is built
  and warmed up once (first call timed separately: it includes compilation), then for each
  repeat every provider runs once, in an order rotated by one each repeat, so that machine
  noise hits all of them alike. "forward" runs under no_grad; "backward" is the backward of a
  grad-mode forward, "full" that forward plus its backward (one run gives both). Each
  provider's forward output is compared with densecorr's (the same boundary rule).
  On CUDA the job also measures peak memory with torch.cuda.max_memory_allocated.
- "memory" (CPU): one (case, provider, mode). Lazy one-time initialisation is warmed up on a
  tiny case (on the real shape for compiled providers), the inputs are made, the kernel's peak
  RSS is reset (/proc/self/clear_refs), and the measured run's peak RSS (VmHWM) minus the RSS
  before it is the peak extra memory. The harness starts these processes with glibc's mmap
  threshold fixed, so that memory freed by the warm-up goes back to the OS instead of being
  reused silently by the measured run.
A data-size limit (RLIMIT_DATA) makes an allocation beyond the memory budget fail with an
error (reported as "out of memory") instead of swapping or waking the OOM killer.
"""
from __future__ import annotations

import dataclasses
import gc
import json
import os
import resource
import sys
import threading
import time
import traceback

import torch

from densecorr.system import proc_status_bytes, reset_peak_rss  # noqa: F401  (models_bench uses them)
from densecorr.bench.cases import Case, make_inputs
from densecorr.bench.providers import PROVIDERS

DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16, "bfloat16": torch.bfloat16}


# ---------------------------------------------------------------------------- memory helpers


# proc_status_bytes, reset_peak_rss: the one copy, in densecorr.system (imported above).


class RssSampler:
    """Fallback peak-RSS probe where VmHWM cannot be reset: samples VmRSS every `period` s."""

    def __init__(self, period: float = 0.0005):
        self.period, self.peak, self._stop = period, 0, threading.Event()

    def __enter__(self):
        self.peak = proc_status_bytes("VmRSS")
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, proc_status_bytes("VmRSS"))
            time.sleep(self.period)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, proc_status_bytes("VmRSS"))


def limit_memory(budget_bytes: int | None):
    """Let this process allocate at most `budget_bytes` more than it holds now."""
    if not budget_bytes:
        return
    _, hard = resource.getrlimit(resource.RLIMIT_DATA)
    soft = proc_status_bytes("VmData") + int(budget_bytes)
    if hard != resource.RLIM_INFINITY:
        soft = min(soft, hard)
    resource.setrlimit(resource.RLIMIT_DATA, (soft, hard))


def describe_error(exc: BaseException, budget_bytes: int | None) -> tuple[str, str]:
    """(status, message) of a failed run: "oom" when an allocation failed, else "failed"."""
    text = f"{type(exc).__name__}: {exc}".strip()
    if isinstance(exc, MemoryError) or "can't allocate memory" in text or "out of memory" in text.lower():
        budget = f" ({budget_bytes / 2**30:.1f} GiB budget)" if budget_bytes else ""
        return "oom", f"out of memory{budget}"
    return "failed", text.splitlines()[0][:300] if text else type(exc).__name__


# ---------------------------------------------------------------------------- running


def sync(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def grad_inputs(q, k, v):
    return [x.detach().clone().requires_grad_(True) for x in (q, k, v)]


def run_forward(fn, inputs, device, inner: int = 1):
    """Time `inner` no_grad forwards; returns (seconds per call, last output)."""
    sync(device)
    t0 = time.perf_counter()
    with torch.no_grad():
        for _ in range(inner):
            out = fn(*inputs)
    sync(device)
    return (time.perf_counter() - t0) / inner, out


def run_full(fn, inputs, grad, device, inner: int = 1):
    """Time `inner` grad-mode forwards and their backwards; (forward s, backward s) per call."""
    tf = tb = 0.0
    for _ in range(inner):
        for x in inputs:
            x.grad = None
        sync(device)
        t0 = time.perf_counter()
        out = fn(*inputs)
        sync(device)
        t1 = time.perf_counter()
        out.backward(grad)
        sync(device)
        tf, tb = tf + t1 - t0, tb + time.perf_counter() - t1
        del out
    for x in inputs:
        x.grad = None
    return tf / inner, tb / inner


def inner_calls(seconds: float, target: float = 0.02, most: int = 50) -> int:
    """Calls per timed sample so that one sample lasts about `target` s (sub-ms calls are
    otherwise all timer and scheduler noise); 1 for calls longer than that."""
    return max(1, min(most, int(target / max(seconds, 1e-6))))


class Oracle:
    """densecorr's default-backend forward output for a boundary rule, computed once."""

    def __init__(self, case: Case, inputs):
        self.case, self.inputs, self.cache = case, inputs, {}

    def __call__(self, boundary: str):
        if boundary not in self.cache:
            try:
                case = dataclasses.replace(self.case, boundary=boundary)
                dc = PROVIDERS["densecorr"]
                if dc.unavailable(case, self.inputs[0].device):
                    self.cache[boundary] = None
                else:
                    with torch.no_grad():
                        self.cache[boundary] = dc.build(case, self.inputs[0].device)(*self.inputs)
            except Exception:  # the check is a bonus; a failing densecorr shows in its own row
                self.cache[boundary] = None
        return self.cache[boundary]


def time_job(job: dict) -> dict:
    case = Case.from_dict(job["case"])
    device = torch.device(job["device"])
    dtype = DTYPES[job["dtype"]]
    modes, repeats, budget = job["modes"], job["repeats"], job.get("budget_bytes")
    grad_modes = [m for m in modes if m in ("backward", "full")]
    q, k, v, grad = make_inputs(case, device, dtype, seed=job.get("seed", 0))
    nograd = (q, k, v)
    withgrad = grad_inputs(q, k, v)
    oracle = Oracle(case, nograd)

    res, fns = {}, {}
    for name in job["providers"]:
        p = PROVIDERS[name]
        r = res[name] = {"status": "ok", "times": {m: [] for m in modes}, "notes": []}
        try:
            fn = p.build(case, device)
            if getattr(fn, "note", None):
                r["notes"].append(fn.note)
            r["first_call_s"], out = run_forward(fn, nograd, device)
            # a second call sizes the samples: the first may include compilation and lazy set-up
            fast = r["first_call_s"] < 0.5
            r["inner"] = inner_calls(run_forward(fn, nograd, device)[0]) if fast else 1
            ref = oracle(p.boundary(case))
            if ref is not None and out.shape == ref.shape:
                r["max_abs_err"] = float((out.double() - ref.double()).abs().max())
            r["boundary"] = p.boundary(case) if case.kind == "local" else None
            del out
            r["grad"] = p.no_backward(case, device)  # None: backward available
            r["inner_grad"] = 1
            fns[name] = fn
            if grad_modes and r["grad"] is None:
                try:
                    tf, tb = run_full(fn, withgrad, grad, device)
                    r["first_grad_call_s"] = tf + tb
                    fast = tf + tb < 0.5
                    r["inner_grad"] = inner_calls(sum(run_full(fn, withgrad, grad, device))) if fast else 1
                except Exception as exc:  # e.g. out of memory for the saved tensors: forward goes on
                    r["grad_status"], error = describe_error(exc, budget)
                    r["grad"] = f"{r['grad_status']}: {error}"
                    r["traceback"] = traceback.format_exc(limit=4)
        except Exception as exc:  # recorded, and the other providers go on
            fns.pop(name, None)
            r["status"], r["error"] = describe_error(exc, budget)
            r["traceback"] = traceback.format_exc(limit=4)
        gc.collect()

    alive = list(fns)
    for rep in range(repeats):
        shift = rep % max(len(alive), 1)
        for name in alive[shift:] + alive[:shift]:
            r = res[name]
            if r["status"] != "ok":
                continue
            try:
                if "forward" in modes:
                    t, out = run_forward(fns[name], nograd, device, r["inner"])
                    del out
                    r["times"]["forward"].append(t)
            except Exception as exc:
                r["status"], r["error"] = describe_error(exc, budget)
                r["traceback"] = traceback.format_exc(limit=4)
                continue
            try:
                if grad_modes and r["grad"] is None:
                    tf, tb = run_full(fns[name], withgrad, grad, device, r["inner_grad"])
                    if "backward" in modes:
                        r["times"]["backward"].append(tb)
                    if "full" in modes:
                        r["times"]["full"].append(tf + tb)
            except Exception as exc:
                r["grad_status"], error = describe_error(exc, budget)
                r["grad"] = f"{r['grad_status']} after {len(r['times'].get('full', []))} repeats: {error}"
                r["traceback"] = traceback.format_exc(limit=4)
            gc.collect()

    if device.type == "cuda":
        for name in alive:
            if res[name]["status"] == "ok":
                res[name]["peak_extra_bytes"] = {
                    m: cuda_peak(fns[name], m, nograd, withgrad, grad, device)
                    for m in modes
                    if m == "forward" or res[name]["grad"] is None
                }
    return {"providers": res, "threads": torch.get_num_threads()}


def cuda_peak(fn, mode, nograd, withgrad, grad, device) -> int:
    """Peak CUDA memory allocated by one run of `mode`, beyond what was allocated before it."""
    out = None
    if mode == "backward":
        out = fn(*withgrad)
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    _step(fn, mode, nograd, withgrad, grad, out)
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) - base
    for x in withgrad:
        x.grad = None
    return int(peak)


def _step(fn, mode, nograd, withgrad, grad, out=None):
    """One run of `mode`: "forward" (no autograd), "backward" (of `out`, the forward already
    run on `withgrad`) or "full" (forward and backward)."""
    if mode == "forward":
        with torch.no_grad():
            fn(*nograd)
    elif mode == "backward":
        out.backward(grad)
    else:
        fn(*withgrad).backward(grad)


def _run_mode(fn, mode, inputs_nograd, inputs_grad, grad):
    _step(fn, "forward" if mode == "forward" else "full", inputs_nograd, inputs_grad, grad)
    for x in inputs_grad:
        x.grad = None


def memory_job(job: dict) -> dict:
    case = Case.from_dict(job["case"])
    device = torch.device(job["device"])
    dtype = DTYPES[job["dtype"]]
    mode, budget = job["mode"], job.get("budget_bytes")
    p = PROVIDERS[job["provider"]]
    try:
        # warm-up: thread pools, kernel caches, library handles are allocated once per process
        warm_case = case if p.compiled else case.shrunk()
        wq, wk, wv, wg = make_inputs(warm_case, device, dtype, seed=1)
        warm_fn = p.build(warm_case, device)
        _run_mode(warm_fn, mode if mode == "forward" else "full", (wq, wk, wv), grad_inputs(wq, wk, wv), wg)
        fn = warm_fn if p.compiled else p.build(case, device)
        del wq, wk, wv, wg, warm_fn

        q, k, v, grad = make_inputs(case, device, dtype, seed=job.get("seed", 0))
        nograd, withgrad = (q, k, v), grad_inputs(q, k, v)
        out = fn(*withgrad) if mode == "backward" else None
        gc.collect()

        def measured():
            _step(fn, mode, nograd, withgrad, grad, out)

        if reset_peak_rss():
            base = proc_status_bytes("VmRSS")
            measured()
            peak, method = proc_status_bytes("VmHWM"), "VmHWM reset by clear_refs"
        else:
            with RssSampler() as s:
                base = s.peak
                measured()
            peak, method = s.peak, "VmRSS sampled every 0.5 ms"
        return {"status": "ok", "peak_extra_bytes": max(0, peak - base), "base_rss_bytes": base, "method": method}
    except Exception as exc:
        status, error = describe_error(exc, budget)
        return {"status": status, "error": error, "traceback": traceback.format_exc(limit=4)}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    job_path, out_path = argv
    with open(job_path) as f:
        job = json.load(f)
    if job.get("threads"):
        torch.set_num_threads(job["threads"])
    try:  # imported before the limit: the package's own allocations are not the op's
        import densecorr  # noqa: F401
    except Exception:  # the densecorr providers report it themselves
        pass

    limit_memory(job.get("budget_bytes"))
    if job["kind"] == "model_time":
        from densecorr.bench import models_bench

        result = models_bench.time_job(job)
    else:
        result = time_job(job) if job["kind"] == "time" else memory_job(job)
    with open(out_path, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main()
