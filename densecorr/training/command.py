"""`densecorr train` / examples/train.py: parse the arguments, call the library."""
from __future__ import annotations

import argparse
import json
import os
import sys

from densecorr.data.io import DataError


def build_parser(prog: str = "densecorr train") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="Train a self-supervised correspondence model (densecorr.models) on unlabelled video. Use torchrun for several processes.")
    p.add_argument("--model", default=None, help="registered model name (densecorr.models.list_models())")
    p.add_argument("--preset", default="auto", help="hyper-parameters: 'paper', 'cpu' (a small CPU run) or another preset of the model's PRESETS (auto: paper on GPU, cpu otherwise)")
    p.add_argument("--config", default=None, help="YAML/JSON file of TrainConfig fields (model_config: the model's fields), applied over the preset")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="FIELD=VALUE", help="override a TrainConfig field (value parsed as YAML), e.g. --set lr=5e-4 --set crop=[128,128]")
    p.add_argument("--model-set", dest="model_sets", action="append", default=[], metavar="FIELD=VALUE", help="override a model config field, e.g. --model-set width=32")
    p.add_argument("--data", nargs="+", default=None, help="folders of frames, video files or roots of them (default ../shared/data/davis2016_train_256p)")
    p.add_argument("--out", default=None, help="run folder for checkpoints and logs (default runs/<model>)")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None, help="clips per process per micro-batch")
    p.add_argument("--lr", type=float, default=None, help="learning rate (a finite number > 0)")
    p.add_argument("--device", default=None, help="auto, cpu, cuda")
    p.add_argument("--eval-every", type=int, default=None, help="steps between DAVIS J&F evaluations (0: never)")
    p.add_argument("--resume", default="auto", help="'auto' (newest checkpoint in --out, default), a checkpoint path, or 'none'")
    p.add_argument("--print-config", action="store_true", help="print the resolved TrainConfig as JSON and exit")
    p.add_argument("--export", nargs=2, metavar=("CHECKPOINT", "DEST"), default=None, help="write the weights-only model checkpoint of a training checkpoint to DEST (loadable with --model DEST in densecorr eval-davis) and exit")
    p.add_argument("--plot", metavar="RUN", default=None, help="draw RUN/curves.png (loss and J&F against the step) from RUN/log.jsonl and exit; training also redraws it at every checkpoint")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def config_from_args(args):
    from densecorr.training.config import config_from_values

    return config_from_values(args.model, args.preset, args.config, args.sets, args.model_sets, data=args.data, steps=args.steps,
                              batch_size=args.batch_size, lr=args.lr, device=args.device, eval_every=args.eval_every)


def plot_run(run: str) -> str:
    from densecorr.training.log import plot_log

    if not os.path.isfile(os.path.join(run, "log.jsonl")):
        raise DataError(f"--plot: no log.jsonl in {run!r} (give a run folder written by densecorr train)")
    path = plot_log(run)
    if path is None:
        raise DataError("--plot needs matplotlib (pip install matplotlib) and at least one logged step")
    return path


def main(argv: list[str] | None = None, prog: str = "densecorr train") -> int:
    """`densecorr train` / examples/train.py; returns the exit status (2: bad input or data)."""
    from densecorr.training.distributed import shutdown
    from densecorr.training.loop import train
    from densecorr.training.state import export_model

    args = build_parser(prog).parse_args(argv)
    try:
        if args.plot:
            print(f"wrote {plot_run(args.plot)}")
            return 0
        if args.export:
            out = export_model(*args.export, affinity="densecorr", backend=None)
            print(f"wrote {args.export[1]}: {out['model']} at step {out['trained']['step']}")
            return 0
        cfg = config_from_args(args)
        if args.print_config:
            print(json.dumps(cfg.to_dict(), indent=1))
            return 0
        out = args.out or os.path.join("runs", cfg.model)
        resume = None if args.resume == "none" else args.resume
        train(cfg, out, resume=resume, quiet=args.quiet)
    except DataError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted (resume from the last checkpoint with the same --out)", file=sys.stderr)
        return 130
    finally:
        shutdown()
    return 0


