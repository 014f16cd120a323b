"""Launching with torchx (local_cwd scheduler, 2 processes) and exporting the sharded run as one plain file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mmdlrm.data.batches import BatchBuilder, SplitRows
from mmdlrm.data.prepare import load_prepared
from mmdlrm.export import export_run, load_exported

REPO = Path(__file__).resolve().parents[2]


def _as_a_newcomer() -> dict[str, str]:
    """The environment of a shell with no virtual environment activated (the README's commands must work there)."""
    if Path(sys.executable).parent.resolve() != (REPO / ".venv" / "bin").resolve():
        pytest.skip("the README's torchx line names .venv/bin: run the tests from the repo's .venv")
    return {"HOME": os.environ.get("HOME", "/tmp"), "PATH": "/usr/local/bin:/usr/bin:/bin", "OMP_NUM_THREADS": "1"}


@pytest.mark.slow
def test_torchx_dist_ddp_trains_with_two_processes_and_the_run_exports(tmp_path):
    args = ["--config", "configs/debug.yaml", f"output_dir={tmp_path / 'runs'}", f"data.cache_dir={tmp_path / 'data'}",
            "train.progress=false"]  # fmt: skip
    # The README's line as written: the repo's .torchxconfig names the script, the local_cwd scheduler, and PATH.
    done = subprocess.run([".venv/bin/torchx", "run", "dist.ddp", "-j", "1x2", "--", *args],
                          cwd=REPO, env=_as_a_newcomer(), capture_output=True, text=True, timeout=600)  # fmt: skip
    assert "Job finished: SUCCEEDED" in done.stderr + done.stdout, done.stderr[-3000:]
    run = tmp_path / "runs" / "debug"
    plan = (run / "plan.txt").read_text()
    assert "rank:0/cpu" in plan and "rank:1/cpu" in plan  # tables were placed on both processes
    assert json.loads((run / "checkpoints" / "best" / "complete.json").read_text())["world_size"] == 2
    results = json.loads((run / "results.json").read_text())
    assert results["test"]["rmse"] < results["baselines"]["global_mean"]["test"]["rmse"]

    exported = load_exported(export_run(run))
    data = load_prepared(results["prepared_dir"])
    assert exported.movie_ids.tolist() == data.movies["movie_id"].tolist() and exported.genres == data.genres
    rows = SplitRows.from_prepared(data, "test")
    batch = BatchBuilder(data, exported.config.model, exported.objective.label).build(rows, torch.arange(len(rows)))
    with torch.no_grad():
        _, (_, preds, labels) = exported.task(batch)
    rmse = (preds - labels).pow(2).mean().sqrt().item()
    assert rmse == pytest.approx(results["test"]["rmse"], rel=1e-5)  # the same model as the 2 processes tested


@pytest.mark.slow
def test_torchx_line_naming_train_py_runs_the_training_script(tmp_path):
    """`torchx run dist.ddp -j 1x4 train.py` (the design's line) names launch/train.py; it trains, not errs."""
    args = ["--config", "configs/debug.yaml", f"output_dir={tmp_path / 'runs'}", f"data.cache_dir={tmp_path / 'data'}",
            "train.progress=false", "train.max_epochs=1", "train.min_epochs=1"]  # fmt: skip
    done = subprocess.run([".venv/bin/torchx", "run", "dist.ddp", "-j", "1x1", "train.py", *args],
                          cwd=REPO, env=_as_a_newcomer(), capture_output=True, text=True, timeout=600)  # fmt: skip
    assert "Job finished: SUCCEEDED" in done.stderr + done.stdout, done.stderr[-3000:]
    assert (tmp_path / "runs" / "debug" / "results.json").is_file()
