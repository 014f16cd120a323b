"""Two-tower batches against plain loops: histories, candidates, labels and the pairs left out of each softmax."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmdlrm.config import ModelConfig, RetrievalConfig
from mmdlrm.data.batches import SplitRows
from mmdlrm.data.tower_batches import TowerBatchBuilder

HISTORY = 8


def _cfg(**retrieval) -> ModelConfig:
    return ModelConfig(task="retrieval", user_id=False, history_length=HISTORY, retrieval=RetrievalConfig(**retrieval))


def _train(prepared) -> tuple[SplitRows, dict[int, set[int]], dict[int, list[int]]]:
    """The training rows, each user's training movies, and each user's HISTORY most recent ones (a plain loop)."""
    train = prepared.splits["train"]
    user, movie, time = (np.asarray(train[c]) for c in ("user", "movie", "timestamp"))
    rated: dict[int, set[int]] = {}
    for u, m in zip(user.tolist(), movie.tolist()):
        rated.setdefault(u, set()).add(m)
    recent = {}
    for u in rated:
        mine = np.flatnonzero(user == u)
        order = sorted(mine, key=lambda i: (-time[i], movie[i]))
        recent[u] = [int(movie[i]) for i in order[:HISTORY]]
    return SplitRows.from_prepared(prepared, "train"), rated, recent


def _histories(kjt) -> list[list[int]]:
    jagged = kjt["history"]
    return [t.tolist() for t in torch.split(jagged.values(), jagged.lengths().tolist())]


def test_in_batch_rows_their_histories_and_masks_match_a_plain_loop(tiny_prepared):
    rows, rated, recent = _train(tiny_prepared)
    builder = TowerBatchBuilder(tiny_prepared, _cfg(), "in_batch")
    index = torch.arange(40, 140)
    batch = builder.build(rows, index, leave_one_out=True)
    users, movies = rows.user[index].tolist(), rows.movie[index].tolist()
    assert batch.movies.tolist() == movies and batch.labels.tolist() == list(range(len(index)))
    assert _histories(batch.query_sparse) == [[m for m in recent[u] if m != own] for u, own in zip(users, movies)]
    expected = {(r, c) for r, u in enumerate(users) for c, m in enumerate(movies) if c != r and m in rated[u]}
    assert set(zip(batch.mask_rows.tolist(), batch.mask_cols.tolist())) == expected
    assert any(movies[r] == movies[c] for r, c in expected)  # a copy of the row's own movie is an accidental hit
    # the query's statistics leave the row's own rating out, as the DLRM's batches do
    count = torch.from_numpy(tiny_prepared.users["train_count"].astype(np.float32))[rows.user[index].long()]
    torch.testing.assert_close(batch.query_dense[:, 0], torch.log1p(count - 1) / 8.0)


def test_without_mask_seen_only_copies_of_the_rows_own_movie_are_left_out(tiny_prepared):
    rows, _, _ = _train(tiny_prepared)
    builder = TowerBatchBuilder(tiny_prepared, _cfg(mask_seen=False), "in_batch")
    index = torch.arange(0, 300)
    batch = builder.build(rows, index, leave_one_out=True)
    movies = rows.movie[index].tolist()
    expected = {(r, c) for r in range(len(movies)) for c in range(len(movies)) if c != r and movies[c] == movies[r]}
    assert expected and set(zip(batch.mask_rows.tolist(), batch.mask_cols.tolist())) == expected


def test_catalogue_and_sampled_candidates(tiny_prepared):
    rows, rated, _ = _train(tiny_prepared)
    index = torch.arange(10, 30)
    users, movies = rows.user[index].tolist(), rows.movie[index].tolist()
    catalogue = TowerBatchBuilder(tiny_prepared, _cfg(), "catalogue").build(rows, index, leave_one_out=True)
    assert catalogue.movies.tolist() == list(range(tiny_prepared.num_movies)) and catalogue.labels.tolist() == movies
    expected = {(r, m) for r, u in enumerate(users) for m in rated[u] if m != movies[r]}
    assert set(zip(catalogue.mask_rows.tolist(), catalogue.mask_cols.tolist())) == expected

    negatives = torch.tensor([[3, 5], [7, 7]] * 10)
    sampled = TowerBatchBuilder(tiny_prepared, _cfg(), "sampled").build(rows, index, leave_one_out=True, negatives=negatives)
    assert sampled.movies.tolist() == movies + negatives.reshape(-1).tolist()
    assert sampled.labels.tolist() == list(range(20))
    pool = sampled.movies.tolist()
    expected = {(r, c) for r, u in enumerate(users) for c, m in enumerate(pool) if c != r and m in rated[u]}
    assert set(zip(sampled.mask_rows.tolist(), sampled.mask_cols.tolist())) == expected


def test_history_dropout_is_seeded_and_only_in_training(tiny_prepared):
    rows, _, _ = _train(tiny_prepared)
    builder = TowerBatchBuilder(tiny_prepared, _cfg(history_dropout=0.5), "in_batch")
    index = torch.arange(0, 400)
    full = sum(map(len, _histories(builder.build(rows, index, True).query_sparse)))
    draw = lambda seed: _histories(builder.build(rows, index, True, generator=torch.Generator().manual_seed(seed)).query_sparse)  # noqa: E731
    kept = sum(map(len, draw(1)))
    assert draw(1) == draw(1) and draw(1) != draw(2)
    assert kept / full == pytest.approx(0.5, abs=0.05)
    dense, kjt = builder.queries(torch.tensor([0, 1, 2]))  # inference: the whole recent history
    assert [len(h) for h in _histories(kjt)] == [min(HISTORY, int(c)) for c in tiny_prepared.users["train_count"][:3]]
