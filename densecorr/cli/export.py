"""`densecorr export CHECKPOINT DEST`: the weights-only model checkpoint of a training checkpoint."""
from __future__ import annotations

import os

from densecorr.data.io import DataError

NAME = "export"


def add(sub) -> None:
    p = sub.add_parser(NAME, help="write the model checkpoint (model, config, weights) of a training checkpoint, loadable with --model DEST")
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="a training checkpoint (RUN/ckpt-<step>.pt)")
    p.add_argument("dest", metavar="DEST", help="the model checkpoint to write (e.g. mast.pt)")


def run(args) -> int:
    from densecorr import training

    if os.path.isdir(args.dest):
        raise DataError(f"DEST {args.dest!r} is a folder; give the path of the file to write")
    out = training.export_model(args.checkpoint, args.dest, affinity="densecorr", backend=None)
    print(f"wrote {args.dest}: {out['model']} at step {out['trained']['step']}")
    return 0
