"""The two-tower model: shapes, unit norms, the temperature, masks, and its tables split between the towers."""

from __future__ import annotations

import pytest
import torch

from mmdlrm.config import EvalConfig, FeatureConfig, ModelConfig, RetrievalConfig
from mmdlrm.data.tower_batches import TowerBatchBuilder
from mmdlrm.model.tables import Vocab, tower_features
from mmdlrm.tasks import RetrievalTask


def _model(cfg: ModelConfig, vocab: Vocab):
    torch.manual_seed(0)
    return RetrievalTask(cfg, EvalConfig()).build_module(vocab, FeatureConfig(), sparse_device="cpu")


def test_tables_split_into_a_user_side_and_a_movie_side():
    cfg = ModelConfig(task="retrieval", user_id=True, history_length=5, history_table="shared", count_features=True,
                      demographics=True)  # fmt: skip
    vocab = Vocab(10, 20, 4, 28, (("user_activity", 32), ("movie_popularity", 32), ("age", 8)))
    query, candidate = tower_features(cfg, vocab)
    assert [f.name for f in query] == ["user", "history", "user_activity", "age"]
    assert [f.name for f in candidate] == ["movie", "genre", "year", "movie_popularity"]
    history = next(f for f in query if f.name == "history")
    assert history.table == "t_history" and history.multi_valued  # never the candidate tower's movie table


def test_towers_give_unit_vectors_and_logits_are_cosine_over_temperature(tiny_prepared):
    cfg = ModelConfig(task="retrieval", user_id=False, history_length=10, retrieval=RetrievalConfig(dim=16, temperature=0.2))
    vocab = Vocab(tiny_prepared.num_users, tiny_prepared.num_movies, len(tiny_prepared.genres), 28)
    module = _model(cfg, vocab).eval()
    builder = TowerBatchBuilder(tiny_prepared, cfg)
    users = torch.tensor([0, 3, 7, 11])
    queries, _ = module.model.encode_queries(*builder.queries(users))
    candidates, _ = module.model.encode_candidates(*builder.catalogue())
    assert queries.shape == (4, 16) and candidates.shape == (tiny_prepared.num_movies, 16)
    torch.testing.assert_close(queries.norm(dim=1), torch.full((4,), 1 / 0.2))  # the temperature is in the query
    torch.testing.assert_close(candidates.norm(dim=1), torch.ones(tiny_prepared.num_movies))
    logits = module.model.score(queries, candidates)
    torch.testing.assert_close(logits, torch.nn.functional.cosine_similarity(queries[:, None], candidates[None], dim=2) / 0.2)


def test_raw_vectors_and_a_movie_offset_are_one_inner_product(tiny_prepared):
    """normalize=false keeps the towers' own vectors; movie_bias appends each movie's offset to its vector and a 1
    to the query's, so the index's inner product is the model's logit."""
    settings = RetrievalConfig(dim=8, normalize=False, temperature=0.5, movie_bias=True, tower_arch=[])
    cfg = ModelConfig(task="retrieval", user_id=False, history_length=10, retrieval=settings)
    vocab = Vocab(tiny_prepared.num_users, tiny_prepared.num_movies, len(tiny_prepared.genres), 28)
    module = _model(cfg, vocab).eval()
    builder = TowerBatchBuilder(tiny_prepared, cfg)
    raw_query, _ = module.model.query(*builder.queries(torch.tensor([1, 2])))
    raw_movies, _ = module.model.candidate(*builder.catalogue()[:2])
    queries, _ = module.model.encode_queries(*builder.queries(torch.tensor([1, 2])))
    candidates, _ = module.model.encode_candidates(*builder.catalogue())
    assert queries.shape == (2, 9) and candidates.shape == (tiny_prepared.num_movies, 9) and module.model.vector_dim == 9
    assert torch.equal(queries[:, -1], torch.ones(2))
    expected = raw_query @ raw_movies[:, :8].T / 0.5 + raw_movies[:, 8]
    torch.testing.assert_close(module.model.score(queries, candidates), expected)
    assert len(module.model.query.mlp) == 1  # tower_arch=[]: one linear layer


def test_the_forward_pass_masks_pairs_and_returns_a_loss_only_in_training(tiny_prepared):
    cfg = ModelConfig(task="retrieval", user_id=False, history_length=10, retrieval=RetrievalConfig(dim=8, negatives="in_batch"))
    vocab = Vocab(tiny_prepared.num_users, tiny_prepared.num_movies, len(tiny_prepared.genres), 28)
    module = _model(cfg, vocab)  # its task has no log-Q yet (set by training_loader): a plain softmax
    builder = TowerBatchBuilder(tiny_prepared, cfg, "in_batch")
    from mmdlrm.data.batches import SplitRows

    rows = SplitRows.from_prepared(tiny_prepared, "train")
    batch = builder.build(rows, torch.arange(64), leave_one_out=True)
    assert len(batch.mask_rows) > 0  # users rated other movies of the batch
    loss, (_, logits, labels) = module(batch)
    assert logits.shape == (64, 64) and torch.equal(labels, torch.arange(64))
    assert torch.isinf(logits[batch.mask_rows, batch.mask_cols]).all() and torch.isfinite(logits.diagonal()).all()
    assert loss.item() == pytest.approx(torch.nn.functional.cross_entropy(logits, labels).item(), rel=1e-5)
    module.eval()
    assert module(batch)[0].item() == 0.0
