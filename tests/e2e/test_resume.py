"""Crash safety: a run killed mid-epoch resumes to the same result; damaged checkpoints are named."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mmdlrm.cli import main

REPO = Path(__file__).resolve().parents[2]
DEBUG = str(REPO / "configs" / "debug.yaml")
# Small batches: 500 steps an epoch, a checkpoint every 40, so there is time to kill the run mid-epoch.
SLOW = ["train.batch_size=32", "train.checkpoint_every=40", "train.max_epochs=3", "train.min_epochs=3"]


def _command(tmp_path: Path, name: str) -> list[str]:
    return [sys.executable, "-m", "mmdlrm", "train", "--config", DEBUG, f"name={name}",
            f"output_dir={tmp_path / 'runs'}", f"data.cache_dir={tmp_path / 'data'}", *SLOW]  # fmt: skip


def _results(tmp_path: Path, name: str) -> dict:
    return json.loads((tmp_path / "runs" / name / "results.json").read_text())


def _last_meta(run: Path) -> dict | None:
    try:
        return json.loads((run / "checkpoints" / "last" / "complete.json").read_text())["meta"]
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        return None


@pytest.mark.slow
def test_killed_mid_epoch_run_resumes_to_the_uninterrupted_result(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(_command(tmp_path, "whole"), check=True, env=env, capture_output=True)

    run = tmp_path / "runs" / "killed"
    process = subprocess.Popen(_command(tmp_path, "killed"), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        meta = _last_meta(run)
        if meta is not None and meta["epoch"] == 1 and meta["step"] > 0:
            break
        time.sleep(0.01)
    assert process.poll() is None, "the run ended before it could be killed mid-epoch"
    time.sleep(0.1)  # land somewhere after that checkpoint: between steps, or inside the next save
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (run / "results.json").exists()

    resumed = subprocess.run(_command(tmp_path, "killed"), env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stderr and "at epoch 1, step" in resumed.stderr
    whole, killed = _results(tmp_path, "whole"), _results(tmp_path, "killed")
    cold_killed, cold_whole = killed["test"].pop("cold_start"), whole["test"].pop("cold_start")
    assert killed["test"] == pytest.approx(whole["test"], rel=1e-6)
    assert cold_killed == pytest.approx(cold_whole, rel=1e-6)
    assert [e["val"]["rmse"] for e in killed["epochs"]] == pytest.approx([e["val"]["rmse"] for e in whole["epochs"]], rel=1e-6)
    assert [e["train_loss"] for e in killed["epochs"]] == pytest.approx([e["train_loss"] for e in whole["epochs"]], rel=1e-6)
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [0, 1, 2]


def test_ctrl_c_says_how_to_go_on_and_the_same_command_resumes(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = tmp_path / "runs" / "stopped"
    # Ctrl-C as a terminal sends it, whatever this suite's own SIGINT handling (a runner started in the background
    # with `cmd &` ignores SIGINT, and a child would inherit that and never see the signal).
    process = subprocess.Popen(_command(tmp_path, "stopped"), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # fmt: skip
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None and _last_meta(run) is None:
        time.sleep(0.01)
    assert process.poll() is None, "the run ended before it could be interrupted"
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert "mmdlrm train: interrupted; the same command continues from the run's last checkpoint" in err
    assert "Traceback" not in err and not (run / "results.json").exists()
    again = subprocess.run(_command(tmp_path, "stopped"), env=env, capture_output=True, text=True)
    assert again.returncode == 0 and "resuming" in again.stderr, again.stderr
    assert (run / "results.json").is_file()


def _train(tmp_path: Path, *overrides: str) -> int:
    return main(["train", "--config", DEBUG, f"output_dir={tmp_path / 'runs'}", f"data.cache_dir={tmp_path / 'data'}",
                 "train.max_epochs=1", "train.min_epochs=1", *overrides])  # fmt: skip


def test_damaged_checkpoint_is_named_on_evaluate(tmp_path, capsys):
    assert _train(tmp_path) == 0
    best = tmp_path / "runs" / "debug" / "checkpoints" / "best"
    shard = next(p for p in best.iterdir() if p.suffix == ".distcp")
    shard.write_bytes(shard.read_bytes()[:-10])
    assert main(["evaluate", str(tmp_path / "runs" / "debug")]) == 2
    err = capsys.readouterr().err
    assert f"{best}: checkpoint is damaged: {shard.name} has" in err and "expected" in err


def test_save_cut_between_renames_leaves_the_previous_checkpoint(tmp_path, capsys):
    assert _train(tmp_path) == 0
    checkpoints = tmp_path / "runs" / "debug" / "checkpoints"
    (checkpoints / "best").rename(checkpoints / "best.old")  # as a crash between the two renames leaves it
    (checkpoints / "best.tmp").mkdir()  # and a half-written new one without its manifest
    assert main(["evaluate", str(tmp_path / "runs" / "debug")]) == 0
    assert "best epoch 0" in capsys.readouterr().err


def test_unfinished_run_with_another_config_is_not_resumed_silently(tmp_path, capsys):
    assert _train(tmp_path, "train.max_epochs=2", "train.min_epochs=2") == 0
    run = tmp_path / "runs" / "debug"
    (run / "results.json").unlink()  # as if it had died before testing
    assert _train(tmp_path, "model.embedding_dim=16") == 2
    assert "holds an unfinished run with a different config (model.embedding_dim, train.max_epochs, train.min_epochs)" in (
        capsys.readouterr().err
    )
    assert _train(tmp_path, "model.embedding_dim=16", "train.resume=false") == 0
