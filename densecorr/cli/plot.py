"""`densecorr plot RUN`: draw RUN/curves.png (loss terms and J&F against the step) from RUN/log.jsonl."""
from __future__ import annotations

import os

from densecorr.data.io import DataError

NAME = "plot"


def add(sub) -> None:
    p = sub.add_parser(NAME, help="draw RUN/curves.png (loss and J&F against the step) from a training run's log.jsonl")
    p.add_argument("run", metavar="RUN", help="a run folder written by densecorr train")


def run(args) -> int:
    from densecorr import training

    if not os.path.isfile(os.path.join(args.run, "log.jsonl")):
        raise DataError(f"no log.jsonl in {args.run!r} (give a run folder written by densecorr train)")
    path = training.plot_log(args.run)
    if path is None:
        raise DataError("plotting needs matplotlib (pip install matplotlib) and at least one logged step")
    print(f"wrote {path}")
    return 0
