"""The `models` suite: one training step of a tracker with densecorr's ops vs. the same model
with the naive affinity (config `affinity="naive"`: bmm/softmax/unfold, the textbook code).

A step is zero_grad, forward (the model's training loss on a clip), backward and an Adam
update, on a random clip (B, T, 3, 256, 256); the content of the clip does not change the
work. Both variants start from the same weights and random state, and run side by side in one
process, alternating, after a first (warm-up) step that also allocates the optimiser state.
On CPU, the peak extra memory of a step is its peak RSS growth (VmHWM reset before each timed
step, median over the steps), measured in that process, which runs with glibc's mmap
threshold fixed like the op suites' memory processes (a step takes a minute on 2 cores: fresh
processes per variant would double the suite's time).
"""
from __future__ import annotations

import gc
import time
import traceback

import torch

MODELS = ("corrflow", "mast")
VARIANTS = ("densecorr", "naive")  # provider names in the rows: densecorr first (the ratio base)
BATCH, SIZE = 4, 256


def case_name(model: str) -> str:
    return f"{model} training step {SIZE}x{SIZE} B={BATCH}"


def cases_as_dicts() -> list[dict]:
    return [
        {"name": case_name(m), "kind": "model", "model": m, "B": BATCH, "H": SIZE, "W": SIZE, "family": None}
        for m in MODELS
    ]


class Step:
    """One model variant with its optimiser and clip; calling it runs one training step."""

    def __init__(self, model: str, affinity: str, device, seed: int = 0):
        import densecorr.models

        torch.manual_seed(seed)
        self.model = densecorr.models.create(model, affinity=affinity).to(device).train()
        self.opt = torch.optim.Adam(self.model.parameters(), lr=1e-4)
        g = torch.Generator().manual_seed(seed)
        self.clip = torch.rand(BATCH, self.model.clip_length, 3, SIZE, SIZE, generator=g).to(device)
        self.device = torch.device(device)
        self.calls = 0

    def __call__(self) -> float:
        # the same augmentation draws in both variants at the same step
        torch.manual_seed(1000 + self.calls)
        self.calls += 1
        self.opt.zero_grad(set_to_none=True)
        loss = self.model(self.clip)["loss"]
        loss.backward()
        self.opt.step()
        return float(loss.detach())


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_job(job: dict) -> dict:
    """Both variants of one model side by side: first step, then `repeats` alternating steps."""
    from densecorr.bench.worker import describe_error, proc_status_bytes, reset_peak_rss

    device, budget = torch.device(job["device"]), job.get("budget_bytes")
    res, steps = {}, {}
    for aff in job["variants"]:
        r = res[aff] = {"status": "ok", "times": []}
        try:
            steps[aff] = Step(job["model"], aff, device)
            _sync(device)
            t0 = time.perf_counter()
            r["first_loss"] = steps[aff]()
            _sync(device)
            r["first_call_s"] = time.perf_counter() - t0
        except Exception as exc:
            r["status"], r["error"] = describe_error(exc, budget)
            r["traceback"] = traceback.format_exc(limit=4)
            steps.pop(aff, None)
        gc.collect()
    alive = list(steps)
    for rep in range(job["repeats"]):
        shift = rep % max(len(alive), 1)
        for aff in alive[shift:] + alive[:shift]:
            if res[aff]["status"] != "ok":
                continue
            try:
                gc.collect()
                rss = device.type == "cpu" and reset_peak_rss()
                base = proc_status_bytes("VmRSS") if rss else 0
                _sync(device)
                t0 = time.perf_counter()
                steps[aff]()
                _sync(device)
                res[aff]["times"].append(time.perf_counter() - t0)
                if rss:
                    res[aff].setdefault("peaks", []).append(proc_status_bytes("VmHWM") - base)
            except Exception as exc:
                res[aff]["status"], res[aff]["error"] = describe_error(exc, budget)
            gc.collect()
    if device.type == "cuda":
        for aff in alive:
            if res[aff]["status"] == "ok":
                torch.cuda.synchronize(device)
                torch.cuda.reset_peak_memory_stats(device)
                base = torch.cuda.memory_allocated(device)
                steps[aff]()
                torch.cuda.synchronize(device)
                res[aff]["peak_extra_bytes"] = torch.cuda.max_memory_allocated(device) - base
    for r in res.values():
        if r.get("peaks"):
            r["peak_extra_bytes"] = sorted(r["peaks"])[len(r["peaks"]) // 2]
    return {"providers": res, "threads": torch.get_num_threads()}


def run(args, log, save_partial=None) -> list[dict]:
    """Rows of the models suite (mode "full": a whole training step); `save_partial(rows)` is
    called after each model. `args.cases` (substrings) selects models."""
    from densecorr.bench.harness import MEMORY_ENV, MiB, _row, run_worker

    rows = []
    budget = int(args.memory_budget_gib * 2**30)
    keys = [c.strip() for c in (args.cases or "").split(",") if c.strip()]
    for model in MODELS:
        name = case_name(model)
        if keys and not any(k in name for k in keys):
            continue
        log(f"[models] {name}")
        case = dict(case=name, kind="model", family=None, size=SIZE * SIZE, label=f"{model}: densecorr ops vs affinity='naive'")
        common = dict(model=model, device=args.device, budget_bytes=budget, threads=args.threads)
        t0 = time.perf_counter()
        res = run_worker(dict(kind="model_time", variants=list(VARIANTS), repeats=args.repeats, **common), MEMORY_ENV)
        log(f"  timed in {time.perf_counter() - t0:.1f} s")
        for aff in VARIANTS:
            r = (res.get("providers") or {}).get(aff, {"status": res.get("status", "failed"), "error": res.get("error")})
            row = _row(
                case, aff, "full", status="ok" if r.get("times") else r["status"],
                note=None if r["status"] == "ok" else r.get("error"),
                times_ms=[t * 1e3 for t in r.get("times", [])], first_call_s=r.get("first_call_s"),
                first_loss=r.get("first_loss"), threads=res.get("threads"),
            )
            if r.get("peak_extra_bytes") is not None:
                row["peak_extra_mib"] = r["peak_extra_bytes"] / MiB
                row["memory_method"] = (
                    "torch.cuda.max_memory_allocated" if args.device.startswith("cuda")
                    else "peak RSS growth of a step in the timing process (VmHWM reset), median"
                )
            rows.append(row)
        if save_partial is not None:
            save_partial(rows)
        losses = [r.get("first_loss") for r in rows[-2:]]
        if all(isinstance(x, float) for x in losses):
            log(f"  first-step loss densecorr {losses[0]:.6f}, naive {losses[1]:.6f}")
    return rows
