"""python -m densecorr.training ... (the same as `densecorr train`)."""
import sys

from densecorr.training.command import main

sys.exit(main(prog="python -m densecorr.training"))
