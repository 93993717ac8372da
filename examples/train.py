"""Train a densecorr model on unlabelled video (the same as `densecorr train`).

    python examples/train.py --model mast --preset cpu --out runs/mast            # CPU, small
    python examples/train.py --model corrflow --preset paper --print-config > corrflow.json  # edit, then
    python examples/train.py --config corrflow.json --out runs/corrflow
    torchrun --nproc_per_node 8 examples/train.py --model mast --preset paper --data VIDEOS --out runs/mast

Interrupt it at any time: run it again with the same --out to resume from the last checkpoint.
See densecorr/training.py for the options (`--help`, `--print-config`).
"""
import sys

from densecorr.training import main

if __name__ == "__main__":
    sys.exit(main(prog="examples/train.py"))
