"""The process group, the device and rank-0 helpers: decided once, passed everywhere as a `DistEnv`.

Under torchrun (RANK / WORLD_SIZE set) the process joins that world; alone it makes a world of one, so the
planner, DistributedModelParallel and checkpoints run the same code in a debug run and on a cluster.
Backend: nccl on CUDA, gloo on CPU.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist

log = logging.getLogger("mmdlrm")
T = TypeVar("T")


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


def launch_rank() -> tuple[int, int]:
    """(rank, world size) as the launcher (torchrun, torchx) set them; (0, 1) for a process started alone."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


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
        rank, world_size = launch_rank()
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


def rank0_decides(env: DistEnv, decide: Callable[[], T]) -> T:
    """Run `decide` on rank 0 only and hand its (picklable) result to every rank.

    For choices that must be the same everywhere and touch shared files: preparing the data, resuming or not,
    making the feature store. An exception on rank 0 is passed on and raised on every rank, so that no rank
    waits forever in a collective the others left.
    """
    outcome: list = [None, None]
    if env.is_rank0:
        try:
            outcome = [decide(), None]
        except Exception as err:  # re-raised below, on every rank
            outcome = [None, err]
    if env.world_size > 1:
        dist.broadcast_object_list(outcome, src=0)
    if outcome[1] is not None:
        raise outcome[1]
    return outcome[0]
