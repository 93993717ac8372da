"""`densecorr eval-keypoints`: PCK of keypoint propagation on BADJA joint tracks.

Prints a table and writes results.csv and results.json into --out (moved into place together
when complete; an earlier densecorr run's results there are replaced).
"""
from __future__ import annotations

import os

from densecorr.cli import common

NAME = "eval-keypoints"
RESULTS = ["results.csv", "results.json"]
COLUMNS = [("sequence", "sequence", -1), ("annotated", "frames scored", -1), ("joints", "joints", -1), ("PCK@0.1", "PCK@0.1", 3), ("PCK@0.2", "PCK@0.2", 3),
           ("s_per_frame", "s/frame", 3), ("peak_mib", "peak MiB", 0)]


def add(sub) -> None:
    p = sub.add_parser(NAME, help="PCK of keypoint propagation on BADJA joint tracks")
    p.add_argument("--root", default=None, help="DAVIS root holding BADJA/joint_annotations/<seq>.json (default as for eval-davis)")
    p.add_argument("--annotations", default=None, help="folder of BADJA <seq>.json files (default ROOT/BADJA/joint_annotations)")
    p.add_argument("--sequences", nargs="+", default=None, help="sequence names (default: every annotated sequence)")
    p.add_argument("--sigma", type=common.positive_float, default=1.0, help="heat-map standard deviation in feature cells (> 0; default 1)")
    p.add_argument("--out", default=None, help="folder for results.csv / results.json (default eval-keypoints-<model>-<protocol>)")
    common.add_model_args(p, default_protocol="crw")  # keypoint heat maps: crw (dino's rules are for id masks)


def run(args) -> int:
    from densecorr.cli.output import OutputDir
    from densecorr.data.davis import Davis
    from densecorr.evaluation import keypoint_sequences, keypoint_total

    default = f"eval-keypoints-{common.model_tag(args.model)}-{args.protocol}"
    out = OutputDir(args.out if args.out is not None else default, overwrite=args.overwrite)  # refused before any work
    out.claim(RESULTS)
    root = common.davis_root(args)
    davis = Davis(root)
    ann_dir = args.annotations or os.path.join(root, "BADJA", "joint_annotations")
    if not os.path.isdir(ann_dir):
        from densecorr.data.io import DataError

        raise DataError(f"no BADJA annotation folder {ann_dir!r}; pass --annotations")
    names = args.sequences or sorted(os.path.splitext(f)[0] for f in os.listdir(ann_dir) if f.endswith(".json"))
    propagator, desc = common.make_propagator(args)
    print(f"model {desc}, protocol {propagator.protocol.name}, {len(names)} sequences, height {args.height or 'native'}; writing to {out.given}", flush=True)
    try:
        results = list(keypoint_sequences(propagator, davis, ann_dir, names, args.sigma, progress=not args.quiet))
        total = keypoint_total(results)
        rows = [r.row for r in results] + [total]
        meta = common.meta(args, desc, root, propagator)
        meta.update(sigma=args.sigma, pck="joints visible in the start and target frame; threshold alpha x max side of the box of the target frame's visible joints")
        with out.entries_together(RESULTS) as paths:
            common.write_csv(paths["results.csv"], rows)
            common.write_json(paths["results.json"], {"meta": meta, "sequences": rows[:-1], "mean": total})
    except BaseException:
        out.abandon()
        raise
    print()
    common.print_table(rows, COLUMNS)
    print(f"\nwrote {os.path.join(out.given, 'results.csv')} and results.json")
    return 0
