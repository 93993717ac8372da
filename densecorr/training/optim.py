"""Optimiser, learning-rate schedule and mixed precision of a run (from its TrainConfig)."""
from __future__ import annotations

import math

import torch


def build_optimizer(cfg, params) -> torch.optim.Optimizer:
    """Adam, AdamW or SGD over the parameters that require gradients."""
    params = [p for p in params if p.requires_grad]
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def lr_factor(cfg, step: int) -> float:
    """Multiplier of cfg.lr at optimiser step `step` (0-based): linear warm-up, then constant,
    step (x gamma at each milestone) or cosine (to min_lr_ratio at cfg.steps)."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.schedule == "step":
        return cfg.gamma ** sum(step >= m for m in cfg.milestones)
    if cfg.schedule == "cosine":
        span = max(1, cfg.steps - cfg.warmup_steps)
        t = min(1.0, (step - cfg.warmup_steps) / span)
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t))
    return 1.0


def build_scheduler(cfg, optimizer) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(cfg, s))


def amp_dtype(cfg, device: torch.device):
    """The autocast dtype (None: full precision). AMP only on GPU: bf16 where supported, else fp16."""
    if device.type != "cuda" or cfg.amp == "off":
        return None
    if cfg.amp == "fp16":
        return torch.float16
    if cfg.amp == "bf16" or torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


__all__ = ["build_optimizer", "lr_factor", "build_scheduler", "amp_dtype"]
