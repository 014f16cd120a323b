"""The FAISS movie index: exact search against brute force, approximate kinds' recall, stale and damaged files."""

from __future__ import annotations

import numpy as np
import pytest

from mmdlrm.config import RetrievalConfig
from mmdlrm.retrieval.index import (
    IndexFileError,
    MovieIndex,
    build_index,
    load_index,
    model_fingerprint,
    recall_against_exact,
    save_index,
    settings_of,
)


def _unit(rows: int, dim: int, seed: int) -> np.ndarray:
    vectors = np.random.default_rng(seed).normal(size=(rows, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def _brute_force(movies: np.ndarray, queries: np.ndarray, k: int, exclude: list[np.ndarray]) -> list[list[int]]:
    out = []
    for query, left_out in zip(queries, exclude):
        scores = movies @ query
        order = [int(i) for i in np.argsort(-scores, kind="stable") if i not in set(left_out.tolist())]
        out.append(order[:k])
    return out


def test_flat_search_is_brute_force_top_k_without_the_excluded_movies():
    movies, queries = _unit(500, 16, 0), _unit(40, 16, 1)
    rng = np.random.default_rng(2)
    exclude = [rng.choice(500, size=int(rng.integers(0, 120)), replace=False) for _ in range(40)]
    cfg = RetrievalConfig(index="flat")
    index = MovieIndex(build_index(movies, cfg), {"kind": "flat", "settings": settings_of(cfg)})
    found, scores = index.search(queries, 10, exclude)
    assert found.tolist() == _brute_force(movies, queries, 10, exclude)
    np.testing.assert_allclose(scores, np.take_along_axis(queries @ movies.T, found, axis=1), rtol=1e-5, atol=1e-6)
    assert (np.diff(scores, axis=1) <= 1e-6).all()


def test_fewer_movies_left_than_k_end_the_row_with_minus_one():
    movies = _unit(12, 8, 3)
    cfg = RetrievalConfig()
    index = MovieIndex(build_index(movies, cfg), {"kind": "flat", "settings": settings_of(cfg)})
    found, scores = index.search(_unit(2, 8, 4), 5, [np.arange(9), np.arange(0)])
    assert (found[0, :3] >= 0).all() and found[0, 3:].tolist() == [-1, -1] and np.isneginf(scores[0, 3:]).all()
    assert set(found[0, :3].tolist()) == {9, 10, 11} and (found[1] >= 0).all()


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_indexes_find_most_of_the_exact_top_100(kind):
    """On clustered vectors, as learnt movie vectors are (genres, tastes): 40 centres, 3,000 movies around them."""
    rng = np.random.default_rng(5)
    centres = _unit(40, 16, 6)
    movies = centres[rng.integers(0, 40, 3000)] + 0.3 * rng.normal(size=(3000, 16)).astype(np.float32)
    movies /= np.linalg.norm(movies, axis=1, keepdims=True)
    queries = movies[rng.choice(3000, 50, replace=False)]
    index = build_index(movies, RetrievalConfig(index=kind, nprobe=16))
    assert recall_against_exact(index, movies, queries, 100) > 0.8


def test_an_index_is_checked_against_its_model_file_and_its_own_bytes(tmp_path):
    model = tmp_path / "model.pt"
    model.write_bytes(b"weights v1")
    cfg = RetrievalConfig()
    save_index(tmp_path, build_index(_unit(30, 8, 7), cfg), {"kind": "flat", "settings": settings_of(cfg),
                                                             "model": model_fingerprint(model)})  # fmt: skip
    assert load_index(tmp_path, model).num_movies == 30
    model.write_bytes(b"weights v2")  # retrained and exported again: the index no longer matches
    with pytest.raises(IndexFileError, match="built from another model.pt; `mmdlrm index .*` builds it again"):
        load_index(tmp_path, model)
    model.write_bytes(b"weights v1")
    data = (tmp_path / "index.faiss").read_bytes()
    (tmp_path / "index.faiss").write_bytes(data[: len(data) // 2])
    with pytest.raises(IndexFileError, match="is damaged"):
        load_index(tmp_path, model)
    (tmp_path / "index.json").unlink()
    with pytest.raises(IndexFileError, match="no movie index"):
        load_index(tmp_path, model)
