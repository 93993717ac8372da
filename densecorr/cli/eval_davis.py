"""`densecorr eval-davis`: J&F of label propagation on DAVIS sequences.

Prints a table and writes, into --out, results.csv, results.json (settings, per-frame scores)
and per sequence <name>/masks/, overlays/ and overlay.gif. Each sequence's folder is moved
into place when the sequence is done, and the results files when all are; both replace an
earlier run's atomically. Results of an earlier run into the same --out with the same settings
(model, protocol, height, frames, root) are merged: sequences evaluated now replace theirs,
the others are kept, and the mean is recomputed over all.
"""
from __future__ import annotations

import json
import os

from densecorr.cli import common
from densecorr.data.io import DataError

NAME = "eval-davis"
RESULTS = ["results.csv", "results.json"]
COLUMNS = [("sequence", "sequence", -1), ("frames", "frames", -1), ("J&F", "J&F", 3), ("J_mean", "J", 3), ("F_mean", "F", 3),
           ("J_recall", "J-recall", 3), ("J_decay", "J-decay", 3), ("s_per_frame", "s/frame", 3), ("peak_mib", "peak MiB", 0)]


def add(sub) -> None:
    p = sub.add_parser(NAME, help="J&F of label propagation on DAVIS sequences")
    p.add_argument("--root", default=None, help="DAVIS root (JPEGImages/, Annotations/); default ../shared/data/davis2016_subset when present, else the shipped sample")
    p.add_argument("--sequences", nargs="+", default=None, help="sequence names (default: the root's ImageSets val list)")
    p.add_argument("--out", default=None, help="output folder for results.csv, results.json and per-sequence masks/overlays (default eval-davis-<model>-<protocol>); an earlier run's results with the same settings are merged")
    p.add_argument("--max-frames", type=common.int_at_least(2), default=None, help="evaluate only the first N frames of each sequence (>= 2; quick checks)")
    p.add_argument("--no-overlays", action="store_true", help="write only masks and results, no overlay images")
    common.add_model_args(p)


def previous_results(out, settings: dict) -> dict | None:
    """The results.json of an earlier run into `out` that may be merged with this one (None:
    none). DataError when it was written with other settings and --overwrite is not given."""
    path = os.path.join(out.path, "results.json")
    if not out.owns("results.json") or not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            doc = json.load(f)
        old = {k: doc["meta"].get(k) for k in settings}
        doc["sequences"], doc["per_frame"]  # noqa: B018  (both must be there)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        if out.overwrite:
            return None
        raise DataError(f"--out {out.given!r} holds a results.json that cannot be read; choose another folder or pass --overwrite to replace it") from None
    if old != settings:
        if out.overwrite:
            return None
        diff = ", ".join(f"{k} {old[k]!r} (now {settings[k]!r})" for k in settings if old[k] != settings[k] and k != "model_description")
        raise DataError(f"--out {out.given!r} holds results of other settings ({diff}); choose another folder or pass --overwrite to start its results afresh")
    return doc


def scores_from_json(name: str, per_frame: dict):
    from densecorr.metrics import SequenceScores

    j = {int(k): v for k, v in per_frame["J"].items()}
    f = {int(k): v for k, v in per_frame["F"].items()}
    return SequenceScores(name, sorted(j), j, f, list(per_frame["frames"]))


def run(args) -> int:
    from densecorr.cli.output import OutputDir
    from densecorr.data.davis import Davis
    from densecorr.evaluation import SequenceResult, davis_sequences, davis_total

    default = f"eval-davis-{common.model_tag(args.model)}-{args.protocol}"
    out = OutputDir(args.out if args.out is not None else default, overwrite=args.overwrite)  # refused before any work
    root = common.davis_root(args)
    davis = Davis(root)
    names = list(args.sequences or davis.sequences)
    for n in names:
        davis[n]  # checks every name before any work
    propagator, desc = common.make_propagator(args)
    settings = {**common.settings(args, desc, root, propagator), "max_frames": args.max_frames}
    settings.pop("model_description")
    previous = previous_results(out, settings)
    out.claim(names + RESULTS)
    print(f"model {desc}, protocol {propagator.protocol.name}, {len(names)} sequences, height {args.height or 'native'}; writing to {out.given}", flush=True)

    state = {}

    def on_start(seq, n):
        state["stage"] = out.stage(seq.name)
        state["writer"] = common.Writer.in_folder(state["stage"], n, overlays=not args.no_overlays)

    def on_frame(seq, t, frame, mask):
        state["writer"].add(seq.names[t], frame, mask)

    results: list[SequenceResult] = []
    try:
        for result in davis_sequences(propagator, davis, names, args.max_frames, on_start=on_start, on_frame=on_frame, progress=not args.quiet):
            state["writer"].close()
            out.commit({result.name: state.pop("stage")})
            results.append(result)
            row = result.row
            # one line per sequence, also with --quiet (which only hides the progress bars)
            print(f"{result.name}: J&F {row['J&F']:.3f} (J {row['J_mean']:.3f}, F {row['F_mean']:.3f}), {row['s_per_frame']:.3f} s/frame", flush=True)
        # merge with the earlier results: their rows in their order, replaced where re-run
        done = {r.name: r for r in results}
        merged: list[SequenceResult] = []
        if previous is not None:
            for row in previous["sequences"]:
                name = row["sequence"]
                if name in done:
                    merged.append(done.pop(name))
                elif name in previous["per_frame"]:
                    merged.append(SequenceResult(name, scores_from_json(name, previous["per_frame"][name]), row, row.get("frames", 0)))
        merged += list(done.values())
        total = davis_total(merged)
        rows = [r.row for r in merged] + [total]
        doc = {"meta": {**common.meta(args, desc, root, propagator), "max_frames": args.max_frames},
               "sequences": rows[:-1], "mean": total,
               "per_frame": {r.name: {"frames": r.scores.frames, "J": r.scores.j, "F": r.scores.f} for r in merged}}
        with out.entries_together(RESULTS) as paths:
            common.write_csv(paths["results.csv"], rows)
            common.write_json(paths["results.json"], doc)
    except BaseException:
        stage = state.pop("stage", None)
        if stage is not None:
            import shutil

            shutil.rmtree(stage, ignore_errors=True)
        out.abandon()
        raise
    print()
    common.print_table(rows, COLUMNS)
    from densecorr.evaluation import SCORED_FRAMES

    print(f"({SCORED_FRAMES}; J&F over objects)")
    kept = len(merged) - len(results)
    note = f" ({kept} sequences kept from the earlier run)" if kept else ""
    print(f"\nwrote {os.path.join(out.given, 'results.csv')}, results.json and per-sequence masks/ and overlays/ in {out.given}{note}")
    return 0
