"""`prepare` never deletes what it did not write, replaces its own output atomically, and refuses empty splits."""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

import pytest

from mmdlrm.cli import main
from mmdlrm.data import buckets
from mmdlrm.data import prepare as prepare_module
from mmdlrm.data.movielens import read_release
from mmdlrm.data.prepare import load_prepared, prepare
from mmdlrm.data.tables import DataError
from mmdlrm.folders import FolderLock
from tests.data.test_movielens import write_csv_release


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _siblings(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.fixture()
def release_copy(tiny_release, tmp_path):
    """The tiny synthetic release's ratings and movies, in a folder of its own, read."""
    folder = tmp_path / "release"
    folder.mkdir()
    for name in ("ratings.csv", "movies.csv"):
        (folder / name).write_bytes((tiny_release / name).read_bytes())
    return read_release(folder)


@pytest.mark.parametrize("where", [".", "sub", "sub/deeper"])
def test_output_in_the_release_folder_is_refused_and_the_release_kept(release_copy, where):
    before = _snapshot(release_copy.folder)
    with pytest.raises(DataError, match=r"output folder is (the|inside the) release folder .*write the prepared dataset to a folder of its own"):
        prepare(release_copy, release_copy.folder / where, "random", 0.1, 0.1, seed=0)
    assert _snapshot(release_copy.folder) == before
    assert _siblings(release_copy.folder.parent) == ["release"]


def test_output_holding_the_release_is_refused(release_copy):
    before = _snapshot(release_copy.folder)
    with pytest.raises(DataError, match="output folder holds the release folder"):
        prepare(release_copy, release_copy.folder.parent, "random", 0.1, 0.1, seed=0)
    assert _snapshot(release_copy.folder) == before


def test_output_that_is_a_file_is_refused_without_leaving_a_tmp_folder(release_copy, tmp_path):
    target = tmp_path / "out" / "prepared"
    target.parent.mkdir()
    target.write_text("my notes")
    with pytest.raises(DataError, match="output path is a file, not a folder"):
        prepare(release_copy, target, "random", 0.1, 0.1, seed=0)
    assert target.read_text() == "my notes" and _siblings(target.parent) == ["prepared"]


@pytest.mark.parametrize(
    "contents", [{"notes.txt": "keep me"}, {"manifest.json": '{"name": "something else"}'}, {"manifest.json": "not json"}]
)
def test_a_non_empty_folder_that_is_not_a_prepared_dataset_is_left_alone(release_copy, tmp_path, contents):
    target = tmp_path / "out"
    target.mkdir()
    for name, text in contents.items():
        (target / name).write_text(text)
    with pytest.raises(DataError, match="is not empty and is not a dataset made by `mmdlrm prepare`.*empty the folder"):
        prepare(release_copy, target, "random", 0.1, 0.1, seed=0)
    assert {p.name: p.read_text() for p in target.iterdir()} == contents
    assert _siblings(tmp_path) == ["out", "release"]


def test_an_empty_folder_or_a_prepared_dataset_is_replaced(release_copy, tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    prepare(release_copy, target, "random", 0.1, 0.1, seed=1)
    assert load_prepared(target).manifest["split"]["seed"] == 1
    prepare(release_copy, target, "random", 0.1, 0.1, seed=2)
    assert load_prepared(target).manifest["split"]["seed"] == 2
    assert _siblings(tmp_path) == ["out", "release"], "no tmp or old folder left beside it"


def test_a_failure_part_way_removes_the_tmp_folder_and_keeps_the_old_dataset(release_copy, tmp_path, monkeypatch):
    target = prepare(release_copy, tmp_path / "out", "random", 0.1, 0.1, seed=1)
    before = _snapshot(target)

    def fails(*args, **kw):
        raise DataError("disk trouble")

    monkeypatch.setattr(prepare_module, "_write_movies", fails)
    with pytest.raises(DataError, match="disk trouble"):
        prepare(release_copy, target, "random", 0.1, 0.1, seed=2)
    assert _snapshot(target) == before
    assert _siblings(tmp_path) == ["out", "release"]


def test_an_interrupted_swap_puts_the_old_dataset_back(release_copy, tmp_path, monkeypatch):
    target = prepare(release_copy, tmp_path / "out", "random", 0.1, 0.1, seed=1)
    before = _snapshot(target)
    rename = Path.rename

    def new_one_fails(self, dest):
        if Path(dest) == target.resolve() and self.name.endswith(".tmp"):
            raise OSError("interrupted")
        return rename(self, dest)

    monkeypatch.setattr(Path, "rename", new_one_fails)
    with pytest.raises(OSError, match="interrupted"):
        prepare(release_copy, target, "random", 0.1, 0.1, seed=2)
    assert _snapshot(target) == before and _siblings(tmp_path) == ["out", "release"]


def test_empty_validation_and_test_splits_are_refused(tmp_path):
    ratings = "userId,movieId,rating,timestamp\n1,1,4.0,9\n1,11,3.5,9\n7,20,0.5,9\n"
    release = read_release(write_csv_release(tmp_path / "rel", ratings=ratings))
    with pytest.raises(DataError) as err:
        prepare(release, tmp_path / "out", "random", 0.1, 0.1, seed=0)
    message = str(err.value)
    assert "3 ratings split random into train 3, val 0, test 0: the val and test splits are empty" in message
    assert "raise data.val_fraction / data.test_fraction (now 0.1 / 0.1)" in message
    assert not (tmp_path / "out").exists() and _siblings(tmp_path) == ["rel"]


def test_an_empty_training_split_is_refused(tmp_path):
    release = read_release(write_csv_release(tmp_path / "rel"))
    with pytest.raises(DataError, match="no ratings left for training; lower data.val_fraction/test_fraction"):
        prepare(release, tmp_path / "out", "random", 0.49, 0.49, seed=0)



def test_what_a_killed_prepare_left_beside_its_output_is_cleared_by_the_next(release_copy, tmp_path):
    target = prepare(release_copy, tmp_path / "out", "random", 0.1, 0.1, seed=1)
    # As a prepare killed while splitting leaves it: its temporary folder, named as mkdtemp names them, half written.
    stale = Path(tempfile.mkdtemp(prefix=".out.", suffix=".tmp", dir=tmp_path))
    (stale / "train.parquet").write_bytes(b"\0" * 4096)
    (tmp_path / ".out.mine.tmp").mkdir()  # a name prepare never makes: not its to remove
    prepare(release_copy, target, "random", 0.1, 0.1, seed=2)
    assert _siblings(tmp_path) == [".out.mine.tmp", "out", "release"]
    assert load_prepared(target).manifest["split"]["seed"] == 2


def test_a_dataset_a_killed_swap_left_aside_is_put_back(release_copy, tmp_path, monkeypatch):
    target = prepare(release_copy, tmp_path / "out", "random", 0.1, 0.1, seed=1)
    before = _snapshot(target)
    target.rename(tmp_path / ".out.old-0123abcd")  # killed between the swap's two renames: no dataset at `out`

    def fails(*args, **kw):
        raise DataError("bad input")

    monkeypatch.setattr(prepare_module, "_write_movies", fails)
    with pytest.raises(DataError, match="bad input"):
        prepare(release_copy, target, "random", 0.1, 0.1, seed=2)
    assert _snapshot(target) == before and _siblings(tmp_path) == ["out", "release"]


def test_a_full_disk_is_named_with_what_was_kept_and_the_same_command_then_prepares(release_copy, tmp_path, monkeypatch,
                                                                                   capsys):  # fmt: skip
    target = prepare(release_copy, tmp_path / "out", "random", 0.1, 0.1, seed=1)
    before = _snapshot(target)
    command = ["prepare", str(release_copy.folder), "--out", str(target), "data.seed=2", "train.progress=false"]

    def full(self, *args):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # as a write() says it: no file name

    capsys.readouterr()
    with monkeypatch.context() as patch:
        patch.setattr(buckets.RowGroupWriter, "_emit", full)
        assert main(command) == 2
    err = capsys.readouterr().err
    assert (f"mmdlrm prepare: error: no space left on {target}; nothing of this prepare was kept (the dataset that "
            "was there before is as it was). Free some space there, then run the same command again") in err
    assert "Traceback" not in err
    assert _snapshot(target) == before and _siblings(tmp_path) == ["out", "release"]

    assert main(command) == 0  # space freed: the same command
    fresh = prepare(release_copy.folder, tmp_path / "fresh", "random", 0.1, 0.1, seed=2)
    assert _snapshot(target) == _snapshot(fresh)


def test_an_output_another_process_is_writing_is_refused(release_copy, tmp_path, capsys):
    target = prepare(release_copy, tmp_path / "out", "random", 0.1, 0.1, seed=1)
    before = _snapshot(target)
    with FolderLock(target, "mmdlrm prepare", ""):
        assert main(["prepare", str(release_copy.folder), "--out", str(target), "data.seed=2"]) == 2
    err = capsys.readouterr().err
    assert f"mmdlrm prepare: error: {target} is in use: process {os.getpid()} (mmdlrm prepare, since " in err
    assert err.rstrip().endswith("or pass another --out")
    assert _snapshot(target) == before and _siblings(tmp_path) == ["out", "release"]
