"""Checkpoints with torch.distributed.checkpoint (DCP): every rank writes its own shards.

A save goes to `<dir>.tmp` and is renamed into place by rank 0 once all ranks have written, so a crash while
saving leaves the previous checkpoint whole.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn

from mmdlrm.distributed.env import DistEnv

COMPLETE = "complete.json"


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, incomplete or unreadable; the message names the folder."""


def save(model: nn.Module, folder: str | Path, env: DistEnv, meta: dict | None = None) -> Path:
    """Save `model`'s (sharded) state dict to `folder`, replacing what was there only once the save is whole."""
    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".tmp")
    if env.is_rank0:
        shutil.rmtree(tmp, ignore_errors=True)
    _barrier(env)
    dcp.save({"model": model.state_dict()}, checkpoint_id=str(tmp))
    _barrier(env)
    if env.is_rank0:
        (tmp / COMPLETE).write_text(json.dumps({"world_size": env.world_size, **(meta or {})}, indent=2))
        old = folder.with_name(folder.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        if folder.exists():
            folder.rename(old)
        tmp.rename(folder)
        shutil.rmtree(old, ignore_errors=True)
    _barrier(env)
    return folder


def load(model: nn.Module, folder: str | Path) -> dict:
    """Load `folder` into `model` in place (any world size: DCP reshards); returns the saved metadata.

    Raises:
        CheckpointError: the folder holds no complete checkpoint.
    """
    folder = Path(folder)
    marker = folder / COMPLETE
    if not marker.is_file():
        raise CheckpointError(f"{folder}: no complete checkpoint here ({COMPLETE} missing); train again or pick another run")
    state = {"model": model.state_dict()}
    try:
        dcp.load(state, checkpoint_id=str(folder))
    except Exception as err:  # DCP raises several types for damaged files; all mean the same to the user
        raise CheckpointError(f"{folder}: checkpoint is damaged ({type(err).__name__}: {err}); train again") from err
    model.load_state_dict(state["model"])
    return json.loads(marker.read_text())


def _barrier(env: DistEnv) -> None:
    if env.world_size > 1 and dist.is_initialized():
        dist.barrier()
