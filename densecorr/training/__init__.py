"""Training of the self-supervised correspondence models (densecorr.models) on unlabelled video.

    densecorr train --model mast --preset cpu --out runs/mast      (densecorr/cli/train.py)
    torchrun --nproc_per_node 4 examples/train.py --model mast --preset paper --data VIDEOS --out runs/mast
    densecorr export runs/mast/ckpt-00004000.pt mast.pt            (export_model)
    densecorr plot runs/mast                                       (plot_log)

or from Python: `train(preset("mast", "cpu"), out="runs/mast")`.

One module per concern:
- `config`: `TrainConfig` (validated: a bad field is one ValueError line), `preset(model, name)`
  (the presets sit beside each model: `PRESETS` in models/<name>.py), and a config built from
  plain values (`config_from_values`: preset, config file, FIELD=VALUE overrides).
- `data`: the sequences (an unreadable one is skipped with a warning), `SeededClips` (a clip is
  a function of its stream position; a corrupt frame or one of another size is skipped with one
  warning and its clips are replaced deterministically) and `StreamBatches`, the deterministic
  sample stream: epoch e is a seeded permutation of all clips, global batch s is stream
  positions [s G, (s + 1) G), G = batch_size x world_size x accum_steps, split into
  world_size x accum_steps micro-batches. So a run resumes exactly from a checkpoint, and N
  processes with batch b give the same parameters as one process with batch b and accum_steps N
  (the BatchNorm statistics are then per micro-batch in both).
- `state`: RNG states, training checkpoints `OUT/ckpt-<step>.pt` every `ckpt_every` steps
  (written atomically through densecorr.checkpoint, the last `keep_last` kept; each is also a
  model checkpoint, plus "train": optimiser, scheduler, scaler, step, RNG states of every rank,
  the TrainConfig), resuming, and `export_model` (the weights-only model checkpoint).
- `log`: console, `OUT/log.jsonl`, TensorBoard (when installed), a tqdm bar; `plot_log` draws
  `OUT/curves.png` (at every checkpoint, and on demand).
- `optim`: Adam/AdamW/SGD, warm-up and a constant, step or cosine schedule, AMP dtype.
- `distributed`: DDP under `torchrun` (NCCL on GPU, gloo on CPU).
- `loop`: `train_step` (accumulation, AMP, gradient clipping; a step with a non-finite loss is
  skipped before backward, `max_skipped_steps` in a row stop the run with `TrainingDiverged`)
  and `train`, with the periodic J&F on DAVIS (`eval_every`).

Resuming uses the TrainConfig given now (so `steps`, the schedule or the data can change between
phases); state that counts forward passes inside a model (CorrFlow's scheduled sampling)
advances once per micro-batch.

Training data: DAVIS-2016 (CC BY-NC 4.0, Perazzi et al., CVPR 2016) when the default is used.
"""
from densecorr.checkpoint import CheckpointError
from densecorr.training.config import TrainConfig, config_from_values, model_presets, parse_value, preset, read_config_file
from densecorr.training.data import SeededClips, StreamBatches, default_train_root, mix_seed, readable_sequences
from densecorr.training.distributed import DistInfo
from densecorr.training.log import Logger, plot_log
from densecorr.evaluation import evaluate_davis  # noqa: F401  (the periodic evaluation; its home is densecorr.evaluation)
from densecorr.training.loop import StepResult, TrainingDiverged, train, train_step
from densecorr.training.optim import build_optimizer, lr_factor
from densecorr.training.state import (
    CHECKPOINT_FORMAT,
    export_model,
    find_resume,
    list_checkpoints,
    load_checkpoint,
    parameter_fingerprint,
    save_checkpoint,
)

_mix = mix_seed  # the name tests and notebooks used for the seed mixer

__all__ = [
    "TrainConfig", "preset", "model_presets", "config_from_values", "parse_value", "read_config_file",
    "SeededClips", "StreamBatches", "default_train_root", "readable_sequences", "mix_seed",
    "DistInfo", "Logger", "plot_log", "StepResult", "TrainingDiverged", "train", "train_step",
    "build_optimizer", "lr_factor", "CHECKPOINT_FORMAT", "CheckpointError", "export_model", "find_resume",
    "list_checkpoints", "load_checkpoint", "parameter_fingerprint", "save_checkpoint",
]
