"""Streaming prepare: the same splits, ids and statistics as the in-memory path; errors with their true lines."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from mmdlrm.data import streaming
from mmdlrm.data.movielens import read_release
from mmdlrm.data.prepare import load_prepared, prepare
from mmdlrm.data.splits import RandomSplit, split_rows
from mmdlrm.data.tables import DataError
from tests.data.test_movielens import MOVIES_CSV, write_csv_release

SMALL = {"chunk_rows": 700, "block_bytes": 3000}
"""Chunks and blocks far smaller than the 12,000-rating release: many buckets, many blocks."""
HEADER = "userId,movieId,rating,timestamp\n"


@pytest.fixture()
def small_row_groups(monkeypatch):
    monkeypatch.setattr(streaming, "ROW_GROUP_ROWS", 1000)


def _rows(data, split: str) -> set[tuple]:
    """A split's ratings as (original user id, original movie id, rating, timestamp)."""
    cols = data.splits[split]
    users, movies = data.users["user_id"][cols["user"]], data.movies["movie_id"][cols["movie"]]
    return set(zip(users.tolist(), movies.tolist(), cols["rating"].tolist(), cols["timestamp"].tolist()))


@pytest.mark.parametrize("split", ["random", "temporal", "cold_movies"])
def test_streaming_prepare_writes_what_the_in_memory_path_writes(tiny_release, tmp_path, split, small_row_groups):
    in_memory = prepare(read_release(tiny_release), tmp_path / "memory", split, 0.1, 0.2, seed=4)
    streamed = prepare(tiny_release, tmp_path / "streamed", split, 0.1, 0.2, seed=4, **SMALL)
    for path in sorted(in_memory.iterdir()):
        assert path.read_bytes() == (streamed / path.name).read_bytes(), path.name

    # And both against a reference computed here from the release itself.
    release = read_release(tiny_release)
    user_id, movie_id = (release.ratings[c].to_numpy() for c in ("user_id", "movie_id"))
    rating, timestamp = release.ratings["rating"].to_numpy(), release.ratings["timestamp"].to_numpy()
    users = np.searchsorted(np.unique(user_id), user_id)
    movies = np.searchsorted(np.sort(release.movies["movie_id"].to_numpy()), movie_id)
    assignment = split_rows(users, timestamp, movies, split, 0.1, 0.2, seed=4)
    data = load_prepared(streamed)
    for index, name in enumerate(("train", "val", "test")):
        rows = assignment == index
        assert _rows(data, name) == set(zip(user_id[rows].tolist(), movie_id[rows].tolist(), rating[rows].tolist(), timestamp[rows].tolist()))
    train = assignment == 0
    np.testing.assert_array_equal(data.users["user_id"], np.unique(user_id))
    np.testing.assert_array_equal(data.users["train_count"], np.bincount(users[train], minlength=len(data.users["user_id"])))
    np.testing.assert_array_equal(data.movies["train_sum"], np.bincount(movies[train], rating[train], data.num_movies).astype(np.float32))
    assert data.mean_rating == float(rating[train].astype(np.float64).mean())


def test_split_files_are_shuffled_and_the_by_user_file_keeps_users_whole(tiny_prepared, tmp_path, tiny_release, small_row_groups):
    folder = prepare(tiny_release, tmp_path / "p", "random", 0.1, 0.1, seed=0, **SMALL)
    train = pq.read_table(folder / "train.parquet")
    assert pq.ParquetFile(folder / "train.parquet").metadata.num_row_groups == 10  # 9,600 rows, groups of 1,000
    user = train["user"].to_numpy()
    assert (np.diff(user) < 0).sum() > len(user) / 3  # a random order, not the file's (sorted by user)
    by_user = pq.ParquetFile(folder / "train_by_user.parquet")
    table = by_user.read()
    order = np.lexsort((table["movie"].to_numpy(), -table["timestamp"].to_numpy(), table["user"].to_numpy()))
    np.testing.assert_array_equal(order, np.arange(table.num_rows))
    assert sorted(zip(*(table[c].to_pylist() for c in table.column_names))) == sorted(zip(*(train[c].to_pylist() for c in train.column_names)))
    last_users = [by_user.read_row_group(g)["user"].to_numpy() for g in range(by_user.num_row_groups)]
    for before, after in zip(last_users, last_users[1:]):
        assert before[-1] != after[0], "a user's ratings are in one row group"
    # Another seed, another order and another split.
    other = pq.read_table(prepare(tiny_release, tmp_path / "q", "random", 0.1, 0.1, seed=1, **SMALL) / "train.parquet")
    assert not np.array_equal(other["user"].to_numpy()[:100], user[:100])


def test_random_split_assigns_any_subset_of_positions_on_its_own():
    n = 100_003
    plan = RandomSplit.plan(n, 0.1, 0.15, seed=2)
    whole = plan.assign(np.arange(n))
    assert np.bincount(whole, minlength=3).tolist() == [n - round(n * 0.1) - round(n * 0.15), round(n * 0.1), round(n * 0.15)]
    pieces = np.array_split(np.random.default_rng(0).permutation(n), 7)
    for piece in pieces:
        np.testing.assert_array_equal(plan.assign(piece), whole[piece])


def _release_with_bad_rows(folder: Path, n: int = 3000) -> Path:
    """n ratings of users 1..60 and movies 1, 11, 20; every 97th line a repeat of an earlier pair, a few bad rows."""
    rng = np.random.default_rng(1)
    lines, seen = [], []
    for i in range(n):
        if i % 97 == 50 and seen:
            user, movie = seen[int(rng.integers(len(seen)))]
        else:
            user, movie = int(rng.integers(1, 61)), int(rng.choice([1, 11, 20]))
            seen.append((user, movie))
        lines.append(f"{user},{movie},{rng.choice(np.arange(1, 11) / 2)},{int(rng.integers(0, 40))}")
    lines[700] = "3,11,abc,5"
    lines[1500] = "4,999,3.0,5"
    lines[2200] = "5,1,9.0,5"
    lines[2600] = "6,1,3.0"
    return write_csv_release(folder, ratings=HEADER + "\n".join(lines) + "\n")


def test_skipping_bad_rows_and_repeats_matches_the_in_memory_path(tmp_path):
    folder = _release_with_bad_rows(tmp_path / "rel")
    release = read_release(folder, on_bad_rows="skip")
    in_memory = prepare(release, tmp_path / "memory", "random", 0.1, 0.1, seed=0)
    streamed = prepare(folder, tmp_path / "streamed", "random", 0.1, 0.1, seed=0, on_bad_rows="skip",
                       chunk_rows=400, block_bytes=1024)  # fmt: skip
    for name in ("train.parquet", "val.parquet", "test.parquet", "users.parquet", "movies.parquet", "train_by_user.parquet"):
        assert (in_memory / name).read_bytes() == (streamed / name).read_bytes(), name
    skipped = json.loads((streamed / "manifest.json").read_text())["source"]["bad_rows_skipped"]
    assert skipped == release.bad_rows.counts
    assert skipped["ratings.csv: duplicate (user, movie): kept the latest"] > 20


@pytest.mark.parametrize(
    "bad, message",
    [("1,11,abc,9", "line {line}, column 3 (rating): 'abc' is not a number"),
     ("1,11,3.0", "line {line}: expected 4 columns, got 3"),
     ("1,11,,9", "line {line}, column 3 (rating): empty value"),
     ("1,11,9.0,9", "line {line}, column 3: rating outside 0.5..5.0 (9.0)"),
     ("1,999,3.0,9", "line {line}, column 2: movie id not in the movies file (999)"),
     ("-2,11,3.0,9", "line {line}, column 1: user id is negative (-2)")],
    ids=["not-a-number", "truncated", "empty", "out-of-range", "unknown-movie", "negative-user"],
)  # fmt: skip
def test_a_bad_row_in_a_late_chunk_is_named_by_its_file_line(tmp_path, bad, message):
    lines = [f"{u},{m},4.0,{u}" for u in range(2, 1500) for m in (1, 20)]  # user 1 rates nothing but the bad row
    lines[2000:2000] = ["", "", ""]  # blank lines before it are counted
    lines.insert(2700, bad)
    folder = write_csv_release(tmp_path / "rel", ratings=HEADER + "\n".join(lines) + "\n")
    line = 2 + 2700  # the header, then 0-based index 2700
    with pytest.raises(DataError) as err:
        prepare(folder, tmp_path / "out", "random", 0.1, 0.1, seed=0, chunk_rows=500, block_bytes=2048)
    assert f"ratings.csv {message.format(line=line)}" in str(err.value)
    assert not (tmp_path / "out").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["rel"]


def test_a_pair_rated_twice_across_chunks_names_both_lines(tmp_path):
    lines = [f"{u},{m},4.0,{u}" for u in range(1, 1500) for m in (1, 20)]
    lines.insert(2900, "7,20,2.5,99")  # user 7 rated movie 20 at 0-based index 13 too
    folder = write_csv_release(tmp_path / "rel", ratings=HEADER + "\n\n" + "\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"ratings.csv lines 17 and 2904: user 7 rated movie 20 twice"):
        prepare(folder, tmp_path / "out", "random", 0.1, 0.1, seed=0, chunk_rows=500, block_bytes=2048)


def test_streaming_keeps_the_readers_file_checks(tmp_path):
    folder = write_csv_release(tmp_path / "rel", movies=MOVIES_CSV)
    (folder / "ratings.csv").write_bytes(b"\x1f\x8b\x08\x00compressed")
    with pytest.raises(DataError, match="ratings.csv: this is a gzip-compressed file, not text; decompress it"):
        prepare(folder, tmp_path / "out", "random", 0.1, 0.1, seed=0)
    (folder / "ratings.csv").write_text("userId,movieId,timestamp\n1,1,9\n")
    with pytest.raises(DataError, match=r"ratings.csv line 1: missing column rating"):
        prepare(folder, tmp_path / "out", "random", 0.1, 0.1, seed=0)
    (folder / "ratings.csv").write_text(HEADER + "\n\n")
    with pytest.raises(DataError, match="ratings.csv: no data rows after the header"):
        prepare(folder, tmp_path / "out", "random", 0.1, 0.1, seed=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rel"]
