"""The process group, the device and rank-0 helpers: decided once, passed everywhere as a `DistEnv`.

Under torchrun (RANK / WORLD_SIZE set) the process joins that world; alone it makes a world of one, so the
planner, DistributedModelParallel and checkpoints run the same code in a debug run and on a cluster.
Backend: nccl on CUDA, gloo on CPU.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

log = logging.getLogger("mmdlrm")


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits: its rank, the world size, its local rank and its device."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_rank0(self) -> bool:
        return self.rank == 0

    @property
    def backend(self) -> str:
        return "nccl" if self.device.type == "cuda" else "gloo"

    @property
    def local_world_size(self) -> int:
        return int(os.environ.get("LOCAL_WORLD_SIZE", self.world_size))


def pick_device(requested: str, local_rank: int) -> torch.device:
    """`auto`: this rank's GPU when CUDA is present, else the CPU.

    Raises:
        RuntimeError: `cuda` asked for on a machine without CUDA.
    """
    if requested == "cuda" or (requested == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("train.device=cuda but CUDA is not available here; use train.device=cpu or auto")
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def init_distributed(
    device: str = "auto", rank: int | None = None, world_size: int | None = None, store_path: str | None = None
) -> DistEnv:
    """Join (or make) the process group and return this process's `DistEnv`.

    Args:
        device: `auto`, `cpu` or `cuda`.
        rank, world_size, store_path: for spawned test workers: rendezvous over a FileStore at `store_path`.
            Otherwise torchrun's environment variables are used, or a world of one.
    """
    if rank is None:
        rank = int(os.environ.get("RANK", 0))
        world_size = int(os.environ.get("WORLD_SIZE", 1))
    assert world_size is not None
    local_rank = int(os.environ.get("LOCAL_RANK", rank if store_path else 0))
    env = DistEnv(rank, world_size, local_rank, pick_device(device, local_rank))
    if dist.is_initialized():
        return env
    if store_path is not None:
        store = dist.FileStore(store_path, world_size)
        dist.init_process_group(env.backend, store=store, rank=rank, world_size=world_size)
    elif "MASTER_ADDR" in os.environ:
        dist.init_process_group(env.backend, rank=rank, world_size=world_size)
    else:
        dist.init_process_group(env.backend, store=dist.HashStore(), rank=0, world_size=1)
    return env


def teardown() -> None:
    """Leave the process group (safe to call when none was made)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def log0(env: DistEnv, msg: str, *args: object) -> None:
    """Log on rank 0 only."""
    if env.is_rank0:
        log.info(msg, *args)
