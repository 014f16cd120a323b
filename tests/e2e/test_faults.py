"""Faults met while training, each fed on purpose: one sentence with the fix, the exit code, and nothing lost."""

from __future__ import annotations

import errno
import json
import os
import re
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from torch.distributed.checkpoint import filesystem

from mmdlrm.cli import main
from mmdlrm.distributed import checkpoint

REPO = Path(__file__).resolve().parents[2]
DEBUG = str(REPO / "configs" / "debug.yaml")


def _train(tmp_path: Path, *overrides: str) -> int:
    return main(["train", "--config", DEBUG, f"output_dir={tmp_path / 'runs'}", f"data.cache_dir={tmp_path / 'data'}",
                 "train.tensorboard=false", *overrides])  # fmt: skip


def _results(run: Path) -> dict:
    return json.loads((run / "results.json").read_text())


def test_a_full_disk_keeps_the_last_checkpoint_and_the_same_command_continues_to_the_same_result(
    tmp_path, monkeypatch, capsys
):
    two_epochs = ("train.max_epochs=2", "train.min_epochs=2")
    assert _train(tmp_path, "name=whole", *two_epochs) == 0
    run = tmp_path / "runs" / "full"
    saves, write_item = [], filesystem._write_item
    save = checkpoint.save

    def counting_save(folder, *args, **kw):
        saves.append(Path(folder).name)
        return save(folder, *args, **kw)

    def full_at_the_second_last_save(*args, **kw):
        if saves.count("last") == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # as a write() says it: no file name
        return write_item(*args, **kw)

    with monkeypatch.context() as patch:
        patch.setattr(checkpoint, "save", counting_save)
        patch.setattr(filesystem, "_write_item", full_at_the_second_last_save)
        assert _train(tmp_path, "name=full", *two_epochs) == 2
    err = capsys.readouterr().err
    assert (f"mmdlrm train: error: no space left on {run}; kept: the run's last checkpoint (epoch 1, step 0) and its "
            "records up to it. Free some space there, then run the same command again: it continues from that "
            "checkpoint") in err
    assert "Traceback" not in err
    assert checkpoint.manifest(run / "checkpoints" / "last")["meta"]["epoch"] == 1  # whole, and the one before
    assert not (run / "checkpoints" / "last.tmp").exists()  # the cut-short save gave its space back
    assert [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [0]

    assert _train(tmp_path, "name=full", *two_epochs) == 0  # space freed: the same command
    assert "resuming" in capsys.readouterr().err
    whole, full = _results(tmp_path / "runs" / "whole"), _results(run)
    assert full["test"]["rmse"] == pytest.approx(whole["test"]["rmse"], rel=1e-6)
    assert [e["val"]["rmse"] for e in full["epochs"]] == pytest.approx([e["val"]["rmse"] for e in whole["epochs"]], rel=1e-6)


def test_a_user_file_where_tensorboard_logs_go_is_kept_and_named(tmp_path, capsys):
    one_epoch = ("train.max_epochs=1", "train.min_epochs=1")
    assert _train(tmp_path, *one_epoch) == 0
    run = tmp_path / "runs" / "debug"
    (run / "tensorboard").write_text("my notes")
    results = (run / "results.json").read_text()
    capsys.readouterr()
    assert _train(tmp_path, *one_epoch, "overwrite=true", "train.tensorboard=true") == 2
    err = capsys.readouterr().err
    assert (f"mmdlrm train: error: {run / 'tensorboard'} is a file, where mmdlrm writes its tensorboard folder; it is "
            "not mmdlrm's, so it is left as it is: move it out of the run folder, or set train.tensorboard=false") in err
    assert (run / "results.json").read_text() == results  # the finished run is untouched too
    assert _train(tmp_path, *one_epoch, "overwrite=true") == 0  # a fresh start without TensorBoard logs
    assert (run / "tensorboard").read_text() == "my notes"


def test_a_tensorboard_folder_that_cannot_be_written_is_named(tmp_path, monkeypatch, capsys):
    board = (tmp_path / "runs" / "debug" / "tensorboard").resolve()
    real_open = os.open

    def refused(path, *args, **kw):  # what the OS says in a folder without write permission (tests may run as root)
        if Path(os.fsdecode(path)).resolve().is_relative_to(board):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fsdecode(path))
        return real_open(path, *args, **kw)

    monkeypatch.setattr(os, "open", refused)
    assert _train(tmp_path, "train.max_epochs=1", "train.tensorboard=true") == 2
    err = capsys.readouterr().err
    assert (f"mmdlrm train: error: {tmp_path / 'runs' / 'debug' / 'tensorboard'}: TensorBoard logs cannot be written there (Permission denied); make it a writable folder (chmod u+w), or set "
            "train.tensorboard=false") in err
    assert "Traceback" not in err and "Exception in thread" not in err


def test_a_run_says_what_it_goes_without_and_writes_json(tmp_path, capsys):
    """No users file for model.demographics (as the genome's absence is said), no cold movies in the test split."""
    assert _train(tmp_path, "train.max_epochs=1", "model.demographics=true", "eval.cold_start_max_ratings=0") == 0
    err = capsys.readouterr().err
    assert "model.demographics: " in err and ("has no users file (ml-100k's u.user, ml-1m's users.dat); training "
                                              "without age, gender, occupation and zip") in err  # fmt: skip
    assert ("cold-start movies: none in the test split (no test rating is of a movie with at most 0 training "
            "ratings, eval.cold_start_max_ratings)") in err and not re.search(r"\bnan\b", err)
    run = tmp_path / "runs" / "debug"
    results = json.loads((run / "results.json").read_text(), parse_constant=lambda c: pytest.fail(f"bare {c}"))
    assert results["test"]["cold_start"] is None and results["baselines"]["bias"]["test_cold_start"] is None
    assert yaml.safe_load((run / "config.yaml").read_text())["model"]["demographics"] is True


def _saturated_release(folder: Path, users: int = 20, movies: int = 30) -> Path:
    """An ml-100k-layout release where every user rated every movie (ratings 1..4, never 5)."""
    folder.mkdir(parents=True)
    rows = [f"{u}\t{m}\t{1 + (u + m) % 4}\t{880000000 + u * 100 + m}\n" for u in range(1, users + 1) for m in range(1, movies + 1)]
    (folder / "u.data").write_text("".join(rows))
    flags = "|".join(["0"] * 5 + ["1"] + ["0"] * 13)
    (folder / "u.item").write_text("".join(f"{m}|Movie {m} (1995)|01-Jan-1995||http://x|{flags}\n" for m in range(1, movies + 1)))
    return folder


def test_ranking_negatives_that_are_known_positives_are_counted_once(tmp_path, capsys):
    release = _saturated_release(tmp_path / "saturated")
    assert _train(tmp_path, f"data.source={release}", "model.task=ranking", "model.ranking.negatives=4",
                  "train.batch_size=64", "train.max_epochs=2", "train.min_epochs=2") == 0  # fmt: skip
    err = capsys.readouterr().err
    notes = [line for line in err.splitlines() if "are movies their user rated in training" in line]
    assert len(notes) == 1, notes
    prepared = json.loads((tmp_path / "runs" / "debug" / "results.json").read_text())["prepared_dir"]
    users = pq.read_table(Path(prepared) / "train.parquet", columns=["user"])["user"].to_numpy()
    found = re.search(r"epoch 0: ([\d,]+) of the ([\d,]+) negatives drawn \(", notes[0])
    kept, drawn = (int(n.replace(",", "")) for n in found.groups())
    assert drawn % (64 * 4) == 0 and drawn <= len(users) * 4  # 4 negatives for each positive of each full batch
    # A uniform draw for a user with n of the 30 movies in training stays known through 1 + 4 rounds with (n/30)**5.
    expected = np.mean((np.bincount(users)[users] / 30) ** 5)
    assert kept / drawn == pytest.approx(expected, abs=0.05)
    assert "kept after 4 redraws: those users rated (nearly) every movie" in notes[0]


def test_ranking_settings_the_data_cannot_meet_are_named(tmp_path, capsys):
    release = _saturated_release(tmp_path / "saturated")
    ranking = (f"data.source={release}", "model.task=ranking", "train.batch_size=64", "train.max_epochs=1")
    for threshold in ("6", "-1"):
        assert _train(tmp_path, *ranking, f"model.ranking.positive_threshold={threshold}") == 2
        assert (f"model.ranking.positive_threshold must be a rating in 0.5..5.0 (training ratings at or above it are "
                f"the positives), got {float(threshold)}") in capsys.readouterr().err
    assert _train(tmp_path, *ranking, "model.ranking.positive_threshold=4.5") == 2
    assert ("model.ranking.positive_threshold=4.5: no training rating of ") in (err := capsys.readouterr().err)
    assert "is at or above it (the highest is 4), so there are no positives to train on" in err
    assert _train(tmp_path, *ranking, "model.ranking.negatives=100000") == 2
    assert "model.ranking.negatives=100000, but " in (err := capsys.readouterr().err)
    assert "has 30 movies: a positive can have at most 29 other movies as negatives" in err
    assert not (tmp_path / "runs" / "debug" / "results.json").exists()


def test_run_and_sweep_names_are_bounded(tmp_path, capsys):
    assert _train(tmp_path, "name=" + "r" * 300) == 2
    assert "name=rrrrrrrrrrrrrrrrrrrr...: 300 characters; a run name has at most 100" in capsys.readouterr().err
    grid = tmp_path / "grid.yaml"
    grid.write_text("model.embedding_dim: [4]\n")
    sweep = ["sweep", "--config", DEBUG, "--grid", str(grid), f"output_dir={tmp_path / 'runs'}"]
    assert main([*sweep, "--name", "s" * 300]) == 2
    assert "--name=ssssssssssssssssssss...: 300 characters; a run name has at most 100" in capsys.readouterr().err
    assert main([*sweep, "--name", "../escaped"]) == 2
    assert "--name='../escaped': a run name is one folder name" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists() and not (tmp_path / "escaped").exists()


def test_a_malformed_grid_file_is_named_with_its_line(tmp_path, capsys):
    grid = tmp_path / "grid.yaml"
    grid.write_text("model.embedding_dim: [4, 8\nmodel.dropout: [0.1]\n")
    assert main(["sweep", "--config", DEBUG, "--grid", str(grid), f"output_dir={tmp_path / 'runs'}"]) == 2
    err = capsys.readouterr().err
    assert f"mmdlrm sweep: error: {grid} line 2, column 14: not valid YAML (" in err and "<unicode string>" not in err


@pytest.mark.parametrize("args, sentence", [
    (["--all-users", "-k", "5"], "--all-users writes a Parquet file: give --out"),
    (["--user", "1", "--out", "x.parquet"], "--out goes with --all-users"),
])  # fmt: skip
def test_recommend_options_that_do_not_go_together_are_refused_before_torch_loads(tmp_path, args, sentence):
    import subprocess
    import sys

    probe = ("import sys; from mmdlrm.cli import main; "
             f"code = main(['recommend', 'runs/x', *{args!r}]); print(code, 'torch' in sys.modules)")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert done.stdout.split() == ["2", "False"] and sentence in done.stderr
