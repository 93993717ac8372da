"""`densecorr train`: train a self-supervised correspondence model on unlabelled video.

    densecorr train --model mast --preset cpu --out runs/mast
    densecorr train --config corrflow.yaml --set lr=5e-4 --out runs/corrflow
    torchrun --nproc_per_node 4 examples/train.py --model mast --preset paper --data VIDEOS --out runs/mast

Parses the arguments into a TrainConfig (densecorr.training.config_from_values: the preset,
then --config, --set, --model-set, then the explicit flags) and calls densecorr.training.train.
Run it again with the same --out to resume from the last checkpoint. `densecorr export` and
`densecorr plot` handle a run's checkpoints and curves.
"""
from __future__ import annotations

import json
import os
import sys

NAME = "train"


def add(sub) -> None:
    p = sub.add_parser(NAME, help="train a model on unlabelled video (resume: run again with the same --out)",
                       description="Train a self-supervised correspondence model (densecorr.models) on unlabelled video. "
                                   "Use torchrun for several processes.")
    add_arguments(p)


def add_arguments(p) -> None:
    p.add_argument("--model", default=None, help="registered model name (densecorr.models.list_models())")
    p.add_argument("--preset", default="auto", help="hyper-parameters: 'paper', 'cpu' (a small CPU run) or another preset in the model's PRESETS (auto: paper on a GPU, cpu otherwise)")
    p.add_argument("--config", default=None, help="YAML/JSON file of TrainConfig fields (model_config: the model's fields), applied over the preset")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="FIELD=VALUE", help="override a TrainConfig field (value parsed as YAML), e.g. --set lr=5e-4 --set crop=[128,128]")
    p.add_argument("--model-set", dest="model_sets", action="append", default=[], metavar="FIELD=VALUE", help="override a model config field, e.g. --model-set width=32")
    p.add_argument("--data", nargs="+", default=None, help="folders of frames, video files or roots of them (default ../shared/data/davis2016_train_256p)")
    p.add_argument("--out", default=None, help="run folder for checkpoints and logs (default runs/<model>)")
    p.add_argument("--steps", type=int, default=None, help="optimiser steps in all (>= 1)")
    p.add_argument("--batch-size", type=int, default=None, help="clips per process per micro-batch (>= 1)")
    p.add_argument("--lr", type=float, default=None, help="learning rate (a finite number > 0)")
    p.add_argument("--device", default=None, help="auto, cpu, cuda")
    p.add_argument("--eval-every", type=int, default=None, help="steps between DAVIS J&F evaluations (0: never)")
    p.add_argument("--resume", default="auto", help="'auto' (newest checkpoint in --out, default), a checkpoint path, or 'none'")
    p.add_argument("--print-config", action="store_true", help="print the resolved TrainConfig as JSON and exit")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def config_from_args(args):
    from densecorr.training import config_from_values

    return config_from_values(args.model, args.preset, args.config, args.sets, args.model_sets, data=args.data, steps=args.steps,
                              batch_size=args.batch_size, lr=args.lr, device=args.device, eval_every=args.eval_every)


def run(args) -> int:
    from densecorr import training
    from densecorr.training.distributed import shutdown

    try:
        cfg = config_from_args(args)
        if args.print_config:
            print(json.dumps(cfg.to_dict(), indent=1))
            return 0
        out = args.out or os.path.join("runs", cfg.model)
        training.train(cfg, out, resume=None if args.resume == "none" else args.resume, quiet=args.quiet)
    except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM: the checkpoints written so far are complete
        from densecorr.cli import Terminated

        print(f"densecorr train: {'terminated' if isinstance(exc, Terminated) else 'interrupted'}; "
              "run it again with the same --out to resume from the last checkpoint", file=sys.stderr)
        return 143 if isinstance(exc, Terminated) else 130
    finally:
        shutdown()
    return 0
