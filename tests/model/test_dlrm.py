"""The multimodal DLRM against an independent reference: nn.EmbeddingBag lookups and a loop over dot products."""

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from torchrec.datasets.utils import Batch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from mmdlrm.config import EvalConfig, ModelConfig
from mmdlrm.model.dlrm import MovieDLRM
from mmdlrm.model.tables import Vocab, build_tables, table_name
from mmdlrm.model.task import TaskModule, build_task_module
from mmdlrm.tasks import BinaryTask, RatingTask

VOCAB = Vocab(users=7, movies=5, genres=4, year_buckets=3)
CFG = ModelConfig(embedding_dim=4, dense_arch=[6], over_arch=[8, 5])


def _inputs(batch_size: int = 3):
    torch.manual_seed(0)
    genre_lengths = torch.tensor([2, 0, 3])
    kjt = KeyedJaggedTensor(
        keys=["user", "movie", "genre", "year"],
        values=torch.tensor([1, 6, 0] + [4, 4, 2] + [3, 0, 1, 3, 2] + [0, 1, 2]),  # user, movie, genre, year
        lengths=torch.cat([torch.ones(3, dtype=torch.long), torch.ones(3, dtype=torch.long), genre_lengths, torch.ones(3, dtype=torch.long)]),
    )
    return torch.randn(batch_size, 5), kjt


def _mlp(x: torch.Tensor, linears: list[nn.Linear], last_activation: bool) -> torch.Tensor:
    for i, linear in enumerate(linears):
        x = linear(x)
        if i < len(linears) - 1 or last_activation:
            x = torch.relu(x)
    return x


def test_forward_matches_reference_embedding_bags_and_dot_products():
    model = MovieDLRM(CFG, VOCAB, dense_in=5, sparse_device=torch.device("cpu"))
    dense, kjt = _inputs()
    logits = model(dense, kjt)
    assert logits.shape == (3,)

    weights = {name: p for name, p in model.named_parameters()}
    bags = {}
    for feature in VOCAB.sizes():
        table = weights[f"dlrm.sparse_arch.embedding_bag_collection.embedding_bags.{table_name(feature)}.weight"]
        mode = "mean" if feature == "genre" else "sum"
        bags[feature] = nn.EmbeddingBag.from_pretrained(table.detach(), mode=mode)
    features = kjt.to_dict()
    pooled = []
    for feature in VOCAB.sizes():
        jt = features[feature]
        pooled.append(bags[feature](jt.values(), jt.offsets()[:-1]))
    linears = [m for m in model.dlrm.dense_arch.modules() if isinstance(m, nn.Linear)]
    x = _mlp(dense, linears, last_activation=True)
    vectors = [x, *pooled]
    dots = [
        torch.stack([vectors[i][b] @ vectors[j][b] for b in range(3)])
        for i in range(len(vectors)) for j in range(i + 1, len(vectors))
    ]  # fmt: skip
    over_in = torch.cat([x, torch.stack(dots, dim=1)], dim=1)
    over = [m for m in model.dlrm.over_arch.modules() if isinstance(m, nn.Linear)]
    expected = _mlp(over_in, over, last_activation=False).squeeze(-1)
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-6)
    assert pooled[2][1].abs().sum() == 0, "a movie without genres pools to zeros"


def test_tables_are_one_per_feature_and_one_width():
    tables = build_tables(CFG, VOCAB)
    assert [t.name for t in tables] == ["t_user", "t_movie", "t_genre", "t_year"]
    assert [t.num_embeddings for t in tables] == [7, 5, 4, 3]
    assert {t.embedding_dim for t in tables} == {4}


def test_rating_task_scales_into_range_and_starts_at_the_mean():
    objective = RatingTask(CFG, EvalConfig())
    task = TaskModule(MovieDLRM(CFG, VOCAB, 5, sparse_device=torch.device("cpu")), objective)
    dense, kjt = _inputs()
    task.init_output(objective.initial_logit(SimpleNamespace(mean_rating=3.5)))
    with torch.no_grad():
        task.model.output_layer.weight.zero_()  # the output is then the output bias alone
    labels = torch.tensor([4.0, 1.0, 5.0])
    loss, (loss_d, preds, labels_d) = task(Batch(dense, kjt, labels))
    torch.testing.assert_close(preds, torch.full((3,), 3.5))
    assert loss.item() == pytest.approx(((3.5 - labels) ** 2).mean().item(), rel=1e-5)
    assert not loss_d.requires_grad and torch.equal(labels_d, labels)
    assert 0.5 <= task.predictions(torch.tensor([-1e4])).item() and task.predictions(torch.tensor([1e4])).item() <= 5.0


class _Held(dict):
    """A split's whole columns as `Prepared.splits` holds them (parts.SplitColumns): read, then released."""

    def release(self) -> None:
        self.clear()


def test_binary_task_uses_bce_on_logits():
    objective = BinaryTask(CFG, EvalConfig())
    task = TaskModule(MovieDLRM(CFG, VOCAB, 5, sparse_device=torch.device("cpu")), objective)
    dense, kjt = _inputs()
    labels = torch.tensor([1.0, 0.0, 1.0])
    loss, (_, preds, _) = task(Batch(dense, kjt, labels))
    logits = task.model(dense, kjt)
    expected = -(labels * torch.log(torch.sigmoid(logits)) + (1 - labels) * torch.log(1 - torch.sigmoid(logits))).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    liked = {"train": _Held(rating=torch.tensor([5.0, 1.0, 2.0, 3.0]).numpy())}  # a quarter at or above 4 stars
    task.init_output(objective.initial_logit(SimpleNamespace(splits=liked)))
    assert task.model.output_layer.bias.item() == pytest.approx(math.log(0.25 / 0.75))


def test_build_task_leaves_tables_for_dmp_on_meta():
    task = build_task_module(CFG, RatingTask(CFG, EvalConfig()), VOCAB, 5)
    table = task.model.dlrm.sparse_arch.embedding_bag_collection.embedding_bags["t_user"].weight
    assert table.is_meta
    assert not task.model.output_layer.weight.is_meta


def test_score_gives_the_mean_squared_norm_of_the_looked_up_embeddings():
    model = MovieDLRM(CFG, VOCAB, 5, sparse_device=torch.device("cpu"))
    dense, kjt = _inputs()
    logits, squares = model.score(dense, kjt)
    torch.testing.assert_close(logits, model(dense, kjt))
    pooled = model.dlrm.sparse_arch(kjt)  # B x F x D
    assert squares.item() == pytest.approx(sum(pooled[b].pow(2).sum().item() for b in range(3)) / 3, rel=1e-5)


def test_dropout_sits_after_each_hidden_over_layer_and_only_in_training():
    cfg = ModelConfig(embedding_dim=4, dense_arch=[6], over_arch=[8, 5], dropout=0.5)
    model = MovieDLRM(cfg, VOCAB, 5, sparse_device=torch.device("cpu"))
    kinds = [type(m).__name__ for m in model.dlrm.over_arch.model]
    assert kinds == ["Perceptron", "Dropout", "Perceptron", "Dropout", "Linear"] and model.output_layer is model.dlrm.over_arch.model[-1]
    dense, kjt = _inputs()
    model.eval()
    torch.testing.assert_close(model(dense, kjt), model(dense, kjt))
    model.train()
    torch.manual_seed(0)
    assert not torch.equal(model(dense, kjt), model(dense, kjt))
