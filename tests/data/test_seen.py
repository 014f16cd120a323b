"""The seen-movie index: each user's movies per split, against a plain loop over the split files; made once."""

from __future__ import annotations

import logging
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest

from mmdlrm.data import seen as seen_module
from mmdlrm.data.prepare import SPLITS, load_prepared
from mmdlrm.data.seen import SeenMovies, user_movies


def _reference(folder, splits, num_users: int) -> list[np.ndarray]:
    """Each user's movies in `splits`, from the split files (train.parquet, not the index's by-user copy)."""
    tables = [pq.read_table(folder / f"{s}.parquet", columns=["user", "movie"]) for s in splits]
    user = np.concatenate([t["user"].to_numpy() for t in tables])
    movie = np.concatenate([t["movie"].to_numpy() for t in tables])
    return [np.sort(movie[user == u]) for u in range(num_users)]


def _assert_index_matches(data) -> None:
    for splits in (("train",), ("val",), ("test",), ("train", "val"), SPLITS):
        index, expected = data.seen(splits), _reference(data.folder, splits, data.num_users)
        for u in range(data.num_users):
            got = index.of(u)
            assert got.dtype == np.int64 and got.tolist() == expected[u].tolist(), (splits, u)
        users = np.random.default_rng(0).permutation(data.num_users)[:50]
        assert [a.tolist() for a in index.of_users(users)] == [expected[u].tolist() for u in users]
        assert index.counts(users).tolist() == [len(expected[u]) for u in users]
        rows, movies = index.pairs(users)
        assert sorted(zip(rows.tolist(), movies.tolist())) == [(i, m) for i, u in enumerate(users) for m in expected[u].tolist()]


def test_the_index_equals_the_movies_in_the_splits_for_every_user(tiny_prepared, parquet_reads):
    assert (tiny_prepared.folder / "seen.json").is_file()  # prepare made it
    data = load_prepared(tiny_prepared.folder)
    parquet_reads.clear()
    data.seen().of_users(np.arange(data.num_users))
    assert parquet_reads == []  # memory-mapped arrays: no Parquet at all
    _assert_index_matches(data)
    assert sum(tiny_prepared.seen().counts(np.arange(tiny_prepared.num_users))) == tiny_prepared.manifest["counts"]["ratings"]


def test_a_folder_without_the_index_gets_it_at_first_use_once(tiny_prepared, tmp_path, parquet_reads, caplog):
    folder = shutil.copytree(tiny_prepared.folder, tmp_path / "old")
    for path in folder.glob("seen*"):
        path.unlink()  # as prepared before the index existed
    caplog.set_level(logging.INFO, logger="mmdlrm.data.seen")
    data = load_prepared(folder)
    parquet_reads.clear()
    data.seen()
    assert "seen-movie index is missing; building it" in caplog.text
    assert set(parquet_reads) == {"train_by_user.parquet", "val.parquet", "test.parquet"}  # not train.parquet
    assert not list(folder.glob(".*.tmp"))
    made = {p.name: p.read_bytes() for p in folder.glob("seen*")}
    assert made == {p.name: p.read_bytes() for p in tiny_prepared.folder.glob("seen*")}  # what prepare writes
    data = load_prepared(folder)
    parquet_reads.clear()
    data.seen().of(0)
    assert parquet_reads == []  # made once: later processes only map it
    _assert_index_matches(data)


def test_an_index_made_from_other_split_files_is_rebuilt(tiny_prepared, tmp_path, caplog):
    folder = shutil.copytree(tiny_prepared.folder, tmp_path / "stale")
    rows = pq.read_table(folder / "test.parquet")
    pq.write_table(rows.slice(0, rows.num_rows - 5), folder / "test.parquet")  # the split changed under the index
    caplog.set_level(logging.INFO, logger="mmdlrm.data.seen")
    data = load_prepared(folder)
    assert data.seen(["test"]).counts(np.arange(data.num_users)).sum() == rows.num_rows - 5
    assert "was made from other split files" in caplog.text


def test_a_read_only_folder_holds_the_index_in_memory(tiny_prepared, tmp_path, monkeypatch, caplog):
    folder = shutil.copytree(tiny_prepared.folder, tmp_path / "read-only")
    (folder / "seen.json").unlink()

    def refuse(path, write):
        raise PermissionError(f"[Errno 13] Permission denied: '{path}'")

    monkeypatch.setattr(seen_module, "_replace", refuse)
    data = load_prepared(folder)
    assert data.seen().of(3).tolist() == tiny_prepared.seen().of(3).tolist()
    assert "cannot write the seen-movie index" in caplog.text and "Permission denied" in caplog.text


def test_unknown_users_and_splits_are_named(tiny_prepared):
    with pytest.raises(IndexError, match=f"user {tiny_prepared.num_users} is outside the contiguous ids 0..{tiny_prepared.num_users - 1}"):
        tiny_prepared.seen().of(tiny_prepared.num_users)
    with pytest.raises(ValueError, match="unknown split 'validation'; the splits are train, val, test"):
        tiny_prepared.seen(["validation"])
    assert tiny_prepared.seen().of_users([]) == []


def test_an_index_from_pairs_sorts_each_users_movies_and_keeps_users_without_any():
    index = SeenMovies({"a": user_movies(np.array([2, 0, 2, 2]), np.array([9, 4, 1, 5]), 4),
                        "b": user_movies(np.array([2]), np.array([3]), 4)})  # fmt: skip
    assert [m.tolist() for m in index.of_users([0, 1, 2, 3])] == [[4], [], [1, 3, 5, 9], []]
    assert index.counts([2, 1]).tolist() == [4, 0]
