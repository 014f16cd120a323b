"""Run a function in N spawned processes that rendezvous over a FileStore (gloo on CPU)."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import torch.multiprocessing as mp


def spawn(fn: Callable, world_size: int, *args: object) -> None:
    """Call `fn(rank, world_size, store_path, *args)` in `world_size` fresh processes; raise if any fails."""
    with tempfile.TemporaryDirectory() as tmp:
        store = str(Path(tmp) / "store")
        mp.start_processes(_call, args=(fn, world_size, store, args), nprocs=world_size, start_method="spawn", join=True)


def _call(rank: int, fn: Callable, world_size: int, store: str, args: tuple) -> None:
    fn(rank, world_size, store, *args)
