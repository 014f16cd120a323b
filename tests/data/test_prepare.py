"""Prepared datasets: contiguous ids, splits without leakage, train-only dense features, determinism."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from mmdlrm.config import DataConfig, SyntheticConfig
from mmdlrm.data.movielens import read_release
from mmdlrm.data.prepare import ensure_prepared, load_prepared, prepare, split_rows
from mmdlrm.data.tables import DataError
from tests.conftest import shared


def test_ids_are_contiguous_and_map_back(tiny_release, tiny_prepared):
    release = read_release(tiny_release)
    data = tiny_prepared
    all_rows = {k: np.concatenate([data.splits[s][k] for s in ("train", "val", "test")]) for k in ("user", "movie", "rating", "timestamp")}
    assert all_rows["user"].min() == 0 and all_rows["user"].max() == data.num_users - 1
    assert data.num_movies == release.movies.num_rows  # every catalogue movie gets a row, rated or not
    original = set(zip(release.ratings["user_id"].to_pylist(), release.ratings["movie_id"].to_pylist(), release.ratings["rating"].to_pylist()))
    mapped = set(zip(data.users["user_id"][all_rows["user"]].tolist(), data.movies["movie_id"][all_rows["movie"]].tolist(), all_rows["rating"].tolist()))
    assert mapped == original


def test_random_split_is_disjoint_complete_and_sized():
    n = 10_000
    assignment = split_rows(np.zeros(n, int), np.arange(n), np.arange(n), "random", 0.1, 0.1, seed=5)
    counts = np.bincount(assignment, minlength=3)
    assert counts.tolist() == [8000, 1000, 1000]
    again = split_rows(np.zeros(n, int), np.arange(n), np.arange(n), "random", 0.1, 0.1, seed=5)
    np.testing.assert_array_equal(assignment, again)
    other = split_rows(np.zeros(n, int), np.arange(n), np.arange(n), "random", 0.1, 0.1, seed=6)
    assert (assignment != other).any()


def test_temporal_split_holds_out_each_users_latest(tiny_prepared, tiny_release, tmp_path):
    prepare(read_release(tiny_release), tmp_path / "t", "temporal", 0.1, 0.2, seed=0)
    data = load_prepared(tmp_path / "t")
    train, test = data.splits["train"], data.splits["test"]
    for user in np.unique(test["user"]):
        assert train["timestamp"][train["user"] == user].max() <= test["timestamp"][test["user"] == user].min()
    per_user = np.bincount(np.concatenate([data.splits[s]["user"] for s in ("train", "val", "test")]))
    expected_test = np.floor(per_user * 0.2).astype(int)
    np.testing.assert_array_equal(np.bincount(test["user"], minlength=len(per_user)), expected_test)


def test_dense_feature_sums_come_from_train_only(tiny_prepared):
    data = tiny_prepared
    train = data.splits["train"]
    np.testing.assert_array_equal(data.users["train_count"], np.bincount(train["user"], minlength=data.num_users))
    np.testing.assert_allclose(data.movies["train_sum"], np.bincount(train["movie"], train["rating"], data.num_movies), rtol=1e-5)
    assert data.mean_rating == pytest.approx(train["rating"].mean(), rel=1e-6)


def test_genre_lists_match_the_catalogue(tiny_release, tiny_prepared):
    release = read_release(tiny_release)
    data = tiny_prepared
    by_id = {m["movie_id"]: m["genres"] for m in release.movies.to_pylist()}
    offsets, values = data.movies["genre_offsets"], data.movies["genre_values"]
    for row in range(data.num_movies):
        names = [data.genres[g] for g in values[offsets[row] : offsets[row + 1]]]
        assert names == by_id[data.movies["movie_id"][row]]


def test_preparing_twice_is_byte_identical_and_manifest_is_complete(tiny_release, tmp_path):
    release = read_release(tiny_release)
    a = prepare(release, tmp_path / "a", "random", 0.1, 0.1, seed=1)
    b = prepare(read_release(tiny_release), tmp_path / "b", "random", 0.1, 0.1, seed=1)
    for path in sorted(a.iterdir()):
        assert path.read_bytes() == (b / path.name).read_bytes(), path.name
    manifest = json.loads((a / "manifest.json").read_text())
    assert manifest["counts"]["ratings"] == 12_000
    assert manifest["counts"]["train"] + manifest["counts"]["val"] + manifest["counts"]["test"] == 12_000
    assert manifest["split"] == {"kind": "random", "val_fraction": 0.1, "test_fraction": 0.1, "seed": 1}
    assert len(manifest["source"]["files"]["ratings.csv"]["sha256"]) == 64
    assert pq.read_table(a / "train.parquet").column_names == ["user", "movie", "rating", "timestamp"]


def test_ensure_prepared_generates_once_and_reuses(tmp_path):
    cfg = DataConfig(cache_dir=str(tmp_path), synthetic=SyntheticConfig(num_users=40, num_movies=20, num_ratings=300))
    first = ensure_prepared(cfg)
    stamp = (first / "manifest.json").stat().st_mtime_ns
    assert ensure_prepared(cfg) == first
    assert (first / "manifest.json").stat().st_mtime_ns == stamp, "a current prepared dataset is reused"
    other = ensure_prepared(DataConfig(cache_dir=str(tmp_path), seed=9, synthetic=cfg.synthetic))
    assert other != first


def test_load_prepared_explains_a_missing_folder(tmp_path):
    with pytest.raises(DataError, match="no manifest.json; run `mmdlrm prepare"):
        load_prepared(tmp_path)


def test_real_ml_latest_small_prepares(tmp_path):
    out = prepare(read_release(shared("ml-latest-small")), tmp_path / "p", "random", 0.1, 0.1, seed=0)
    data = load_prepared(out)
    assert data.num_users == 610 and data.num_movies == 9_742
    assert sum(len(data.splits[s]["rating"]) for s in ("train", "val", "test")) == 100_836
    assert len(data.genres) == 19  # 20 MovieLens genre labels minus "(no genres listed)"
