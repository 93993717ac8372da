"""The `densecorr` command: one thin module per subcommand (parse, call the library, print).

    densecorr track VIDEO_OR_FOLDER --mask FIRST.png [--out DIR] [--model default] [--protocol dino]
    densecorr eval-davis [--root DAVIS_ROOT] [--sequences ...] [--model ...] [--protocol ...] [--out DIR]
    densecorr eval-keypoints [--root DAVIS_ROOT] [--sequences ...] [--model ...] [--protocol ...]
    densecorr train ...                  (densecorr.training's arguments)
    densecorr export CHECKPOINT DEST     (weights-only model checkpoint of a training checkpoint)
    densecorr plot RUN                   (RUN/curves.png from RUN/log.jsonl)
    densecorr bench ...                  (densecorr.bench's arguments)
    densecorr --version

Each module in SUBCOMMANDS has `add(subparsers)` (declares its arguments) and `run(args) ->
exit status`; a module with FORWARDS = True gets every argument after its name in
`args.rest`. Bad input ends with one line `densecorr: error: ...` and exit status 2; Ctrl-C
exits with 130 and SIGTERM with 143, each with one line, and leaves no output that looks
complete (densecorr.cli.output).
"""
from __future__ import annotations

import signal
import sys

from densecorr.cli import bench, eval_davis, eval_keypoints, export, plot, track, train
from densecorr.cli.common import Parser
from densecorr.data.io import DataError

SUBCOMMANDS = [track, eval_davis, eval_keypoints, train, export, plot, bench]


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that every cleanup path runs."""


def _on_sigterm(signum, frame):
    raise Terminated()


def build_parser() -> Parser:
    import densecorr

    parser = Parser(prog="densecorr", description="Dense-correspondence tracking, evaluation and training (label propagation, DAVIS J&F, BADJA PCK).")
    parser.add_argument("--version", action="version", version=f"densecorr {densecorr.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for module in SUBCOMMANDS:
        module.add(sub)
    return parser


def _module(name: str):
    for module in SUBCOMMANDS:
        if module.NAME == name:
            return module
    raise KeyError(name)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `densecorr` console script; returns the exit status."""
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    module = _module(args.command)
    if getattr(module, "FORWARDS", False):
        args.rest = rest
    elif rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    previous = None
    try:
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:  # not the main thread: leave signals alone
        previous = None
    try:
        return module.run(args)
    except DataError as exc:
        print(f"densecorr: error: {exc}", file=sys.stderr)
        return 2
    except Terminated:
        print("densecorr: terminated (SIGTERM); unfinished outputs were removed", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print("densecorr: interrupted; unfinished outputs were removed", file=sys.stderr)
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


__all__ = ["main", "build_parser", "SUBCOMMANDS", "Terminated"]
