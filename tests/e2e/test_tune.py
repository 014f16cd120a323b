"""`mmdlrm tune` end to end at small size: chosen on validation without opening the test split, the best config
trained once more and tested, pruning, a killed tune resumed, two processes on one study, refusals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import optuna
import pyarrow.parquet as pq
import pytest
import yaml
from optuna.trial import TrialState

from mmdlrm.cli import main
from mmdlrm.config import dotted_value, load_config
from mmdlrm.tuning import study as study_module
from mmdlrm.tuning.space import read_space

REPO = Path(__file__).resolve().parents[2]
DEBUG = str(REPO / "configs" / "debug.yaml")
# A few steps an epoch: 120 users, 60 movies, 3,000 ratings in batches of 256.
TINY = ["data.synthetic.num_users=120", "data.synthetic.num_movies=60", "data.synthetic.num_ratings=3000",
        "data.synthetic.media=false", "train.batch_size=256", "train.max_epochs=3", "train.min_epochs=1",
        "train.patience=1", "train.progress=false", "eval.batch_size=4096"]  # fmt: skip
TEST_FILES = ("test.parquet", "seen_test.offsets.npy", "seen_test.movies.npy")


def _args(tmp_path: Path, *extra: str) -> list[str]:
    return ["--config", DEBUG, *TINY, f"output_dir={tmp_path / 'runs'}", f"data.cache_dir={tmp_path / 'data'}", *extra]


def _space(tmp_path: Path, params: str, pruner: str = "{startup_trials: 10}") -> str:
    path = tmp_path / "space.yaml"
    path.write_text(f"params:\n{params}pruner: {pruner}\n")
    return str(path)


def _study(folder: Path) -> optuna.Study:
    return optuna.load_study(study_name="mmdlrm", storage=f"sqlite:///{folder / 'study.db'}")


def _prepared(tmp_path: Path) -> Path:
    return next((tmp_path / "data" / "prepared").iterdir())


@pytest.fixture
def opened(monkeypatch) -> list[str]:
    """The files a test opens (Parquet and .npy), in order, with `trial start` / `trial end` marks around each trial."""
    events: list[str] = []
    init, read_table, load = pq.ParquetFile.__init__, pq.read_table, np.load

    def parquet_init(self, source, *args, **kwargs):
        events.append(Path(str(source)).name)
        init(self, source, *args, **kwargs)

    monkeypatch.setattr(pq.ParquetFile, "__init__", parquet_init)
    monkeypatch.setattr(pq, "read_table", lambda source, *a, **k: events.append(Path(str(source)).name) or read_table(source, *a, **k))
    monkeypatch.setattr(np, "load", lambda file, *a, **k: events.append(Path(str(file)).name) or load(file, *a, **k))
    run_trial = study_module._run_trial

    def marked(*args, **kwargs):
        events.append("trial start")
        try:
            return run_trial(*args, **kwargs)
        finally:
            events.append("trial end")

    monkeypatch.setattr(study_module, "_run_trial", marked)
    return events


@pytest.mark.parametrize("task", ["rating", "ranking"])
def test_a_validation_only_run_never_opens_the_test_split(tmp_path, task):
    overrides = [*_args(tmp_path)[2:], f"model.task={task}", "train.max_epochs=2"]
    assert main(["train", "--config", DEBUG, *overrides, "name=first"]) == 0  # prepares the data
    prepared = _prepared(tmp_path)
    for name in TEST_FILES:  # the test split made unreadable: any open of it now raises
        (prepared / name).write_bytes(b"not a split")
    assert main(["train", "--config", DEBUG, *overrides, "eval.test=false", "name=validation-only"]) == 0
    results = json.loads((tmp_path / "runs" / "validation-only" / "results.json").read_text())
    assert results["test"] == {} and results["baselines"] == {} and results["best_epoch"] >= 0
    with pytest.raises(Exception):  # the same split breaks a run that tests: the guard is real
        main(["train", "--config", DEBUG, *overrides, "name=tested"])


def test_tune_on_the_ml1m_layout_chooses_on_validation_and_tests_the_best_once(tmp_path, opened, capsys):
    args = _args(tmp_path, "data.synthetic.layout=ml-1m", "name=ml1m")
    assert main(["tune", "--trials", "3", *args]) == 0
    folder = tmp_path / "runs" / "ml1m-tune"
    summary = json.loads((folder / "tune.json").read_text())
    study = _study(folder)
    trials = study.get_trials()
    assert [t.number for t in trials] == [0, 1, 2] and all(t.state == TrialState.COMPLETE for t in trials)
    assert trials[0].user_attrs["origin"] == "the base config"
    best = min(trials, key=lambda t: t.value)
    assert summary["best"]["trial"] == f"t{best.number:04d}" and summary["best"]["value"] == pytest.approx(best.value)
    assert summary["metric"] == "val_rmse" and summary["trials"] == {"complete": 3}
    space = read_space(folder / "space.yaml")
    for trial in trials:  # each trial a validation-only run of the base config plus its values
        run = folder / "trials" / f"t{trial.number:04d}"
        results = json.loads((run / "results.json").read_text())
        assert results["test"] == {} and not (run / "checkpoints").exists()
        cfg = load_config(run / "config.yaml")
        assert cfg.data.synthetic.layout == "ml-1m" and not cfg.eval.test
        for key, value in space.values(trial.params).items():
            assert dotted_value(cfg, key) == pytest.approx(value)
        assert [trial.intermediate_values[e] for e in sorted(trial.intermediate_values)] == pytest.approx(
            [e["val"]["rmse"] for e in results["epochs"]])  # fmt: skip

    # the best YAML is a config `train` takes: the base with the best trial's values, testing on
    best_cfg = load_config(folder / "best.yaml")
    assert best_cfg.eval.test and best_cfg.name == "ml1m-tuned" and best_cfg.data.synthetic.layout == "ml-1m"
    for key, value in space.values(best.params).items():
        assert dotted_value(best_cfg, key) == pytest.approx(value)
    # trained once more from it: the trial's validation metric again (same seed), now tested beside the baselines
    final = summary["final"]
    assert final["val"] == pytest.approx(best.value, rel=1e-3) and final["trial_val"] == pytest.approx(best.value)
    assert final["test"]["rmse"] > 0 and set(final["baselines"]) == {"global_mean", "bias"}
    assert "trained once more from best.yaml" in capsys.readouterr().err

    # the search never opened the test split; the final run did
    first, last = opened.index("trial start"), len(opened) - 1 - opened[::-1].index("trial end")
    assert not [name for name in opened[first:last] if name in TEST_FILES]
    assert "test.parquet" in opened[last:]
    assert "| t000" in (folder / "trials.md").read_text() and "(best)" in (folder / "trials.md").read_text()
    assert len((folder / "trials.csv").read_text().splitlines()) == 4
    for plot in ("history.png", "importance.png"):
        assert (folder / "plots" / plot).read_bytes()[:4] == b"\x89PNG"

    capsys.readouterr()
    assert main(["tune", "--trials", "3", *args]) == 0  # a finished study run again: no trial, no retraining
    assert len(_study(folder).get_trials()) == 3


def test_pruning_stops_a_trial_whose_curve_is_worse_than_the_median(tmp_path):
    space = _space(tmp_path, "  train.dense_lr: {choices: [0.001, 1.0e-7]}\n  sharding.sparse_lr: {choices: [0.05, 1.0e-7]}\n",
                   pruner="{startup_trials: 3, warmup_epochs: 1}")  # fmt: skip
    args = [*_args(tmp_path, "train.max_epochs=4", "train.min_epochs=4"), "--space", space]
    cfg_args = [a for a in args if "=" in a]
    study = study_module.open_study(DEBUG, cfg_args, None, space, None)  # the base config is enqueued as trial 0
    for _ in range(2):
        study.optuna.enqueue_trial({"train.dense_lr": 0.001, "sharding.sparse_lr": 0.05})
    study.optuna.enqueue_trial({"train.dense_lr": 1e-7, "sharding.sparse_lr": 1e-7})  # learns nothing
    assert main(["tune", "--trials", "4", *args]) == 0
    trials = _study(study.folder).get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3 + [TrialState.PRUNED]
    bad = trials[3]
    assert sorted(bad.intermediate_values) == [0, 1]  # stopped after the first epoch it could be pruned at
    median = float(np.median([t.intermediate_values[1] for t in trials[:3]]))
    assert bad.intermediate_values[1] > median
    assert "| pruned |" in (study.folder / "trials.md").read_text()


def _worker(tmp_path: Path, trials: int, space: str) -> list[str]:
    return [sys.executable, "-m", "mmdlrm", "tune", "--trials", str(trials), *_args(tmp_path, "train.max_epochs=3",
            "train.min_epochs=3"), "--space", space]  # fmt: skip


def _wait_for_epoch(process: subprocess.Popen, metrics: Path) -> None:
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and process.poll() is None:
        if metrics.is_file() and metrics.read_text().strip():
            return
        time.sleep(0.05)
    raise AssertionError(f"{metrics} got no epoch before the process ended (rc {process.poll()})")


@pytest.mark.slow
def test_a_killed_tune_resumes_its_trial_and_loses_or_repeats_none(tmp_path, capsys):
    space = _space(tmp_path, "  model.dropout: {low: 0.0, high: 0.3}\n  train.dense_lr: {low: 3.0e-4, high: 3.0e-3, log: true}\n")
    folder = tmp_path / "runs" / "debug-tune"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(_worker(tmp_path, 3, space), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for_epoch(process, folder / "trials" / "t0001" / "metrics.jsonl")  # trial 1 has finished an epoch
    process.send_signal(signal.SIGKILL)
    process.wait()
    before = _study(folder).get_trials()
    assert [t.state for t in before] == [TrialState.COMPLETE, TrialState.RUNNING]
    killed_values = before[1].params

    capsys.readouterr()
    assert main(["tune", "--trials", "3", *_worker(tmp_path, 3, space)[6:]]) == 0
    err = capsys.readouterr().err
    assert "trial t0001 was left running by a process that ended; resuming it" in err and "resuming" in err
    trials = _study(folder).get_trials()
    assert [t.number for t in trials] == [0, 1, 2] and all(t.state == TrialState.COMPLETE for t in trials)
    assert trials[1].params == killed_values
    assert sorted(trials[1].intermediate_values) == [0, 1, 2]  # every epoch reported once
    epochs = [json.loads(line)["epoch"] for line in (folder / "trials" / "t0001" / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [0, 1, 2]
    assert json.loads((folder / "tune.json").read_text())["trials"] == {"complete": 3}


@pytest.mark.slow
def test_two_processes_share_one_study(tmp_path, capsys):
    space = _space(tmp_path, "  model.dropout: {low: 0.0, high: 0.3}\n")
    args = _worker(tmp_path, 3, space)[6:]
    study = study_module.open_study(DEBUG, [a for a in args if "=" in a], None, space, None)
    number = study.optuna.ask().number
    held = study_module._claim(study, number)  # this process works on trial 0 (as a live worker would)
    assert held is not None
    try:
        other = subprocess.run(_worker(tmp_path, 3, space), env={**os.environ, "OMP_NUM_THREADS": "1"},
                               capture_output=True, text=True)  # fmt: skip
    finally:
        held.release()
    assert other.returncode == 0, other.stderr
    assert "trials t0000 still run in other processes" in other.stderr  # so the other process trains no final
    trials = _study(study.folder).get_trials()
    assert [t.state for t in trials] == [TrialState.RUNNING, TrialState.COMPLETE, TrialState.COMPLETE]
    assert not [p for p in study.folder.iterdir() if p.name.startswith("final-")]

    capsys.readouterr()
    assert main(["tune", "--trials", "3", *args]) == 0  # trial 0, then the final run: its process is the last one
    trials = _study(study.folder).get_trials()
    assert [t.number for t in trials] == [0, 1, 2] and all(t.state == TrialState.COMPLETE for t in trials)
    workers = [t.user_attrs["worker"].split("@")[0] for t in trials]
    assert workers[0] == str(os.getpid()) and workers[1] == workers[2] != workers[0]
    finals = [p for p in study.folder.iterdir() if p.name.startswith("final-")]
    assert len(finals) == 1 and (finals[0] / "results.json").is_file()
    assert "trained once more from best.yaml" in capsys.readouterr().err


def test_refusals_name_the_fix(tmp_path, capsys):
    assert main(["tune", "--trials", "2", *_args(tmp_path), "--metric", "val_ndcg@20"]) == 2
    assert "model.task=rating, which picks its best epoch by val_rmse" in capsys.readouterr().err
    space = _space(tmp_path, "  model.dropout: {low: 0.0, high: 0.3}\n")
    study_module.open_study(DEBUG, _args(tmp_path)[2:], None, space, None)
    assert main(["tune", "--trials", "2", *_args(tmp_path, "model.dense_arch=[8]"), "--space", space]) == 2
    err = capsys.readouterr().err
    assert "holds a study made from other inputs (base config model.dense_arch)" in err and "another --name" in err
    assert yaml.safe_load((tmp_path / "runs" / "debug-tune" / "space.yaml").read_text())["params"]["model.dropout"]
