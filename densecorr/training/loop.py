"""The training loop: `train_step` (one optimiser step over accum_steps micro-batches) and
`train` (set up a run, call `train_step` until cfg.steps, log, checkpoint, and evaluate through
densecorr.evaluation.evaluate_davis every cfg.eval_every steps).

A step whose loss is not finite on any rank is skipped before backward (no backward through
NaN, which can crash inside torch's grid_sample backward); so is one whose gradients (outside
fp16's loss scaling, which skips those itself) or updated parameters are not finite. The model's
buffers (BatchNorm statistics, step counters) are restored on a skipped step. After
cfg.max_skipped_steps skipped in a row the run stops with `TrainingDiverged`; no checkpoint is
written at a skipped step or while the parameters are not finite, so the last ones stay good.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import random
import time
from typing import Callable, Iterator

import numpy as np
import torch

from densecorr.data.io import DataError
from densecorr.training.config import TrainConfig
from densecorr.training.data import default_train_root, make_loader, mix_seed, readable_sequences
from densecorr.training.distributed import DistInfo, all_agree, init_distributed, resolve_device, unwrap
from densecorr.training.log import Logger, plot_log
from densecorr.training.optim import amp_dtype as _amp_dtype
from densecorr.training.optim import build_optimizer, build_scheduler
from densecorr.training.state import (
    list_checkpoints,
    open_resume,
    parameters_finite,
    remove_stale_temporaries,
    restore,
    save_checkpoint,
    save_final_model,
)


class TrainingDiverged(DataError):
    """The run stopped: too many steps in a row had a non-finite loss, gradient or parameter."""


@dataclasses.dataclass
class StepResult:
    """What one optimiser step did: `terms` the loss terms (mean over the micro-batches that ran),
    `clips` the clips this process drew, `grad_norm` (nan unless clipping), `skipped` why the
    optimiser did not step (None: it did)."""

    terms: dict
    clips: int
    grad_norm: float = float("nan")
    skipped: str | None = None


def train_step(model, batches: Iterator[torch.Tensor], optimizer, scaler, cfg: TrainConfig, device: torch.device,
               amp: torch.dtype | None = None, info: DistInfo | None = None) -> StepResult:
    """One optimiser step of `model` (the module, or its DDP wrapper) on the next
    cfg.accum_steps micro-batches of `batches` (all of them are drawn even when the step is
    skipped, so the sample stream stays aligned)."""
    info = info or DistInfo()
    net = unwrap(model)
    buffers = {k: b.detach().clone() for k, b in net.named_buffers()}
    optimizer.zero_grad(set_to_none=True)
    terms: dict[str, float] = {}
    clips, skipped = 0, None
    for a in range(cfg.accum_steps):
        clip = next(batches).to(device, non_blocking=True)
        clips += clip.shape[0]
        if skipped:
            continue
        sync = a == cfg.accum_steps - 1 or not info.enabled
        with contextlib.nullcontext() if sync else model.no_sync():
            with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                outputs = model(clip)
            loss = outputs["loss"].float() / cfg.accum_steps
            for k, v in outputs.items():
                terms[k] = terms.get(k, 0.0) + float(v.detach()) / cfg.accum_steps
            if not all_agree(math.isfinite(float(loss.detach())), info, device):  # every rank must agree before backward
                skipped = "non-finite loss"
                continue
            scaler.scale(loss).backward()
    grad_norm = float("nan")
    if not skipped:
        scaler.unscale_(optimizer)
        params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        if cfg.clip_grad is not None:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.clip_grad))
            finite = math.isfinite(grad_norm)
        elif not scaler.is_enabled() and params:
            finite = math.isfinite(float(torch.nn.utils.get_total_norm([p.grad for p in params])))
        else:
            finite = True  # fp16: the scaler skips steps with inf/nan gradients and lowers its scale
        if not finite and not scaler.is_enabled():
            skipped = "non-finite gradients"
        else:
            scaler.step(optimizer)
            scaler.update()
            if not parameters_finite(net):
                skipped = "non-finite parameters after the update"
    if skipped and skipped != "non-finite parameters after the update":
        with torch.no_grad():
            for k, b in net.named_buffers():
                b.copy_(buffers[k])
    if skipped:
        optimizer.zero_grad(set_to_none=True)
    return StepResult(terms, clips, grad_norm, skipped)


class _Window:
    """Mean loss terms and throughput over the steps since the last log line."""

    def __init__(self):
        self.terms: dict[str, list[float]] = {}
        self.clips = 0
        self.start = time.perf_counter()

    def add(self, result: StepResult, world_size: int) -> None:
        for k, v in result.terms.items():
            self.terms.setdefault(k, []).append(v)
        self.clips += result.clips * world_size

    def clips_per_s(self) -> float:
        return self.clips / max(1e-9, time.perf_counter() - self.start)


@dataclasses.dataclass
class _Run:
    cfg: TrainConfig
    out: str
    info: DistInfo
    device: torch.device
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object
    scaler: object
    amp: object
    step: int
    dataset: object
    batches: Iterator
    logger: Logger
    warn: Callable[[str], None]

    @property
    def net(self):
        return unwrap(self.model)


def _setup(cfg: TrainConfig, out: str, resume: str | None, quiet: bool, log: Callable[[str], None] | None) -> _Run:
    """Device, process group, model (seeded), optimiser, resumed state, data and logger of a run."""
    from densecorr import models

    device_hint = "cuda" if (cfg.device == "auto" and torch.cuda.is_available()) or cfg.device.startswith("cuda") else "cpu"
    info = init_distributed(device_hint)
    device = resolve_device(cfg.device, info)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    say = log or print

    def warn(msg):
        if info.main:
            say(msg)

    if info.main:
        for path in remove_stale_temporaries(out):
            warn(f"removed {path} (a checkpoint write that was killed)")
    # Seed before building the model so its initialisation is reproducible; each rank gets its
    # own stream for the models' random augmentations.
    torch.manual_seed(mix_seed(cfg.seed, "init") % 2**63)
    try:
        model = models.create(cfg.model, dict(cfg.model_config)).to(device)
    except (ValueError, TypeError) as exc:  # a model config that does not build
        raise DataError(f"model {cfg.model!r} with config {cfg.model_config}: {str(exc).splitlines()[0]}") from None
    torch.manual_seed(mix_seed(cfg.seed, "rank", info.rank) % 2**63)
    random.seed(mix_seed(cfg.seed, "python", info.rank))
    np.random.seed(mix_seed(cfg.seed, "numpy", info.rank) % 2**32)

    optimizer = build_optimizer(cfg, model.parameters())
    scheduler = build_scheduler(cfg, optimizer)
    amp = _amp_dtype(cfg, device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == torch.float16)
    found = open_resume(resume, out, warn)
    step = restore(found, cfg.model, model, optimizer, scheduler, scaler, info, warn) if found else 0

    if info.enabled:
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    net = unwrap(model)
    net.train()

    roots = cfg.data if cfg.data is not None else default_train_root()
    roots = [roots] if isinstance(roots, str) else list(roots)
    paths = readable_sequences(roots, warn)
    dataset, batches = make_loader(paths, net.clip_length, cfg, info.rank, info.world_size, step, device.type == "cuda")

    logger = Logger(out, info.main, cfg.steps, step, quiet)
    if info.main and step == 0:
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "config.json"), "w") as f:
            json.dump({"train": cfg.to_dict(), "model_config": net.config.to_dict(), "world_size": info.world_size}, f, indent=1)
    logger.print(
        f"training {cfg.model} ({net.num_parameters() / 1e6:.2f} M parameters) on {len(paths)} sequences, {len(dataset)} clips of "
        f"{net.clip_length} frames {tuple(cfg.crop)}, global batch {cfg.batch_size * info.world_size * cfg.accum_steps} "
        f"({info.world_size} process(es) x {cfg.batch_size} x {cfg.accum_steps} accumulation), device {device}, "
        f"amp {amp or 'off'}, steps {step} -> {cfg.steps}"
    )
    return _Run(cfg, out, info, device, model, optimizer, scheduler, scaler, amp, step, dataset, batches, logger, warn)


def _evaluate(run: _Run) -> dict | None:
    """The periodic J&F (rank 0; the others wait at a barrier)."""
    from densecorr.evaluation import evaluate_davis

    cfg, res = run.cfg, None
    if run.info.main:
        res = evaluate_davis(run.net, cfg.eval_root, cfg.eval_sequences, cfg.eval_max_frames, cfg.eval_height, cfg.eval_protocol, run.device)
        run.logger.record(run.step, {k: v for k, v in res.items() if isinstance(v, float)}, kind="eval")
        run.logger.print(f"eval step {run.step}: J&F {res['J&F']:.4f} (J {res['J_mean']:.4f}, F {res['F_mean']:.4f}) on {len(res['sequences'])} sequences, {res['seconds']:.0f} s")
    if run.info.enabled:
        torch.distributed.barrier()
    return res


def _log(run: _Run, window: _Window, result: StepResult) -> float:
    """One log row (mean terms over the window, lr, throughput, epoch): log.jsonl, TensorBoard,
    the console. Returns the window's mean loss."""
    cfg = run.cfg
    row = {k: float(np.mean(v)) for k, v in window.terms.items()}
    row.update(lr=run.optimizer.param_groups[0]["lr"], clips_per_s=window.clips / max(time.perf_counter() - window.start, 1e-9),
               epoch=run.step * cfg.batch_size * run.info.world_size * cfg.accum_steps / len(run.dataset))
    if cfg.clip_grad is not None:
        row["grad_norm"] = result.grad_norm
    run.logger.record(run.step, row)
    run.logger.print(f"step {run.step}/{cfg.steps}  " + "  ".join(f"{k} {v:.4g}" for k, v in row.items()))
    return row.get("loss", float("nan"))


def _checkpoint(run: _Run, skipped_in_row: int) -> None:
    """OUT/ckpt-<step>.pt and curves.png; none at a skipped step or with non-finite parameters,
    so that the newest checkpoints stay good ones."""
    if skipped_in_row or not parameters_finite(run.net):
        why = "the step was skipped" if skipped_in_row else "the parameters are not finite"
        run.warn(f"warning: no checkpoint at step {run.step}: {why}")
        return
    save_checkpoint(run.out, run.step, run.cfg, run.net, run.optimizer, run.scheduler, run.scaler, run.info)
    if run.info.main:
        plot_log(run.out)


def _diverged(run: _Run, skipped_in_row: int, why: str) -> TrainingDiverged:
    saved = list_checkpoints(run.out)
    good = f"the last good checkpoint is {saved[-1][1]}" if saved else "no checkpoint was written"
    return TrainingDiverged(f"training stopped at step {run.step}: {skipped_in_row} steps in a row skipped ({why}); "
                            f"{good}; lower the learning rate or check the data")


def train(cfg: TrainConfig, out: str, resume: str | None = "auto", quiet: bool = False, log: Callable[[str], None] | None = None) -> dict:
    """Train `cfg.model` as `cfg` says; checkpoints and logs go to folder `out`.

    resume: "auto" (the newest readable checkpoint in `out`, if any), a checkpoint path, or None
    (start afresh). Returns {"step", "loss" (mean of the last logged window), "eval" (last J&F row or None)}.
    TrainingDiverged (a DataError) after cfg.max_skipped_steps skipped steps in a row.
    """
    run = _setup(cfg, out, resume, quiet, log)
    window, last_eval, last_loss, skipped_in_row = _Window(), None, float("nan"), 0
    try:
        while run.step < cfg.steps:
            result = train_step(run.model, run.batches, run.optimizer, run.scaler, cfg, run.device, run.amp, run.info)
            run.scheduler.step()
            run.step += 1
            skipped_in_row = skipped_in_row + 1 if result.skipped else 0
            if result.skipped:
                run.warn(f"warning: {result.skipped} at step {run.step} ({result.terms}); step skipped")
                if skipped_in_row >= cfg.max_skipped_steps:
                    raise _diverged(run, skipped_in_row, result.skipped)
            window.add(result, run.info.world_size)
            last_loss = result.terms.get("loss", float("nan"))
            run.logger.progress(1, {"loss": f"{last_loss:.4f}", "clips/s": f"{window.clips_per_s():.2f}"})
            if run.step % cfg.log_every == 0 or run.step == cfg.steps:
                last_loss = _log(run, window, result)
                window = _Window()
            if run.step % cfg.ckpt_every == 0 or run.step == cfg.steps:
                _checkpoint(run, skipped_in_row)
            if cfg.eval_every and (run.step % cfg.eval_every == 0 or run.step == cfg.steps):
                last_eval = _evaluate(run)
                window.start = time.perf_counter()  # evaluation time is not training throughput
        if run.info.main:
            save_final_model(os.path.join(out, "model.pt"), cfg.model, run.net)
            plot_log(out)  # with the last evaluation
            run.logger.print(f"done: step {run.step}, wrote {os.path.join(out, 'model.pt')} and curves.png")
    finally:
        run.logger.close()
    return {"step": run.step, "loss": last_loss, "eval": last_eval}


__all__ = ["TrainingDiverged", "StepResult", "train_step", "train"]
