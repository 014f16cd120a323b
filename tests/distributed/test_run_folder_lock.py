"""Under several processes rank 0 holds the run folder for all of them: they train it together, and a folder
held elsewhere refuses every rank (none waits in a collective the others left)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from mmdlrm.config import load_config
from mmdlrm.distributed.env import init_distributed, teardown
from mmdlrm.folders import FolderBusy, FolderLock
from mmdlrm.train import train

from spawn import spawn

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "debug.yaml"


def _train_held_then_free(rank: int, world_size: int, store: str, root: str) -> None:
    """Train run `held` (another process holds it), then run `free`; write what each gave."""
    torch.set_num_threads(1)
    env = init_distributed("cpu", rank=rank, world_size=world_size, store_path=store)
    outcomes = {}
    try:
        for name in ("held", "free"):
            cfg = load_config(CONFIG, [f"output_dir={root}/runs", f"data.cache_dir={root}/data", f"name={name}",
                                       "train.max_epochs=1", "train.tensorboard=false", "train.batch_size=2048"])  # fmt: skip
            try:
                train(cfg, env)
                outcomes[name] = "trained"
            except FolderBusy as err:
                outcomes[name] = str(err)
    finally:
        teardown()
    Path(root, f"rank{rank}.json").write_text(json.dumps(outcomes))


def test_rank_0_holds_the_run_folder_for_every_rank(tmp_path):
    (tmp_path / "runs").mkdir()
    with FolderLock(tmp_path / "runs" / "held", "mmdlrm train", "give this run another name=..."):
        spawn(_train_held_then_free, 2, str(tmp_path))
    outcomes = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in range(2)]
    refused = outcomes[0]["held"]
    assert outcomes[1]["held"] == refused and f"is in use: process {os.getpid()} (mmdlrm train, since" in refused
    assert not (tmp_path / "runs" / "held").exists()
    assert outcomes[0]["free"] == outcomes[1]["free"] == "trained"  # rank 1 did not try to take rank 0's hold
    run = tmp_path / "runs" / "free"
    assert json.loads((run / "checkpoints" / "best" / "complete.json").read_text())["world_size"] == 2
    assert (run / "results.json").is_file() and not (tmp_path / "runs" / ".free.lock").exists()
