"""Baseline (b) of the benchmarks is mmdlrm's model in plain PyTorch: same features, same logits from the same weights."""

from __future__ import annotations

import pytest
import torch

from benchmarks.baselines import PlainDLRM
from mmdlrm.config import ModelConfig
from mmdlrm.data.batches import BatchBuilder, SplitRows
from mmdlrm.model.dlrm import MovieDLRM
from mmdlrm.model.tables import sparse_features, vocab_of
from mmdlrm.schema import DENSE_FEATURES


@pytest.mark.parametrize("history_table", ["shared", "own"])
def test_plain_dlrm_with_the_history_bag_equals_mmdlrms_dlrm(tiny_prepared, history_table):
    cfg = ModelConfig(embedding_dim=8, dense_arch=[16], over_arch=[32, 16], history_length=5, history_table=history_table)
    vocab = vocab_of(cfg, tiny_prepared.manifest["counts"])
    torch.manual_seed(0)
    ours = MovieDLRM(cfg, vocab, len(DENSE_FEATURES))
    features = sparse_features(cfg, vocab)
    assert "history" in [f.name for f in features]
    plain = PlainDLRM(features, cfg.embedding_dim, cfg.dense_arch, cfg.over_arch)
    bags = ours.dlrm.sparse_arch.embedding_bag_collection.embedding_bags
    assert set(plain.tables) == set(bags)
    for table, bag in plain.tables.items():
        bag.weight.data.copy_(bags[table].weight.data)
    plain.dense_arch.load_state_dict(ours.dlrm.dense_arch.state_dict())
    plain.over_arch.load_state_dict(ours.dlrm.over_arch.state_dict())
    batch = BatchBuilder(tiny_prepared, cfg).build(SplitRows.from_prepared(tiny_prepared, "train"), torch.arange(200), leave_one_out=True)
    assert (batch.sparse_features["history"].lengths() > 0).any()
    with torch.no_grad():
        torch.testing.assert_close(plain(batch.dense_features, batch.sparse_features),
                                   ours(batch.dense_features, batch.sparse_features), rtol=1e-5, atol=1e-6)  # fmt: skip
