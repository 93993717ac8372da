"""`densecorr train ...`: train a model on unlabelled video (the arguments of densecorr.training)."""
from __future__ import annotations

NAME = "train"
FORWARDS = True  # every argument after "train" goes to densecorr.training's own parser


def add(sub) -> None:
    p = sub.add_parser(NAME, add_help=False, help="train a model on unlabelled video (densecorr train --help)")
    p.set_defaults(forwards_arguments=True)


def run(args) -> int:
    from densecorr import training

    return training.main(args.rest, prog="densecorr train")
