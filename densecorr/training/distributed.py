"""Distributed data parallel under `torchrun`: the process group, this rank's device."""
from __future__ import annotations

import dataclasses
import os

import torch
import torch.distributed as dist

from densecorr.data.io import DataError


@dataclasses.dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device_type: str) -> DistInfo:
    """Join the process group that `torchrun` describes in the environment (no-op without it;
    NCCL on GPU, gloo on CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    info = DistInfo(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    return info


def resolve_device(spec: str, info: DistInfo) -> torch.device:
    """The torch device of TrainConfig.device ("auto": cuda:LOCAL_RANK when available, else cpu)."""
    if spec == "auto":
        return torch.device(f"cuda:{info.local_rank}" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise DataError(f"device {spec!r} is not a torch device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DataError(f"device {spec!r} was asked for but no CUDA GPU is available; use cpu")
        if device.index is None:
            device = torch.device(f"cuda:{info.local_rank}")
    return device


def all_agree(flag: bool, info: DistInfo, device: torch.device) -> bool:
    """True iff `flag` is true on every rank (one all_reduce; `flag` itself without DDP)."""
    if not info.enabled:
        return flag
    t = torch.tensor([0.0 if flag else 1.0], device=device)
    dist.all_reduce(t)
    return t.item() == 0


def unwrap(model):
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


__all__ = ["DistInfo", "init_distributed", "resolve_device", "all_agree", "unwrap", "shutdown"]
