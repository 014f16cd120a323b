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


@pytest.mark.slow
def test_torchx_dist_ddp_trains_with_two_processes_and_the_run_exports(tmp_path):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "OMP_NUM_THREADS": "1"}
    args = ["--config", "configs/debug.yaml", f"output_dir={tmp_path / 'runs'}", f"data.cache_dir={tmp_path / 'data'}",
            "train.progress=false"]  # fmt: skip
    # The repo's .torchxconfig names the script and the local_cwd scheduler: no --script, no -s.
    done = subprocess.run([sys.executable, "-m", "torchx.cli.main", "run", "dist.ddp", "-j", "1x2", "--", *args],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
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
    batch = BatchBuilder(data, exported.config.model.year_bucket_years).build(rows, torch.arange(len(rows)))
    with torch.no_grad():
        _, (_, preds, labels) = exported.task(batch)
    rmse = (preds - labels).pow(2).mean().sqrt().item()
    assert rmse == pytest.approx(results["test"]["rmse"], rel=1e-5)  # the same model as the 2 processes tested
