"""Logging of a run: the console (through a tqdm bar when one is shown), OUT/log.jsonl (one JSON
object per logged step, evaluation or replica check), TensorBoard event files in OUT/tb when
the `tensorboard` package is installed; and `plot_log`, OUT/curves.png from the log.
"""
from __future__ import annotations

import json
import math
import os
import time


class Logger:
    """Console (through tqdm when a bar is shown), OUT/log.jsonl and TensorBoard (if installed).
    Only rank 0 writes."""

    def __init__(self, out: str, enabled: bool, bar_total: int, bar_start: int, quiet: bool):
        self.enabled = enabled
        self.bar = None
        self.jsonl = None
        self.tb = None
        if not enabled:
            return
        os.makedirs(out, exist_ok=True)
        path = os.path.join(out, "log.jsonl")
        self.jsonl = open(path, "a")
        if self.jsonl.tell() > 0:  # a line cut short by a kill must not swallow the next one
            with open(path, "rb") as f:
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":
                    self.jsonl.write("\n")
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(os.path.join(out, "tb"))
        except ImportError:
            self.tb = None
        if not quiet:
            from tqdm import tqdm

            self.bar = tqdm(total=bar_total, initial=bar_start, unit="step", dynamic_ncols=True, mininterval=1.0)

    def print(self, msg: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(msg)
        else:
            print(msg, flush=True)

    def record(self, step: int, values: dict, kind: str = "train") -> None:
        if not self.enabled:
            return
        row = {"kind": kind, "step": step, "time": time.time(), **values}
        self.jsonl.write(json.dumps(row) + "\n")
        self.jsonl.flush()
        if self.tb is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)) and math.isfinite(v):
                    self.tb.add_scalar(f"{kind}/{k}", v, step)

    def progress(self, n: int, postfix: dict) -> None:
        if self.bar is not None:
            self.bar.update(n)
            self.bar.set_postfix(postfix, refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.jsonl is not None:
            self.jsonl.close()
        if self.tb is not None:
            self.tb.close()


def plot_log(out: str) -> str | None:
    """Draw OUT/curves.png from OUT/log.jsonl: the loss and its terms against the step, and J&F
    when the run evaluated. Returns the path, or None without matplotlib or logged steps.
    After a resume the re-run steps are logged again; the last row of each step wins."""
    from densecorr.system import signals_deferred

    try:
        # A SIGTERM/Ctrl-C raised inside matplotlib's first import leaves it half-initialised
        # (AttributeError on the next import, not a clean stop): the signal waits until it is done.
        with signals_deferred():
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
    except ImportError:
        return None
    rows: dict[tuple[str, int], dict] = {}
    with open(os.path.join(out, "log.jsonl")) as f:
        for line in f:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # a line cut short by a kill
                continue
            rows[(row.get("kind"), row.get("step"))] = row
    train_rows = [r for (k, _), r in sorted(rows.items(), key=lambda kv: kv[0][1]) if k == "train"]
    eval_rows = [r for (k, _), r in sorted(rows.items(), key=lambda kv: kv[0][1]) if k == "eval"]
    if not train_rows:
        return None
    skip = {"kind", "step", "time", "lr", "clips_per_s", "epoch", "grad_norm"}
    terms = [k for k in train_rows[-1] if k not in skip and isinstance(train_rows[-1][k], (int, float))]
    fig, axes = plt.subplots(1, 2 if eval_rows else 1, figsize=(11 if eval_rows else 6, 3.6), squeeze=False)
    ax = axes[0][0]
    steps = [r["step"] for r in train_rows]
    for k in terms:
        ax.plot(steps, [r.get(k, float("nan")) for r in train_rows], label=k, lw=1.5 if k == "loss" else 0.8)
    ax.set_xlabel("step")
    ax.set_title("training loss")
    ax.legend(fontsize=8)
    if eval_rows:
        ax = axes[0][1]
        ax.plot([r["step"] for r in eval_rows], [r["J&F"] for r in eval_rows], "o-", label="J&F")
        ax.set_xlabel("step")
        ax.set_title("DAVIS J&F (eval_every)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    path = os.path.join(out, "curves.png")
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    os.replace(tmp, path)
    return path


__all__ = ["Logger", "plot_log"]
