import sys

from densecorr.bench import main

sys.exit(main(sys.argv[1:]))
