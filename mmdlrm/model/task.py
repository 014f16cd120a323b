"""The model with its objective: the (loss, outputs) module TorchRec's DistributedModelParallel and pipelines run.

What differs between tasks (the loss, the output transform) comes from an `Objective`, the task object of
`mmdlrm.tasks`; this module knows none of them by name. `TaskModule` wraps the DLRM (one logit per row),
`RetrievalModule` the two-tower model (a row of logits per query, over the batch's candidates).
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn
from torchrec.datasets.utils import Batch

from mmdlrm.config import ModelConfig
from mmdlrm.model.dlrm import MovieDLRM
from mmdlrm.model.tables import Vocab
from mmdlrm.model.two_tower import TwoTower


class Objective(Protocol):
    """What a task contributes to the forward pass."""

    def loss(self, logits: torch.Tensor, labels: torch.Tensor, movies: torch.Tensor | None) -> torch.Tensor:
        """Training loss of a batch's logits (size B); `movies` are the rows' movie ids."""
        ...

    def predictions(self, logits: torch.Tensor) -> torch.Tensor:
        """What a prediction means to the user: stars, a probability, a ranking score."""
        ...


class TaskModule(nn.Module):
    """Wraps the model with its objective.

    `forward` returns `(loss, (loss, predictions, labels))`, all but the first detached, as TorchRec's train
    pipelines expect. In eval mode the loss is not computed (evaluation batches, e.g. every movie for a few
    users, need not have the layout a training loss expects) and is returned as 0.
    """

    def __init__(self, model: MovieDLRM, objective: Objective, embedding_l2: float = 0.0) -> None:
        super().__init__()
        self.model = model
        self.objective = objective
        self.embedding_l2 = embedding_l2

    def init_output(self, logit: float) -> None:
        """Start the output layer's bias at `logit` (the task picks it, e.g. where predictions equal the mean)."""
        with torch.no_grad():
            self.model.output_layer.bias.fill_(logit)

    def predictions(self, logits: torch.Tensor) -> torch.Tensor:
        return self.objective.predictions(logits)

    def forward(self, batch: Batch) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        movies = getattr(batch, "movies", None)
        logits, squares = self.model.score(batch.dense_features, batch.sparse_features, movies)
        preds = self.objective.predictions(logits)
        labels = batch.labels.float()
        loss = logits.new_zeros(())
        if self.training:
            loss = self.objective.loss(logits, labels, movies)
            if self.embedding_l2:
                loss = loss + self.embedding_l2 * squares
        return loss, (loss.detach(), preds.detach(), labels.detach())


def build_task_module(
    cfg: ModelConfig,
    objective: Objective,
    vocab: Vocab,
    dense_in: int,
    device: torch.device | None = None,
    sparse_device: str = "meta",
    content_dims: dict[str, int] | None = None,
    projection_dim: int = 16,
    fusion: str = "dense",
    content_dropout: float = 0.0,
) -> TaskModule:
    """The model and its objective as the config asks.

    Tables default to the meta device: DistributedModelParallel allocates each shard where the plan puts it.
    """
    model = MovieDLRM(cfg, vocab, dense_in, device=device, sparse_device=torch.device(sparse_device),
                      content_dims=content_dims, projection_dim=projection_dim, fusion=fusion,
                      content_dropout=content_dropout)  # fmt: skip
    return TaskModule(model, objective, cfg.embedding_l2)


class RetrievalModule(nn.Module):
    """Wraps the two-tower model with its objective, in the `(loss, (loss, logits, labels))` form of `TaskModule`.

    A batch (`data.tower_batches.TowerBatch`) is B queries against C candidates: the logits are B x C, with the
    batch's mask pairs at -inf (left out of each row's softmax); the labels are each row's positive's position.
    """

    def __init__(self, model: TwoTower, objective: Objective, embedding_l2: float = 0.0) -> None:
        super().__init__()
        self.model = model
        self.objective = objective
        self.embedding_l2 = embedding_l2

    def init_output(self, logit: float) -> None:
        """Nothing to start: the towers end in unit vectors, with no output bias."""

    def predictions(self, logits: torch.Tensor) -> torch.Tensor:
        return self.objective.predictions(logits)

    def forward(self, batch) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        queries, query_squares = self.model.encode_queries(batch.query_dense, batch.query_sparse)
        candidates, candidate_squares = self.model.encode_candidates(batch.candidate_dense, batch.candidate_sparse, batch.movies)
        logits = self.model.score(queries, candidates).index_put((batch.mask_rows, batch.mask_cols), torch.tensor(-torch.inf))
        labels = batch.labels
        loss = logits.new_zeros(())
        if self.training:
            loss = self.objective.loss(logits, labels, batch.movies)
            if self.embedding_l2:
                loss = loss + self.embedding_l2 * (query_squares + candidate_squares)
        return loss, (loss.detach(), logits.detach(), labels.detach())


def build_retrieval_module(
    cfg: ModelConfig,
    objective: Objective,
    vocab: Vocab,
    device: torch.device | None = None,
    sparse_device: str = "meta",
    content_dims: dict[str, int] | None = None,
    projection_dim: int = 16,
    content_dropout: float = 0.0,
) -> RetrievalModule:
    """The two-tower model and its objective; tables on the meta device by default (DMP allocates the shards)."""
    model = TwoTower(cfg, vocab, device=device, sparse_device=torch.device(sparse_device), content_dims=content_dims,
                     projection_dim=projection_dim, content_dropout=content_dropout)  # fmt: skip
    return RetrievalModule(model, objective, cfg.embedding_l2)
