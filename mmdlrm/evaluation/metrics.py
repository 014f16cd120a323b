"""Pointwise metrics (torchmetrics, reduced across ranks) and the evaluation pass over a split's rows."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn
from torchmetrics import MeanAbsoluteError, MeanMetric, MeanSquaredError, MetricCollection, SumMetric
from torchmetrics.classification import BinaryAccuracy, BinaryAUROC
from torchrec.datasets.utils import Batch


class PointwiseMetrics:
    """Streaming metrics over (prediction, label) pairs; `compute` syncs every rank's state.

    Names: `mse`, `mae` (and `rmse`, derived from mse) in the prediction's units; `auc`, `accuracy` and `log_loss`
    of a probability against a 0/1 label. The task says which apply.
    """

    def __init__(self, names: tuple[str, ...], device: torch.device | str = "cpu", sync: bool = True) -> None:
        """`sync=False` for metrics computed on one rank only (a collective there would wait forever)."""
        kw = {"sync_on_compute": sync}
        factories = {"mse": MeanSquaredError, "mae": MeanAbsoluteError, "auc": BinaryAUROC, "accuracy": BinaryAccuracy,
                     "log_loss": MeanMetric}  # fmt: skip
        wanted = [n for n in names if n != "rmse"] + (["mse"] if "rmse" in names and "mse" not in names else [])
        self.collection = MetricCollection({n: factories[n](**kw) for n in wanted}).to(device)

    def update(self, preds: torch.Tensor, labels: torch.Tensor) -> None:
        for name, metric in self.collection.items():
            if name == "log_loss":
                metric.update(nn.functional.binary_cross_entropy(preds.clamp(1e-7, 1 - 1e-7), labels, reduction="none"))
            elif name in ("auc", "accuracy"):
                metric.update(preds, labels.long())
            else:
                metric.update(preds, labels)

    def compute(self) -> dict[str, float]:
        values = {name: float(value) for name, value in self.collection.compute().items()}
        if "mse" in values:
            values["rmse"] = values["mse"] ** 0.5
        return values


@torch.no_grad()
def evaluate(
    model: nn.Module,
    batches: Iterable[Batch],
    names: tuple[str, ...],
    device: torch.device,
    keep_predictions: bool = False,
    cold_movies: torch.Tensor | None = None,
) -> tuple[dict, torch.Tensor | None, torch.Tensor | None]:
    """Metrics `names` of `model` (returning `(loss, (loss, preds, labels))`) over `batches`, optionally its predictions.

    Args:
        cold_movies: a bool per movie id; the rows of those movies are also scored apart, under
            metrics["cold_start"] (movies with few training ratings: where content features should help); None
            there when no row is of such a movie.

    Returns:
        (metrics, predictions or None, labels or None); predictions are this rank's only.
    """
    was_training = model.training
    model.eval()
    metrics = PointwiseMetrics(names, device)
    cold = PointwiseMetrics(names, device) if cold_movies is not None else None
    cold_rows = SumMetric().to(device)  # over every rank: with none, the cold-start metrics are not NaN but None
    cold_movies = cold_movies.to(device) if cold_movies is not None else None  # once, not per batch
    kept_preds, kept_labels = [], []
    for batch in batches:
        batch = batch.to(device)
        _, (_, preds, labels) = model(batch)
        metrics.update(preds, labels)
        if cold is not None:
            rows = cold_movies[batch.movies]
            cold.update(preds[rows], labels[rows])
            cold_rows.update(rows.sum())
        if keep_predictions:
            kept_preds.append(preds.cpu())
            kept_labels.append(labels.cpu())
    model.train(was_training)
    values: dict = metrics.compute()
    if cold is not None:
        values["cold_start"] = cold.compute() if cold_rows.compute() > 0 else None
    if not keep_predictions:
        return values, None, None
    return values, torch.cat(kept_preds), torch.cat(kept_labels)
