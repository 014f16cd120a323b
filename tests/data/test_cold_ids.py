"""Movie-id dropout (new movies through an "unknown movie" row) and models without a user-id table."""

import numpy as np
import torch

from mmdlrm.config import ModelConfig
from mmdlrm.data.batches import BatchBuilder, SplitRows
from mmdlrm.model.tables import sparse_features, vocab_of


def test_movie_id_dropout_sees_a_fixed_share_of_training_pairs_and_every_unrated_movie_as_new(tiny_prepared):
    data = tiny_prepared
    cfg = ModelConfig(movie_id_dropout=0.25)
    builder = BatchBuilder(data, cfg)
    unknown = data.num_movies
    train = SplitRows.from_prepared(data, "train")
    index = torch.arange(len(train))
    batch = builder.build(train, index, leave_one_out=True)
    keys = batch.sparse_features.to_dict()["movie"].values()
    dropped = keys == unknown
    assert 0.2 < dropped.float().mean() < 0.3
    again = builder.build(train, index, leave_one_out=True).sparse_features.to_dict()["movie"].values()
    assert torch.equal(again, keys)  # the same pairs every time
    # A dropped row reads as a new movie: no count, no mean deviation; the content still sees the real movie.
    assert torch.all(batch.dense_features[dropped, 2] == 0)
    torch.testing.assert_close(batch.dense_features[dropped, 3], torch.zeros(int(dropped.sum())), atol=1e-6, rtol=0)
    torch.testing.assert_close(batch.movies, train.movie[index].long())
    # Evaluation rows: only movies without training ratings are new.
    test = SplitRows.from_prepared(data, "test")
    eval_keys = builder.build(test, torch.arange(len(test))).sparse_features.to_dict()["movie"].values()
    unrated = torch.from_numpy(data.movies["train_count"] == 0)[test.movie]
    assert torch.equal(eval_keys == unknown, unrated)
    # The movie table has the extra row; without dropout nothing changes.
    rows = {f.name: f.rows for f in sparse_features(cfg, vocab_of(cfg, data.manifest["counts"]))}
    assert rows["movie"] == data.num_movies + 1
    plain = BatchBuilder(data, ModelConfig()).build(test, torch.arange(len(test))).sparse_features.to_dict()["movie"].values()
    torch.testing.assert_close(plain, test.movie.long())


def test_without_the_user_table_users_are_their_history(tiny_prepared):
    cfg = ModelConfig(user_id=False, history_length=10)
    rows = SplitRows.from_prepared(tiny_prepared, "val")
    kjt = BatchBuilder(tiny_prepared, cfg).build(rows, torch.arange(20)).sparse_features
    assert kjt.keys() == ["movie", "genre", "year", "history"]
    names = [f.name for f in sparse_features(cfg, vocab_of(cfg, tiny_prepared.manifest["counts"]))]
    assert names == kjt.keys()
    assert np.all(kjt.to_dict()["history"].lengths().numpy() <= 10)
