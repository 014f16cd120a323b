"""Pointwise baselines fitted on the training split in the same run: the global mean and user + movie biases.

The bias model is `r = mu + b_user + b_movie`, fitted by alternating ridge updates (closed form per id), with the
regularisation picked on the validation split. Ids never seen in training get a bias of 0. The task turns stars
into its labels and predictions (`label`, `from_stars`), so the same fit serves every pointwise task.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from mmdlrm.evaluation.metrics import PointwiseMetrics
from mmdlrm.schema import RATING_RANGE

REGULARISATION_GRID = (1.0, 3.0, 10.0, 25.0)


@dataclass
class BiasModel:
    """Fitted `mu + b_user + b_movie`."""

    mu: float
    user_bias: np.ndarray
    movie_bias: np.ndarray
    regularisation: float

    def predict(self, users: np.ndarray, movies: np.ndarray) -> np.ndarray:
        """Predicted stars, clipped to the rating range."""
        return np.clip(self.mu + self.user_bias[users] + self.movie_bias[movies], *RATING_RANGE).astype(np.float32)


def fit_bias(users: np.ndarray, movies: np.ndarray, ratings: np.ndarray, num_users: int, num_movies: int,
             regularisation: float, iterations: int = 15) -> BiasModel:  # fmt: skip
    """Alternating least squares on the biases with an L2 penalty of `regularisation` per id."""
    ratings = ratings.astype(np.float64)
    mu = float(ratings.mean())
    user_count = np.bincount(users, minlength=num_users)
    movie_count = np.bincount(movies, minlength=num_movies)
    user_bias = np.zeros(num_users)
    movie_bias = np.zeros(num_movies)
    for _ in range(iterations):
        movie_bias = np.bincount(movies, ratings - mu - user_bias[users], num_movies) / (movie_count + regularisation)
        user_bias = np.bincount(users, ratings - mu - movie_bias[movies], num_users) / (user_count + regularisation)
    return BiasModel(mu, user_bias, movie_bias, regularisation)


def score(preds: np.ndarray, labels: np.ndarray, names: tuple[str, ...]) -> dict[str, float]:
    """Metrics `names` of predictions against labels (both in the task's units), on this rank alone."""
    metrics = PointwiseMetrics(names, sync=False)  # baselines are fitted and scored on rank 0 alone
    metrics.update(torch.from_numpy(preds.astype(np.float32)), torch.from_numpy(labels.astype(np.float32)))
    return metrics.compute()


def evaluate_baselines(
    splits: dict[str, dict[str, np.ndarray]],
    num_users: int,
    num_movies: int,
    names: tuple[str, ...],
    label: Callable[[torch.Tensor], torch.Tensor],
    from_stars: Callable[[np.ndarray], np.ndarray],
    cold_movies: np.ndarray | None = None,
) -> dict[str, dict]:
    """Fit both baselines on `splits["train"]` and score them on val and test (and the test rows of
    `cold_movies`, a bool per movie, under "test_cold_start"; None there when no test row is of such a movie).

    Args:
        label: stars -> the task's label; the global-mean baseline predicts the training labels' mean.
        from_stars: the bias model's stars -> the task's prediction.

    Returns:
        {"global_mean": {"val": metrics, "test": metrics}, "bias": {..., "regularisation": chosen}}.
    """
    train = splits["train"]
    args = (train["user"], train["movie"], train["rating"], num_users, num_movies)
    candidates = [fit_bias(*args, regularisation=reg) for reg in REGULARISATION_GRID]
    val = splits["val"]
    val_rmse = [np.sqrt(np.mean((m.predict(val["user"], val["movie"]) - val["rating"]) ** 2)) for m in candidates]
    bias = candidates[int(np.argmin(val_rmse))]
    to_labels = lambda stars: label(torch.from_numpy(stars.astype(np.float32))).numpy()  # noqa: E731
    constant = float(to_labels(train["rating"]).astype(np.float64).mean())
    out: dict[str, dict] = {"global_mean": {}, "bias": {"regularisation": bias.regularisation}}
    for split in ("val", "test"):
        cols = splits[split]
        labels = to_labels(cols["rating"])
        flat = np.full(len(labels), constant, dtype=np.float32)
        predicted = from_stars(bias.predict(cols["user"], cols["movie"]))
        out["global_mean"][split] = score(flat, labels, names)
        out["bias"][split] = score(predicted, labels, names)
        if split == "test" and cold_movies is not None:
            rows = cold_movies[cols["movie"]]
            out["global_mean"]["test_cold_start"] = score(flat[rows], labels[rows], names) if rows.any() else None
            out["bias"]["test_cold_start"] = score(predicted[rows], labels[rows], names) if rows.any() else None
    return out
