"""`python -m densecorr`: the densecorr command (densecorr.cli.main)."""
import sys

from densecorr.cli import main

if __name__ == "__main__":
    sys.exit(main())
