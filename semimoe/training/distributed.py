"""Processes, devices and threads of a training run (DDP under ``torchrun``)."""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Dict

import torch
import torch.distributed as dist
from torch import nn

from ..config import ConfigError

__all__ = ["Dist", "init_distributed", "pick_device", "auto_threads", "replica_check"]


@dataclasses.dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1
    owns_group: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    def barrier(self) -> None:
        if self.active:
            dist.barrier()


def init_distributed(device_pref: str) -> "Dist":
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    owns = False
    if not dist.is_initialized():
        use_cuda = torch.cuda.is_available() and device_pref != "cpu"
        if use_cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        owns = True
    return Dist(rank, world, local_rank, local_world, owns)


def pick_device(pref: str, d: Dist) -> torch.device:
    if pref == "auto":
        pref = "cuda" if torch.cuda.is_available() else "cpu"
    if pref == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("train.device=cuda but no CUDA device is available")
        return torch.device("cuda", d.local_rank if d.active else torch.cuda.current_device())
    if pref.startswith("cuda:") and not torch.cuda.is_available():
        raise ConfigError(f"train.device={pref} but no CUDA device is available")
    return torch.device(pref)


def auto_threads(procs: int) -> int:
    """CPU threads per process: the cores shared out between the processes,
    and no more than the cores that are idle (1-minute load average). Intra-op
    threads that share a core with another busy process wait for each other at
    every parallel region: on a 2-core machine with one other busy process,
    2 threads run ~2x slower than 1."""
    cores = os.cpu_count() or 1
    n = max(1, min(torch.get_num_threads(), cores // max(1, procs)))
    try:
        idle = cores - os.getloadavg()[0]
    except (OSError, AttributeError):  # no load average on this platform
        return n
    return max(1, min(n, int(idle / max(1, procs) + 0.25)))


def replica_check(model: nn.Module, device: torch.device, d: Dist) -> Dict[str, Any]:
    """Are the parameters identical on every process? Exact comparison with
    rank 0's copy (models up to 50 M parameters) plus float64 checksums."""
    flat = torch.cat([p.detach().flatten().to(torch.float64) for p in model.parameters()]).to(device)
    sums = torch.stack([flat.sum(), flat.abs().sum(),
                        (flat * torch.linspace(-1, 1, flat.numel(), dtype=flat.dtype, device=device)).sum()])
    gathered = [torch.zeros_like(sums) for _ in range(d.world)]
    dist.all_gather(gathered, sums)
    same = all(torch.equal(g, gathered[0]) for g in gathered)
    exact = flat.numel() <= 50_000_000
    if exact:
        ref = flat.clone()
        dist.broadcast(ref, 0)
        diff = (ref != flat).any().to(torch.int32).reshape(1)
        dist.all_reduce(diff, op=dist.ReduceOp.MAX)
        same = same and int(diff.item()) == 0
    return {"replica_checksums": [g.tolist() for g in gathered], "replicas_identical": bool(same),
            "replicas_compared": "exactly" if exact else "by checksums"}
