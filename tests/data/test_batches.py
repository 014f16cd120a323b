"""Batch building: KeyedJaggedTensor lengths, offsets and values match the rows; loaders cover splits exactly."""

import numpy as np
import pytest
import torch

from mmdlrm.config import ModelConfig
from mmdlrm.data.batches import SHRINKAGE, BatchBuilder, BatchLoader, SplitRows
from mmdlrm.schema import SPARSE_FEATURES, num_year_buckets
from mmdlrm.tasks import BinaryTask


@pytest.fixture()
def builder(tiny_prepared):
    return BatchBuilder(tiny_prepared, ModelConfig(year_bucket_years=5))


def test_kjt_matches_a_row_by_row_reference(tiny_prepared, builder):
    rows = SplitRows.from_prepared(tiny_prepared, "train")
    index = torch.tensor([5, 0, 17, 17, 300, 42])
    batch = builder.build(rows, index)
    kjt = batch.sparse_features
    assert kjt.keys() == list(SPARSE_FEATURES)
    features = {key: jagged.to_dense() for key, jagged in kjt.to_dict().items()}  # per row: a list of ids
    offsets, values = tiny_prepared.movies["genre_offsets"], tiny_prepared.movies["genre_values"]
    for i, row in enumerate(index.tolist()):
        user, movie = int(rows.user[row]), int(rows.movie[row])
        assert features["user"][i].tolist() == [user]
        assert features["movie"][i].tolist() == [movie]
        assert features["genre"][i].tolist() == values[offsets[movie] : offsets[movie + 1]].tolist()
        year = tiny_prepared.movies["year"][movie]
        assert features["year"][i].tolist() == [(year - 1900) // 5 + 1]
    genre = kjt.to_dict()["genre"]
    np.testing.assert_array_equal(genre.offsets()[1:].numpy(), np.cumsum(genre.lengths().numpy()))
    assert kjt.lengths().sum() == len(kjt.values())
    torch.testing.assert_close(batch.labels, rows.rating[index])


def test_dense_features_leave_one_out_against_a_naive_reference(tiny_prepared, builder):
    rows = SplitRows.from_prepared(tiny_prepared, "train")
    data = tiny_prepared
    mu = data.mean_rating
    index = torch.arange(10)
    dense = builder.build(rows, index, leave_one_out=True).dense_features
    for i in range(10):
        u, m, r = int(rows.user[i]), int(rows.movie[i]), float(rows.rating[i])
        train = data.splits["train"]
        others_u = train["rating"][train["user"] == u].sum() - r
        count_u = (train["user"] == u).sum() - 1
        assert dense[i, 0].item() == pytest.approx(np.log1p(count_u) / 8, rel=1e-5)
        assert dense[i, 1].item() == pytest.approx((others_u + SHRINKAGE * mu) / (count_u + SHRINKAGE) - mu, abs=1e-5)
        others_m = train["rating"][train["movie"] == m].sum() - r
        count_m = (train["movie"] == m).sum() - 1
        assert dense[i, 3].item() == pytest.approx((others_m + SHRINKAGE * mu) / (count_m + SHRINKAGE) - mu, abs=1e-5)


def test_binary_labels(tiny_prepared):
    rows = SplitRows.from_prepared(tiny_prepared, "val")
    task = BinaryTask(ModelConfig(task="binary", liked_threshold=4.0), None)
    batch = BatchBuilder(tiny_prepared, ModelConfig(), task.label).build(rows, torch.arange(50))
    torch.testing.assert_close(batch.labels, (rows.rating[:50] >= 4.0).float())


def test_eval_loader_covers_every_row_once_across_ranks(tiny_prepared, builder):
    rows = SplitRows.from_prepared(tiny_prepared, "test")
    seen = []
    for rank in range(3):
        loader = BatchLoader(builder, rows, 70, shuffle=False, rank=rank, world_size=3)
        assert len(loader) == -(-len(rows) // 69)
        for batch in loader:
            seen.append(batch.labels)
    assert sum(len(s) for s in seen) == len(rows)
    torch.testing.assert_close(torch.sort(torch.cat(seen)).values, torch.sort(rows.rating).values)


def test_train_loader_shuffles_per_epoch_and_ranks_share_batches(tiny_prepared, builder):
    rows = SplitRows.from_prepared(tiny_prepared, "train")
    loaders = [BatchLoader(builder, rows, 256, shuffle=True, seed=1, rank=r, world_size=2) for r in range(2)]
    users = [torch.cat([b.sparse_features.to_dict()["user"].values() for b in loader]) for loader in loaders]
    assert len(loaders[0]) == len(loaders[1]) == len(rows) // 256
    assert len(users[0]) == len(users[1]) == 128 * len(loaders[0])
    first_epoch = torch.cat([b.labels for b in loaders[0]])
    loaders[0].set_epoch(1)
    assert not torch.equal(first_epoch, torch.cat([b.labels for b in loaders[0]]))


def test_year_buckets_cover_the_table():
    assert num_year_buckets(5) == 28  # 1900..2029 in 26 spans, plus unknown (0) and headroom
    assert num_year_buckets(1) == 132
