"""Collect `densecorr eval-davis` results into one markdown table.

    python tools/results_table.py /tmp/evals/*/results.json > RESULTS.md
    python tools/results_table.py "crw, previous checkpoint=old/results.json" ...

One row per results.json (LABEL=PATH names the row LABEL instead of the model's description): model (its description), protocol, height, frames limit, J&F, J, F,
s/frame, peak MiB and the per-sequence J&F in the order of the first file's sequences."""
import json
import sys


def main(paths):
    rows, order = [], None
    for arg in paths:
        label, _, path = arg.rpartition("=")
        with open(path) as f:
            d = json.load(f)
        seqs = d["sequences"]
        if order is None:
            order = [s["sequence"] for s in seqs]
        per = {s["sequence"]: s["J&F"] for s in seqs}
        m, meta = d["mean"], d["meta"]
        rows.append((label or meta["model_description"], meta["protocol"], meta.get("height") or "native",
                     meta.get("max_frames") or "all", m["J&F"], m["J_mean"], m["F_mean"], m["s_per_frame"],
                     m["peak_mib"], ", ".join(f"{per[s]:.3f}" if s in per else "-" for s in order), meta["date"]))
    print("| model | protocol | height | frames | J&F | J | F | s/frame | peak MiB | per sequence (" + ", ".join(order or []) + ") | measured |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]} | **{r[4]:.3f}** | {r[5]:.3f} | {r[6]:.3f} | {r[7]:.2f} | {r[8]:.0f} | {r[9]} | {r[10]} |")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit("usage: python tools/results_table.py RESULTS.json ...")
    main(sys.argv[1:])
