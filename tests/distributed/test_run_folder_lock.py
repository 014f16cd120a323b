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


def _train(rank: int, world_size: int, store: str, root: str) -> None:
    torch.set_num_threads(1)
    env = init_distributed("cpu", rank=rank, world_size=world_size, store_path=store)
    cfg = load_config(CONFIG, [f"output_dir={root}/runs", f"data.cache_dir={root}/data", "train.max_epochs=1",
                               "train.tensorboard=false", "train.batch_size=2048"])  # fmt: skip
    try:
        train(cfg, env)
        outcome = "trained"
    except FolderBusy as err:
        outcome = str(err)
    finally:
        teardown()
    Path(root, f"rank{rank}.json").write_text(json.dumps(outcome))


def _outcomes(root: Path) -> list[str]:
    return [json.loads((root / f"rank{rank}.json").read_text()) for rank in range(2)]


def test_two_ranks_train_one_run_folder_that_rank_0_holds(tmp_path):
    spawn(_train, 2, str(tmp_path))
    assert _outcomes(tmp_path) == ["trained", "trained"]
    run = tmp_path / "runs" / "debug"
    assert json.loads((run / "checkpoints" / "best" / "complete.json").read_text())["world_size"] == 2
    assert (run / "results.json").is_file() and not (tmp_path / "runs" / ".debug.lock").exists()


def test_a_run_folder_held_elsewhere_refuses_every_rank(tmp_path):
    (tmp_path / "runs").mkdir()
    with FolderLock(tmp_path / "runs" / "debug", "mmdlrm train", "give this run another name=..."):
        spawn(_train, 2, str(tmp_path))
    refused = _outcomes(tmp_path)
    assert refused[0] == refused[1] and f"is in use: process {os.getpid()} (mmdlrm train, since" in refused[0]
    assert not (tmp_path / "runs" / "debug").exists()
