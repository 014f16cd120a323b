"""Checkpoints with torch.distributed.checkpoint (DCP): every rank writes its own shards.

A checkpoint folder holds the model's sharded state dict, optionally the optimisers' (fused FBGEMM states and
dense Adam states, sharded like their parameters), each rank's RNG state, and `complete.json`: the world size,
the caller's metadata (epoch, step, ...) and the size and SHA-256 of every file.

A save goes to `<dir>.tmp`; once all ranks have written, rank 0 writes the manifest and swaps the folder into
place (the previous one is kept as `<dir>.old` for the instant between two renames), so a crash while saving
leaves the previous checkpoint whole. Loading checks the manifest first, so a damaged or truncated file is named
instead of failing deep inside DCP. DCP reshards on load: a checkpoint written by N processes loads into M.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn

from mmdlrm.distributed.env import DistEnv

COMPLETE = "complete.json"


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, incomplete or damaged; the message names the folder and the file."""


def save(
    folder: str | Path, env: DistEnv, model: nn.Module, optimizer: torch.optim.Optimizer | None = None, meta: dict | None = None
) -> Path:
    """Save the model (and optimiser) state to `folder`, replacing what was there only once the save is whole."""
    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".tmp")
    if env.is_rank0:
        shutil.rmtree(tmp, ignore_errors=True)
    _barrier(env)
    state = {"model": model.state_dict()}
    if optimizer is not None:
        state["optim"] = optimizer.state_dict()
    try:
        dcp.save(state, checkpoint_id=str(tmp))
        rng = tmp / "rng" / f"rank{env.rank}.pt"
        rng.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"torch": torch.get_rng_state()}, rng)
        _barrier(env)
        if env.is_rank0:
            manifest = {"world_size": env.world_size, "optimizer": optimizer is not None, "meta": meta or {},
                        "files": {str(p.relative_to(tmp)): _describe(p) for p in sorted(tmp.rglob("*")) if p.is_file()}}  # fmt: skip
            (tmp / COMPLETE).write_text(json.dumps(manifest, indent=2) + "\n")
    except BaseException:  # DCP raises CheckpointException, a BaseException
        if env.is_rank0:  # a save cut short (a full disk) gives back the space it took; the previous one stays
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    if env.is_rank0:
        old = folder.with_name(folder.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        if folder.exists():
            folder.rename(old)
        tmp.rename(folder)
        shutil.rmtree(old, ignore_errors=True)
    _barrier(env)
    return folder


def find(folder: str | Path) -> Path | None:
    """The complete checkpoint at `folder` (or the previous one left by a save cut short), else None."""
    folder = Path(folder)
    for candidate in (folder, folder.with_name(folder.name + ".old")):
        if (candidate / COMPLETE).is_file():
            return candidate
    return None


def manifest(folder: str | Path) -> dict:
    """The manifest of the checkpoint at `folder` (see `find`), checked against the files on disk.

    Raises:
        CheckpointError: no complete checkpoint, or a file missing, truncated or changed since it was written.
    """
    found = find(folder)
    if found is None:
        raise CheckpointError(f"{folder}: no complete checkpoint here ({COMPLETE} missing); train again or pick another run")
    info = json.loads((found / COMPLETE).read_text())
    for name, expected in info["files"].items():
        path = found / name
        if not path.is_file():
            raise CheckpointError(f"{found}: checkpoint is damaged: {name} is missing; train again or restore the folder")
        actual = _describe(path)
        if actual != expected:
            raise CheckpointError(
                f"{found}: checkpoint is damaged: {name} has {actual['bytes']} bytes / sha256 {actual['sha256'][:12]}, "
                f"expected {expected['bytes']} / {expected['sha256'][:12]}; train again or restore the folder"
            )
    info["folder"] = str(found)
    return info


def load(folder: str | Path, model: nn.Module, optimizer=None, env: DistEnv | None = None) -> dict:
    """Load `folder` into `model` (and `optimizer`) in place, at any world size; returns the saved metadata.

    The RNG state is restored when the world size is the one that saved it. `optimizer` must be a TorchRec
    KeyedOptimizer (its `init_state` makes the state entries DCP loads into).

    Raises:
        CheckpointError: see `manifest`; also when an optimiser state is asked for but was not saved.
    """
    info = manifest(folder)
    found = Path(info["folder"])
    state = {"model": model.state_dict()}
    if optimizer is not None:
        if not info["optimizer"]:
            raise CheckpointError(f"{found}: holds the model only, no optimiser state to resume from")
        optimizer.init_state()
        state["optim"] = optimizer.state_dict()
    try:
        dcp.load(state, checkpoint_id=str(found))
    except Exception as err:  # DCP raises several types for unreadable files; all mean the same to the user
        raise CheckpointError(f"{found}: checkpoint could not be read ({type(err).__name__}: {err}); train again") from err
    model.load_state_dict(state["model"])
    if optimizer is not None:
        optimizer.load_state_dict(state["optim"])
    rng = found / "rng" / f"rank{env.rank}.pt" if env is not None else None
    if rng is not None and env.world_size == info["world_size"] and rng.is_file():
        torch.set_rng_state(torch.load(rng)["torch"])
    return info["meta"]


def load_unsharded(module: nn.Module, folder: str | Path) -> dict:
    """Load the model state of a (sharded) checkpoint into a plain, unsharded module in this process alone."""
    info = manifest(folder)
    state = {"model": module.state_dict()}
    with warnings.catch_warnings():  # "torch.distributed is disabled ... assuming ... a single process": yes
        warnings.filterwarnings("ignore", message="torch.distributed is disabled", category=UserWarning)
        dcp.load(state, checkpoint_id=info["folder"], no_dist=True)
    module.load_state_dict(state["model"])
    return info["meta"]


def _describe(path: Path) -> dict:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return {"bytes": path.stat().st_size, "sha256": digest.hexdigest()}


def _barrier(env: DistEnv) -> None:
    if env.world_size > 1 and dist.is_initialized():
        dist.barrier()
