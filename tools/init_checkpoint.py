"""Write the random initialisation of a training run's model as a model checkpoint.

    python tools/init_checkpoint.py RUN/ckpt-00000100.pt OUT.pt

The network is built from the checkpoint's model config and seeded as `densecorr train`
seeds it (models.registry.init_model's rule: mix_seed(seed, "init")), so OUT.pt is what
`NAME:init` will be once RUN's checkpoint is shipped: evaluate a candidate recipe against
its own init before shipping it (`densecorr eval-davis --model OUT.pt`)."""
import sys

import torch

from densecorr.checkpoint import read_model, save_model
from densecorr.models import create
from densecorr.training import mix_seed


def main(src: str, out: str) -> None:
    ckpt = read_model(src)
    config = dict(ckpt["config"])
    seed = ((ckpt.get("trained") or {}).get("train_config") or {}).get("seed", 0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(mix_seed(seed, "init") % 2**63)
        model = create(ckpt["model"], config)
    save_model(out, ckpt["model"], config, model.state_dict())
    print(f"wrote {out}: {ckpt['model']} at init (seed {seed})")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python tools/init_checkpoint.py CHECKPOINT OUT.pt")
    main(*sys.argv[1:])
