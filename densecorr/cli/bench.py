"""`densecorr bench ...`: the benchmark harness (densecorr.bench; its own arguments)."""
from __future__ import annotations

import sys

NAME = "bench"
FORWARDS = True


def add(sub) -> None:
    p = sub.add_parser(NAME, add_help=False, help="benchmarks: densecorr ops and models against the alternatives (densecorr bench --help)")
    p.set_defaults(forwards_arguments=True)


def run(args) -> int:
    import importlib

    try:
        bench = importlib.import_module("densecorr.bench")
    except ImportError as exc:
        print(f"densecorr bench: error: the benchmark harness densecorr.bench cannot be imported ({exc}); reinstall densecorr", file=sys.stderr)
        return 2
    return bench.main(args.rest)
