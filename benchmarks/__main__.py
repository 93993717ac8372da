# `python -m benchmarks ...` from a source checkout: the installed harness, densecorr.bench.
import sys

from densecorr.bench import main

sys.exit(main(sys.argv[1:]))
