"""The comparison harness, installed with the package: densecorr's ops and models against the
alternatives a user would otherwise write (naive bmm+softmax, SDPA with V padded, the
correlation sampler + unfold, Flex Attention, ...), median time and peak memory side by
side, written as JSON/CSV/PNG with the machine, the versions and the commit.

    densecorr bench --suite global --quick          # or: python -m densecorr.bench ...
    densecorr bench report results/*.json           # the table of earlier runs
    python -m benchmarks ...                        # the same, from a source checkout

Providers that need packages densecorr does not depend on (triton, NATTEN, the
correlation sampler, matplotlib for the plot) report themselves as unavailable. The
methodology is in the repository's benchmarks/README.md.
"""
from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    """`densecorr bench [report FILE.json... | harness arguments]`; the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv[:1] == ["report"]:
            from densecorr.bench import report

            if len(argv) == 1:
                print("usage: densecorr bench report FILE.json [FILE.json ...]", file=sys.stderr)
                return 2
            report.main(argv[1:])
        else:
            from densecorr.bench import harness

            harness.main(argv)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2), already printed
        return exc.code if isinstance(exc.code, int) else 1
    except FileNotFoundError as exc:
        print(f"densecorr bench: error: {exc.strerror}: {exc.filename}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("densecorr bench: interrupted (what was measured is in the .partial files)", file=sys.stderr)
        return 130
    return 0


__all__ = ["main"]
