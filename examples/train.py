"""Train a densecorr model on unlabelled video (the same as `densecorr train`).

    python examples/train.py --model mast --preset cpu --out runs/mast            # CPU, small
    python examples/train.py --model corrflow --preset paper --print-config > corrflow.json  # edit, then
    python examples/train.py --config corrflow.json --out runs/corrflow
    torchrun --nproc_per_node 8 examples/train.py --model mast --preset paper --data VIDEOS --out runs/mast

Interrupt it at any time: run it again with the same --out to resume from the last checkpoint.
`--help` lists the options (densecorr/cli/train.py); the library is densecorr.training.
`densecorr export RUN/ckpt-<step>.pt model.pt` and `densecorr plot RUN` use the run afterwards.
"""
import sys

from densecorr.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
