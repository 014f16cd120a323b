"""The prediction task around the model: output scaling, loss, and the (loss, outputs) shape TorchRec expects."""

from __future__ import annotations

import math

import torch
from torch import nn
from torchrec.datasets.utils import Batch

from mmdlrm.config import ModelConfig
from mmdlrm.model.dlrm import MovieDLRM
from mmdlrm.model.tables import Vocab

RATING_RANGE = (0.5, 5.0)


class RatingTask(nn.Module):
    """Wraps the model with its loss.

    `rating`: prediction = lo + (hi - lo) * sigmoid(logit), in stars, trained with MSE.
    `binary`: prediction = sigmoid(logit), the probability of "liked", trained with BCE on the logit.
    `forward` returns `(loss, (loss, predictions, labels))`, all but the first detached, as TorchRec's train
    pipelines expect.
    """

    def __init__(self, model: MovieDLRM, task: str = "rating", rating_range: tuple[float, float] = RATING_RANGE) -> None:
        super().__init__()
        self.model = model
        self.task = task
        self.lo, self.hi = rating_range

    def init_output(self, mean_label: float) -> None:
        """Start the output layer's bias where the prediction equals `mean_label` (faster, steadier start)."""
        if self.task == "rating":
            p = (mean_label - self.lo) / (self.hi - self.lo)
        else:
            p = mean_label
        p = min(max(p, 1e-3), 1 - 1e-3)
        with torch.no_grad():
            self.model.output_layer.bias.fill_(math.log(p / (1 - p)))

    def predictions(self, logits: torch.Tensor) -> torch.Tensor:
        """Stars for `rating`, probabilities for `binary`."""
        if self.task == "rating":
            return self.lo + (self.hi - self.lo) * torch.sigmoid(logits)
        return torch.sigmoid(logits)

    def forward(self, batch: Batch) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        logits = self.model(batch.dense_features, batch.sparse_features, getattr(batch, "movies", None))
        preds = self.predictions(logits)
        labels = batch.labels.float()
        if self.task == "rating":
            loss = nn.functional.mse_loss(preds, labels)
        else:
            loss = nn.functional.binary_cross_entropy_with_logits(logits, labels)
        return loss, (loss.detach(), preds.detach(), labels.detach())


def build_task(
    cfg: ModelConfig,
    vocab: Vocab,
    dense_in: int,
    device: torch.device | None = None,
    sparse_device: str = "meta",
    content_dims: dict[str, int] | None = None,
    projection_dim: int = 16,
) -> RatingTask:
    """The model and its task as the config asks.

    Tables default to the meta device: DistributedModelParallel allocates each shard where the plan puts it.
    """
    model = MovieDLRM(cfg, vocab, dense_in, device=device, sparse_device=torch.device(sparse_device),
                      content_dims=content_dims, projection_dim=projection_dim)  # fmt: skip
    return RatingTask(model, task=cfg.task)
