"""Two commands on one run or sweep folder: one runs, the other is refused naming it, and nothing is mixed.

The first process is paused (SIGSTOP) once it holds the folder, so that the second one surely meets it there
however slowly either starts; then it is let go and must finish as if it had been alone.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from mmdlrm.cli import main

REPO = Path(__file__).resolve().parents[2]
DEBUG = str(REPO / "configs" / "debug.yaml")
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _mmdlrm(*args: str) -> list[str]:
    return [sys.executable, "-m", "mmdlrm", *args]


def _paused_once_holding(command: list[str], lock: Path) -> subprocess.Popen:
    """Start `command` and pause it as soon as its lock file names it."""
    process = subprocess.Popen(command, cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if json.loads(lock.read_text())["pid"] == process.pid:
                process.send_signal(signal.SIGSTOP)
                return process
        except (FileNotFoundError, json.JSONDecodeError, KeyError):
            pass
        time.sleep(0.01)
    raise AssertionError(f"{command} never held {lock}: {process.communicate()[1]}")


def _refused_while_paused(first: subprocess.Popen, command: list[str]) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(command, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
    finally:
        first.send_signal(signal.SIGCONT)


def _epochs_once(run: Path) -> list[dict]:
    """metrics.jsonl of a finished run, checked against its results.json: each epoch once, in order."""
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    results = json.loads((run / "results.json").read_text())
    assert [r["epoch"] for r in records] == list(range(len(results["epochs"])))
    assert [r["val"] for r in records] == [e["val"] for e in results["epochs"]]
    return records


def test_two_trains_on_one_name_one_runs_and_the_other_is_refused(tmp_path, capsys):
    common = ["train", "--config", DEBUG, f"output_dir={tmp_path / 'runs'}", f"data.cache_dir={tmp_path / 'data'}",
              "name=same", "train.max_epochs=2", "train.min_epochs=2", "train.tensorboard=false"]  # fmt: skip
    first = _paused_once_holding(_mmdlrm(*common), tmp_path / "runs" / ".same.lock")
    second = _refused_while_paused(first, _mmdlrm(*common, "model.embedding_dim=16"))
    _, first_err = first.communicate(timeout=600)

    assert second.returncode == 2, second.stderr
    run = tmp_path / "runs" / "same"
    assert f"mmdlrm train: error: {run} is in use: process {first.pid} (mmdlrm train, since " in second.stderr
    assert "give this run another name=..." in second.stderr and "Traceback" not in second.stderr
    assert first.returncode == 0, first_err
    assert yaml.safe_load((run / "config.yaml").read_text())["model"]["embedding_dim"] == 8  # the winner's config
    assert len(_epochs_once(run)) == 2
    assert not (tmp_path / "runs" / ".same.lock").exists()
    capsys.readouterr()
    assert main(["evaluate", str(run)]) == 0  # its checkpoint fits its config
    assert "best epoch" in capsys.readouterr().err


def test_two_sweeps_on_one_grid_one_runs_and_the_other_is_refused(tmp_path):
    grid = tmp_path / "dims.yaml"
    grid.write_text("model.embedding_dim: [4, 8]\n")
    command = _mmdlrm("sweep", "--config", DEBUG, "--grid", str(grid), f"output_dir={tmp_path / 'runs'}",
                      f"data.cache_dir={tmp_path / 'data'}", "train.max_epochs=1", "train.tensorboard=false")  # fmt: skip
    first = _paused_once_holding(command, tmp_path / "runs" / ".dims.lock")
    second = _refused_while_paused(first, command)
    _, first_err = first.communicate(timeout=600)

    folder = tmp_path / "runs" / "dims"
    assert second.returncode == 2, second.stderr
    assert f"mmdlrm sweep: error: {folder} is in use: process {first.pid} (mmdlrm sweep, since " in second.stderr
    assert "give this sweep another --name" in second.stderr and "Traceback" not in second.stderr
    assert first.returncode == 0, first_err
    summary = json.loads((folder / "sweep.json").read_text())
    assert [p["name"] for p in summary["points"]] == ["p00", "p01"]
    for point, dim in zip(summary["points"], (4, 8)):
        run = folder / point["name"]
        assert yaml.safe_load((run / "config.yaml").read_text())["model"]["embedding_dim"] == dim
        assert len(_epochs_once(run)) == 1
        assert point["test"] == json.loads((run / "results.json").read_text())["test"]
    assert sorted(p.name for p in folder.iterdir()) == ["p00", "p01", "sweep.json", "sweep.md", "sweep.png"]
