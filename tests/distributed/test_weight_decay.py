"""Decay of the embedding rows a batch touches: model.embedding_l2 through FBGEMM's fused row-wise Adagrad (a
touched row shrinks as the formula says, an untouched row does not), and the kernel settings that are refused."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchrec.datasets.utils import Batch
from torchrec.modules.embedding_configs import EmbeddingBagConfig
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from mmdlrm.config import ConfigError, ShardingConfig, load_config
from mmdlrm.distributed.env import init_distributed, teardown
from mmdlrm.distributed.planner import Workload
from mmdlrm.distributed.sharding import shard
from mmdlrm.model.task import TaskModule

ROWS, DIM, LR, L2, EPS = 6, 4, 0.1, 0.3, 1e-8
C = torch.arange(1.0, DIM + 1)


class _Model(nn.Module):
    """One table; logits = pooled . C, and the pooled vectors' mean squared norm, as MovieDLRM.score gives them."""

    def __init__(self) -> None:
        super().__init__()
        self.ebc = EmbeddingBagCollection(
            tables=[EmbeddingBagConfig(name="t_movie", embedding_dim=DIM, num_embeddings=ROWS, feature_names=["movie"])],
            device=torch.device("meta"),
        )
        self.bias = nn.Parameter(torch.zeros(1))

    def score(self, dense, sparse, movies=None):
        pooled = self.ebc(sparse)["movie"]
        return pooled @ C + self.bias, pooled.pow(2).sum(-1).mean()


class _SumObjective:
    def loss(self, logits, labels, movies=None):
        return logits.sum()  # d loss / d row = C per lookup

    def predictions(self, logits):
        return logits


def _weights(model) -> torch.Tensor:
    weight = next(v for k, v in model.state_dict().items() if "t_movie" in k)
    return (weight.local_tensor() if hasattr(weight, "local_tensor") else weight).clone()


def test_embedding_l2_shrinks_a_touched_row_as_the_formula_says_and_leaves_the_others():
    env = init_distributed("cpu")
    try:
        module = TaskModule(_Model(), _SumObjective(), embedding_l2=L2)
        sharded = shard(module, ShardingConfig(sparse_lr=LR, plan="table_wise"), env, Workload(2), 1e-3)
        assert "fused" in str(sharded.plan)
        before = _weights(sharded.model)
        kjt = KeyedJaggedTensor(keys=["movie"], values=torch.tensor([2, 2]), lengths=torch.tensor([1, 1]))
        loss, _ = sharded.model(Batch(torch.zeros(2, 1), kjt, torch.zeros(2)))
        sharded.optimizer.zero_grad()
        loss.backward()
        sharded.optimizer.step()
        after = _weights(sharded.model)
    finally:
        teardown()
    w = before[2].double()
    # Row 2 is looked up by both rows: the loss gives 2 C; the penalty L2 * mean(|w|^2 + |w|^2) gives 2 L2 w.
    grad = 2 * C.double() + 2 * L2 * w
    multiplier = LR / ((grad**2).mean().sqrt() + EPS)
    torch.testing.assert_close(after[2].double(), w - multiplier * grad, rtol=1e-5, atol=1e-6)
    untouched = [r for r in range(ROWS) if r != 2]
    torch.testing.assert_close(after[untouched], before[untouched])


def test_what_the_kernels_lack_is_refused_with_the_fix():
    with pytest.raises(ConfigError, match="sparse_weight_decay needs sharding.sparse_optimizer=rowwise_adagrad"):
        load_config(None, ["sharding.sparse_weight_decay=0.01", "sharding.sparse_optimizer=sgd"])
    env = init_distributed("cpu")
    try:
        for overrides, message in (
            (["sharding.sparse_weight_decay=0.01"], "needs CUDA: FBGEMM's CPU row-wise Adagrad kernel"),
        ):
            module = TaskModule(_Model(), _SumObjective())
            with pytest.raises(ConfigError, match=message):
                shard(module, load_config(None, overrides).sharding, env, Workload(2), 1e-3)
    finally:
        teardown()
