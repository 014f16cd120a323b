"""A run folder's life: finished runs are left alone, bad run paths and tiny splits are refused, TensorBoard logs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mmdlrm.cli import main

REPO = Path(__file__).resolve().parents[2]
DEBUG = str(REPO / "configs" / "debug.yaml")
SHORT = ["train.max_epochs=1", "train.min_epochs=1"]


def _train(tmp_path: Path, *overrides: str) -> int:
    return main(["train", "--config", DEBUG, f"output_dir={tmp_path / 'runs'}", f"data.cache_dir={tmp_path / 'data'}",
                 *SHORT, *overrides])  # fmt: skip


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_finished_run_is_left_as_it_is_unless_overwrite(tmp_path, capsys):
    assert _train(tmp_path) == 0
    run = tmp_path / "runs" / "debug"
    (run / "notes.txt").write_text("mine")
    before = _snapshot(run)
    capsys.readouterr()

    assert _train(tmp_path) == 0  # the same command again
    assert "holds a finished run of this config; it is left as it is" in capsys.readouterr().err
    assert _snapshot(run) == before

    assert _train(tmp_path, "model.embedding_dim=16") == 2  # another config under the same name
    err = capsys.readouterr().err
    assert "holds a finished run with a different config (model.embedding_dim)" in err and "overwrite=true" in err
    assert _snapshot(run) == before

    assert _train(tmp_path, "model.embedding_dim=16", "overwrite=true") == 0
    assert (run / "notes.txt").read_text() == "mine"  # never ours: kept
    assert "embedding_dim: 16" in (run / "config.yaml").read_text()


def test_overwrite_removes_only_mmdlrm_outputs(tmp_path):
    assert _train(tmp_path) == 0
    run = tmp_path / "runs" / "debug"
    (run / "plots" / "stale.png").write_bytes(b"old")
    (run / "mine.csv").write_text("a,b\n")
    assert _train(tmp_path, "overwrite=true", "train.tensorboard=false") == 0
    assert not (run / "plots" / "stale.png").exists() and not (run / "tensorboard").exists()
    assert (run / "mine.csv").read_text() == "a,b\n"


def test_run_names_and_folders_that_cannot_hold_a_run_are_refused(tmp_path, capsys):
    assert _train(tmp_path, "name=../../escaped") == 2
    assert "a run name is one folder name" in capsys.readouterr().err
    assert not (tmp_path / "escaped").exists() and not (tmp_path.parent / "escaped").exists()
    (tmp_path / "runs-file").write_text("not a folder")
    assert main(["train", "--config", DEBUG, f"output_dir={tmp_path / 'runs-file'}", f"data.cache_dir={tmp_path / 'data'}"]) == 2
    assert "runs-file is a file, not a folder" in capsys.readouterr().err
    assert (tmp_path / "runs-file").read_text() == "not a folder"
    assert not list(tmp_path.glob("*.tmp"))


def test_a_training_split_smaller_than_one_batch_is_an_error(tmp_path, capsys):
    assert _train(tmp_path, "train.batch_size=100000") == 2
    err = capsys.readouterr().err
    assert "the training split has 16,000 rows (for this task), fewer than one batch (train.batch_size=100000)" in err
    assert not (tmp_path / "runs" / "debug" / "results.json").exists()


def test_a_damaged_last_checkpoint_names_the_way_out_and_it_works(tmp_path, capsys):
    assert _train(tmp_path, "train.max_epochs=2", "train.min_epochs=2") == 0
    run = tmp_path / "runs" / "debug"
    (run / "results.json").unlink()  # as if it died before testing
    shard = next(p for p in (run / "checkpoints" / "last").iterdir() if p.suffix == ".distcp")
    shard.write_bytes(shard.read_bytes()[:-10])
    capsys.readouterr()
    assert _train(tmp_path, "train.max_epochs=2", "train.min_epochs=2") == 2
    err = capsys.readouterr().err
    assert "checkpoint is damaged" in err and "add train.resume=false" in err
    assert _train(tmp_path, "train.max_epochs=2", "train.min_epochs=2", "train.resume=false") == 0
    assert (run / "results.json").is_file()


def test_tensorboard_holds_scalars_and_the_embedding_projector(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert _train(tmp_path, "train.max_epochs=2", "train.min_epochs=2", "train.batch_size=128") == 0
    board = tmp_path / "runs" / "debug" / "tensorboard"
    events = EventAccumulator(str(board))
    events.Reload()
    tags = events.Tags()["scalars"]
    assert {"train/loss", "train/samples_per_s", "epoch/train_loss", "val/rmse", "baseline/bias"} <= set(tags)
    assert [e.step for e in events.Scalars("val/rmse")] == [0, 1]
    results = json.loads((tmp_path / "runs" / "debug" / "results.json").read_text())
    assert events.Scalars("val/rmse")[1].value == pytest.approx(results["epochs"][1]["val"]["rmse"], rel=1e-5)
    assert events.Scalars("baseline/bias")[0].value == pytest.approx(results["baselines"]["bias"]["val"]["rmse"], rel=1e-5)
    projector = (board / "projector_config.pbtxt").read_text()
    assert 'tensor_name: "movies' in projector and 'tensor_name: "genres' in projector
    titles = next(board.rglob("movies/metadata.tsv")).read_text().splitlines()
    assert len(titles) == 200 and all(t.startswith("Synthetic Movie ") for t in titles)
    genres = next(board.rglob("genres/metadata.tsv")).read_text().splitlines()
    assert genres == json.loads((Path(results["prepared_dir"]) / "manifest.json").read_text())["genres"]
