"""Results of the harness: the machine description, the table, JSON, CSV and the size plot."""
from __future__ import annotations

import csv
import datetime
import json
import os
import subprocess

from densecorr.bench.providers import PROVIDERS
from densecorr.system import densecorr_info, machine_info

CSV_FIELDS = [
    "case", "kind", "size", "family", "provider", "mode", "status", "median_ms", "min_ms",
    "peak_extra_mib", "ratio", "max_abs_err", "first_call_s", "repeats", "note",
]


def git_commit(repo: str) -> dict:
    def git(*a):
        return subprocess.run(["git", "-C", repo, *a], capture_output=True, text=True, timeout=20)

    try:
        head = git("rev-parse", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
        return {
            "commit": head.stdout.strip() if head.returncode == 0 else None,
            "dirty": bool(dirty.stdout.strip()) if dirty.returncode == 0 else None,
        }
    except (OSError, subprocess.TimeoutExpired):
        return {"commit": None, "dirty": None}


def assemble(args, cases: list[dict], rows: list[dict], started: float) -> dict:
    """The JSON document: settings, machine, versions, commit, date, cases, providers, rows."""
    from densecorr.bench.harness import REPO_ROOT

    used = sorted({r["provider"] for r in rows})
    notes = sorted({f"{r['provider']}: {r['note']}" for r in rows if r["status"] == "skipped" and r.get("note")})
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "elapsed_s": round(datetime.datetime.now().timestamp() - started, 1),
        "settings": {
            "suite": args.suite, "quick": args.quick, "repeats": args.repeats, "modes": args.modes,
            "device": args.device, "dtype": args.dtype, "worker_threads": args.threads, "memory_budget_gib": round(args.memory_budget_gib, 1),
            "statistic": "median over repeats; providers alternate, order rotated each repeat",
            "memory": "CUDA: torch.cuda.max_memory_allocated growth" if args.device.startswith("cuda")
            else "peak RSS growth in a fresh process per (case, provider, mode)",
        },
        "machine": machine_info(args.device),
        "densecorr": densecorr_info(),
        "git": git_commit(REPO_ROOT),
        "providers": {p: PROVIDERS[p].about for p in used if p in PROVIDERS},
        "cases": cases,
        "results": rows,
        "notes": notes,
    }


def _fmt(x, spec):
    return "-" if x is None else format(x, spec)


def format_table(rows: list[dict]) -> str:
    """Plain-text table: case, provider, mode, median ms, peak extra MiB, ratio vs densecorr."""
    head = ["case", "provider", "mode", "median ms", "peak extra MiB", "x densecorr", "note"]
    lines = []
    for r in rows:
        note = r.get("note") or r.get("memory_note") or ""
        if r["status"] != "ok":
            note = f"[{r['status']}] {note}"
        lines.append([
            r["case"], r["provider"], r["mode"], _fmt(r["median_ms"], ".1f"), _fmt(r["peak_extra_mib"], ".1f"),
            _fmt(r["ratio"], ".2f"), note[:70],
        ])
    widths = [max(len(str(x)) for x in col) for col in zip(head, *lines)]
    right = {3, 4, 5}

    def fmt_line(cells):
        return "  ".join(str(c).rjust(w) if i in right else str(c).ljust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    out = [fmt_line(head), fmt_line(["-" * w for w in widths])]
    prev = None
    for cells in lines:
        if prev is not None and cells[0] != prev:
            out.append("")
        out.append(fmt_line(cells))
        prev = cells[0]
    return "\n".join(out)


def write_csv(rows: list[dict], path: str) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({**r, "repeats": len(r.get("times_ms") or [])})


def plot(rows: list[dict], path: str) -> bool:
    """Time and peak extra memory against problem size, one line per provider, for each case
    family (columns: family x mode). False when no measured case belongs to a family."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in rows if r["status"] == "ok" and r.get("family") and r["median_ms"] is not None]
    panels = []
    for fam in sorted({r["family"] for r in ok}):
        for mode in ("forward", "full", "backward"):
            sel = [r for r in ok if r["family"] == fam and r["mode"] == mode]
            if sel:
                panels.append((fam, mode, sel))
    panels = [p for p in panels if p[1] != "backward"] or panels  # backward is full - forward
    if not panels:
        return False
    fig, axes = plt.subplots(2, len(panels), figsize=(4.6 * len(panels), 7.5), squeeze=False)
    providers = sorted({r["provider"] for _, _, sel in panels for r in sel})
    colors = {p: f"C{i % 10}" for i, p in enumerate(providers)}
    for j, (fam, mode, sel) in enumerate(panels):
        for prov in providers:
            pts = sorted((r["size"], r["median_ms"], r["peak_extra_mib"]) for r in sel if r["provider"] == prov)
            if not pts:
                continue
            xs = [p[0] for p in pts]
            style = dict(color=colors[prov], marker="o", ms=4, label=prov, lw=2 if prov == "densecorr" else 1.2)
            axes[0, j].plot(xs, [p[1] for p in pts], **style)
            mem = [(x, max(m, 0.1)) for x, _, m in pts if m is not None]  # log axis: floor at 0.1 MiB
            if mem:
                axes[1, j].plot([m[0] for m in mem], [m[1] for m in mem], **style)
        axes[0, j].set_title(f"{fam}\n{mode}", fontsize=10)
        axes[0, j].set_ylabel("median time (ms)")
        axes[1, j].set_ylabel("peak extra memory (MiB, >= 0.1)")
        xlabel = "N = M (tokens)" if sel[0]["kind"] == "global" else "pixels H*W*T"
        for i in range(2):
            axes[i, j].set_xscale("log", base=2)
            axes[i, j].set_yscale("log")
            axes[i, j].set_xlabel(xlabel)
            axes[i, j].grid(True, which="both", alpha=0.3)
        axes[0, j].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def write_all(result: dict, out_dir: str, tag: str, plot_png: bool = True) -> list[str]:
    os.makedirs(out_dir, exist_ok=True)
    stem = os.path.join(out_dir, tag)
    with open(stem + ".json", "w") as f:
        json.dump(result, f, indent=1)
    write_csv(result["results"], stem + ".csv")
    paths = [stem + ".json", stem + ".csv"]
    if plot_png and plot(result["results"], stem + ".png"):
        paths.append(stem + ".png")
    return paths


def main(argv=None):
    """`densecorr bench report FILE.json...`: the table of earlier runs, one after another."""
    import sys

    for path in (sys.argv[1:] if argv is None else argv):
        with open(path) as f:
            doc = json.load(f)
        m, s = doc["machine"], doc["settings"]
        print(f"{path}: {doc['date']}, {m['cpu']} ({m['cores']} cores, load {m.get('load_average')}), "
              f"torch {m['torch']}, repeats {s['repeats']}, modes {','.join(s['modes'])}")
        print(format_table(doc["results"]))
        print()


if __name__ == "__main__":
    main()
