"""Visitors described by the movies they like (issue 22): the same batches as a user with that history, against the
user's own batch, and a clear refusal where the model needs a user id or reads no history."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmdlrm.config import ConfigError, ModelConfig
from mmdlrm.data.batches import BatchBuilder, SplitRows
from mmdlrm.data.tower_batches import TowerBatchBuilder

LONG = 1000
"""A history longer than any tiny user's: a user's history is then all their training movies."""


def _cfg(**changes) -> ModelConfig:
    return ModelConfig(**({"user_id": False, "history_length": LONG, "count_features": True} | changes))


def _users_and_their_movies(prepared, builder: BatchBuilder, count: int = 3) -> tuple[list[int], list[np.ndarray]]:
    """A few users and each one's training movies (from the split itself, not the builder)."""
    train = prepared.splits["train"]
    user, movie = np.asarray(train["user"]), np.asarray(train["movie"])
    users = [0, 7, 41][:count]
    return users, [np.sort(movie[user == u]).astype(np.int64) for u in users]


def _kjt_rows(kjt, key: str) -> list[list[int]]:
    jagged = kjt[key]
    return [sorted(t.tolist()) for t in torch.split(jagged.values(), jagged.lengths().tolist())]


def test_a_visitor_who_likes_a_users_training_movies_gets_that_users_dlrm_batch(tiny_prepared):
    builder = BatchBuilder(tiny_prepared, _cfg())
    users, liked = _users_and_their_movies(tiny_prepared, builder)
    visitors = builder.for_visitors(liked)
    movies = torch.arange(tiny_prepared.num_movies)
    for v, u in enumerate(users):
        def batch(b, who):
            rows = SplitRows(torch.full((len(movies),), who), movies, torch.zeros(len(movies)))
            return b.build(rows, torch.arange(len(movies)))

        own, visitor = batch(builder, u), batch(visitors, v)
        for key in own.sparse_features.keys():  # movie, genre, year, history (without the candidate), counts
            assert _kjt_rows(visitor.sparse_features, key) == _kjt_rows(own.sparse_features, key), key
        # every dense feature but the user's mean rating, which a visitor does not tell: the training mean
        keep = [0, 2, 3, 4]
        torch.testing.assert_close(visitor.dense_features[:, keep], own.dense_features[:, keep])
        assert (visitor.dense_features[:, 1] == 0).all()
    # the original builder is untouched
    assert builder.user_count.shape[0] == tiny_prepared.num_users


def test_a_visitor_gets_that_users_query_in_the_two_tower_builder(tiny_prepared):
    builder = TowerBatchBuilder(tiny_prepared, _cfg(task="retrieval"))
    users, liked = _users_and_their_movies(tiny_prepared, builder.base)
    own_dense, own = builder.queries(torch.tensor(users))
    visitor_dense, visitor = builder.for_visitors(liked).queries(torch.arange(len(users)))
    assert visitor.keys() == own.keys() and "history" in own.keys() and "user" not in own.keys()
    for key in own.keys():
        assert _kjt_rows(visitor, key) == _kjt_rows(own, key), key
    torch.testing.assert_close(visitor_dense[:, 0], own_dense[:, 0])
    assert (visitor_dense[:, 1] == 0).all()


def test_a_visitor_history_keeps_the_last_movies_liked_and_counts_them_all(tiny_prepared):
    builder = BatchBuilder(tiny_prepared, _cfg(history_length=3))
    visitors = builder.for_visitors([np.array([5, 9, 11, 20, 30]), np.array([4])])
    start, length, values = visitors.history
    assert [values[s : s + n].tolist() for s, n in zip(start.tolist(), length.tolist())] == [[11, 20, 30], [4]]
    assert visitors.user_count.tolist() == [5.0, 1.0]


@pytest.mark.parametrize("history", [0, 20])
def test_a_model_with_a_user_id_table_refuses_visitors_and_says_why(tiny_prepared, history):
    changes = {"user_id": True, "history_length": history}
    for builder in (BatchBuilder(tiny_prepared, _cfg(**changes)), TowerBatchBuilder(tiny_prepared, _cfg(task="retrieval", **changes))):
        assert "model.user_id=true" in builder.visitor_problem()
        with pytest.raises(ConfigError, match="model.user_id=false and model.history_length > 0"):
            builder.for_visitors([np.array([1, 2])])
