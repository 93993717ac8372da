"""The comparison harness: cases x providers x modes, side by side; methodology in the
repository's benchmarks/README.md.

    densecorr bench [--suite global|local|topk|models|all] [--quick] [--out DIR] [--repeats N]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from densecorr.bench import report
from densecorr.bench.cases import Case, cases_for
from densecorr.bench.providers import PROVIDERS, case_kind

PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
# The folder that holds the densecorr package: a source checkout (then results go to its
# benchmarks/results, and its git commit is recorded) or site-packages.
REPO_ROOT = os.path.dirname(os.path.dirname(PACKAGE_DIR))
IN_CHECKOUT = os.path.isfile(os.path.join(REPO_ROOT, "pyproject.toml")) and os.path.isdir(
    os.path.join(REPO_ROOT, "benchmarks"))
DEFAULT_OUT = os.path.join(REPO_ROOT, "benchmarks", "results") if IN_CHECKOUT else os.path.join(
    os.getcwd(), "densecorr-bench")
MODES = ("forward", "backward", "full")
MiB = 2**20

# Memory jobs run with glibc's mmap threshold fixed (it otherwise grows up to 32 MiB after
# frees), so every allocation above 128 KiB is its own mapping, returned to the OS on free:
# what the warm-up freed cannot hide the measured run's allocations.
MEMORY_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"}


def mem_available_bytes() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def default_budget_gib() -> float:
    """16 GiB, or less where less is free (leaving 3 GiB to everything else)."""
    avail = mem_available_bytes()
    return 16.0 if avail is None else max(1.0, min(16.0, avail / 2**30 - 3.0))


def run_worker(job: dict, env_extra: dict | None = None, timeout: float | None = None) -> dict:
    """Run one job in a fresh `python -m densecorr.bench.worker` process; its JSON result."""
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO_ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("PYTHONWARNINGS", "ignore")
    env.update(env_extra or {})
    with tempfile.TemporaryDirectory(prefix="densecorr-bench-") as tmp:
        job_path, out_path = os.path.join(tmp, "job.json"), os.path.join(tmp, "out.json")
        with open(job_path, "w") as f:
            json.dump(job, f)
        try:
            proc = subprocess.run(
                [sys.executable, "-m", "densecorr.bench.worker", job_path, out_path],
                cwd=REPO_ROOT if IN_CHECKOUT else None, env=env, capture_output=True, text=True, timeout=timeout,
            )
        except subprocess.TimeoutExpired:
            return {"status": "failed", "error": f"worker timed out after {timeout:.0f} s"}
        if proc.returncode == 0 and os.path.exists(out_path):
            with open(out_path) as f:
                return json.load(f)
        if proc.returncode < 0:
            why = f"worker killed by signal {-proc.returncode}"
            status = "oom" if proc.returncode == -9 else "failed"
        else:
            tail = [l for l in proc.stderr.strip().splitlines() if l.strip()][-1:] or ["no output"]
            why, status = f"worker exited with {proc.returncode}: {tail[0][:300]}", "failed"
        return {"status": status, "error": why, "stderr": proc.stderr[-4000:]}


def measure_case(case: Case, providers: list[str], args, log) -> list[dict]:
    """Rows (one per provider and mode) for one case."""
    rows, runnable = [], []
    for name in providers:
        if case_kind(case) not in PROVIDERS[name].kinds:
            continue  # not an alternative for this kind of problem: no row
        why = PROVIDERS[name].unavailable(case, args.device)
        if why:
            log(f"  skip {name}: {why}")
            rows += [_row(case, name, m, status="skipped", note=why) for m in args.modes]
        else:
            runnable.append(name)
    if not runnable:
        return rows
    budget = int(args.memory_budget_gib * 2**30)
    job = dict(
        kind="time", case=case.to_dict(), providers=runnable, modes=list(args.modes), repeats=args.repeats,
        device=args.device, dtype=args.dtype, budget_bytes=budget, threads=args.threads,
    )
    t0 = time.perf_counter()
    res = run_worker(job)
    log(f"  timed {', '.join(runnable)} in {time.perf_counter() - t0:.1f} s")
    if "providers" not in res:  # the whole process died (e.g. killed for memory)
        log(f"  timing process failed: {res.get('error')}")
        return rows + [_row(case, n, m, status=res["status"], note=res.get("error")) for n in runnable for m in args.modes]

    for name in runnable:
        r = res["providers"][name]
        notes = list(r.get("notes", []))
        if "first_call_s" in r and PROVIDERS[name].compiled:
            notes.append(f"first call (compilation) {r['first_call_s']:.1f} s, excluded")
        if r.get("boundary") and r["boundary"] != case.boundary:
            notes.append(f"computes boundary={r['boundary']!r}")
        for mode in args.modes:
            no_grad = PROVIDERS[name].no_backward(case, args.device) if mode != "forward" else None
            if no_grad:
                rows.append(_row(case, name, mode, status="skipped", note=no_grad))
                continue
            if r["status"] != "ok" and not r["times"].get(mode):
                rows.append(_row(case, name, mode, status=r["status"], note=r.get("error")))
                continue
            if mode != "forward" and r.get("grad") and not r["times"].get(mode):
                rows.append(_row(case, name, mode, status=r.get("grad_status", "failed"), note=r["grad"]))
                continue
            times = r["times"].get(mode, [])
            row = _row(
                case, name, mode, status="ok" if times else r["status"], note="; ".join(notes) or None,
                times_ms=[t * 1e3 for t in times], max_abs_err=r.get("max_abs_err"),
                first_call_s=r.get("first_call_s"), threads=res.get("threads"),
                calls_per_sample=r.get("inner" if mode == "forward" else "inner_grad"),
            )
            if r["status"] != "ok":
                row["note"] = f"{r['status']} after {len(times)} repeats: {r.get('error')}"
            elif mode != "forward" and r.get("grad"):
                row["note"] = r["grad"]
            peak = (r.get("peak_extra_bytes") or {}).get(mode)
            if peak is not None:
                row["peak_extra_mib"] = peak / MiB
                row["memory_method"] = "torch.cuda.max_memory_allocated"
            rows.append(row)

    if args.device == "cpu" and not args.no_memory:
        for row in rows:
            if row["status"] != "ok":
                continue
            mjob = dict(
                kind="memory", case=case.to_dict(), provider=row["provider"], mode=row["mode"],
                device=args.device, dtype=args.dtype, budget_bytes=budget, threads=args.threads,
            )
            m = run_worker(mjob, MEMORY_ENV)
            if m.get("status") == "ok":
                row["peak_extra_mib"] = m["peak_extra_bytes"] / MiB
                row["memory_method"] = "peak RSS growth, fresh process (" + m["method"] + ")"
            else:
                row["memory_note"] = f"{m.get('status')}: {m.get('error')}"
                log(f"  memory of {row['provider']} {row['mode']}: {row['memory_note']}")
    return rows


def case_info(case: Case) -> dict:
    """The fields of a case that every row repeats."""
    return dict(case=case.name, kind=case.kind, family=case.family, size=case.size, label=case.label)


def _row(case: Case | dict, provider: str, mode: str, status: str, note=None, times_ms=(), **extra) -> dict:
    """One result row; `case` a Case or a dict like case_info's."""
    row = dict(
        **(case_info(case) if isinstance(case, Case) else case),
        provider=provider, mode=mode, status=status, median_ms=None, min_ms=None,
        times_ms=list(times_ms), peak_extra_mib=None, ratio=None, note=note,
    )
    if times_ms:
        row["median_ms"] = statistics.median(times_ms)
        row["min_ms"] = min(times_ms)
    row.update(extra)
    return row


def add_ratios(rows: list[dict], base: str = "densecorr") -> None:
    """ratio = provider's median time / densecorr's, same case and mode (> 1: densecorr is faster)."""
    ref = {(r["case"], r["mode"]): r["median_ms"] for r in rows if r["provider"] == base and r["median_ms"]}
    for r in rows:
        b = ref.get((r["case"], r["mode"]))
        if r["median_ms"] is not None and b:
            r["ratio"] = r["median_ms"] / b


def parse_args(argv=None):
    import torch

    ap = argparse.ArgumentParser(prog="densecorr bench", description=__doc__.splitlines()[0])
    ap.add_argument("--suite", default="all", choices=["global", "local", "topk", "models", "all", "smoke"],
                    help="which cases ('all': global, local and topk; 'models' is separate)")
    ap.add_argument("--quick", action="store_true", help="skip the biggest cases (GBs for the naive providers)")
    ap.add_argument("--out", default=DEFAULT_OUT, help=f"folder for JSON/CSV/PNG (default: {DEFAULT_OUT})")
    ap.add_argument("--tag", default=None, help="file name stem (default: <suite>-<device>[-quick])")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per provider and mode (median)")
    ap.add_argument("--modes", default=",".join(MODES), help="comma list of forward, backward, full")
    ap.add_argument("--providers", default=None, help=f"comma list from {', '.join(PROVIDERS)}")
    ap.add_argument("--cases", default=None, help="comma list of substrings of case names to keep")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64", "float16", "bfloat16"])
    ap.add_argument("--threads", type=int, default=None, help="torch threads in the workers (default: torch's)")
    ap.add_argument("--memory-budget-gib", type=float, default=None,
                    help="per-process allocation limit; a run beyond it is reported as out of memory "
                    "(default: min(16, free RAM - 3))")
    ap.add_argument("--no-memory", action="store_true", help="CPU: skip the peak-memory processes")
    ap.add_argument("--no-plot", action="store_true")
    args = ap.parse_args(argv)
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    bad = [m for m in args.modes if m not in MODES]
    if bad or not args.modes:
        ap.error(f"--modes: unknown {bad}; choose from {MODES}")
    if args.providers:
        args.providers = [p.strip() for p in args.providers.split(",") if p.strip()]
        bad = [p for p in args.providers if p not in PROVIDERS]
        if bad:
            ap.error(f"--providers: unknown {bad}; choose from {list(PROVIDERS)}")
    else:
        args.providers = list(PROVIDERS)
    if args.repeats < 1:
        ap.error("--repeats must be >= 1")
    if args.memory_budget_gib is None:
        args.memory_budget_gib = default_budget_gib()
    if args.tag is None:
        args.tag = f"{args.suite}-{args.device}" + ("-quick" if args.quick else "")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)

    def log(msg):
        print(msg, flush=True)

    started = time.time()

    def save_partial(rows, cases):
        """What is measured so far survives an interrupted run."""
        add_ratios(rows)
        report.write_all(report.assemble(args, cases, rows, started), args.out, args.tag + ".partial", plot_png=False)

    if args.suite == "models":
        from densecorr.bench import models_bench

        cases = models_bench.cases_as_dicts()
        rows = models_bench.run(args, log, lambda rows: save_partial(rows, cases))
    else:
        cases = cases_for(args.suite, quick=args.quick)
        if args.cases:
            keys = [c.strip() for c in args.cases.split(",") if c.strip()]
            cases = [c for c in cases if any(k in c.name for k in keys)]
        rows = []
        for i, case in enumerate(cases):
            log(f"[{i + 1}/{len(cases)}] {case.name}" + (f"  ({case.label})" if case.label else ""))
            rows += measure_case(case, args.providers, args, log)
            save_partial(rows, [c.to_dict() for c in cases[: i + 1]])
        cases = [c.to_dict() for c in cases]
    for ext in ("json", "csv"):
        path = os.path.join(args.out, f"{args.tag}.partial.{ext}")
        if os.path.exists(path):
            os.remove(path)
    add_ratios(rows)

    result = report.assemble(args, cases, rows, started)
    paths = report.write_all(result, args.out, args.tag, plot_png=not args.no_plot)
    print()
    print(report.format_table(rows))
    for note in result["notes"]:
        print("note:", note)
    for p in paths:
        print("wrote", p)
    return result
