"""Baselines fitted on the training split in the same run: the global mean and user + movie biases.

The bias model is `r = mu + b_user + b_movie`, fitted by alternating ridge updates (closed form per id), with the
regularisation picked on the validation split. Ids never seen in training get a bias of 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from mmdlrm.evaluation.metrics import RatingMetrics

RANGE = (0.5, 5.0)
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
        return np.clip(self.mu + self.user_bias[users] + self.movie_bias[movies], *RANGE).astype(np.float32)


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


def score(preds: np.ndarray, ratings: np.ndarray, task: str, liked_threshold: float) -> dict[str, float]:
    """Metrics of predictions: stars for `rating`, liked-probabilities for `binary`."""
    labels = torch.from_numpy(ratings.astype(np.float32))
    p = torch.from_numpy(preds.astype(np.float32))
    if task == "binary":
        labels = (labels >= liked_threshold).float()
    metrics = RatingMetrics(task, sync=False)  # baselines are fitted and scored on rank 0 alone
    metrics.update(p, labels)
    return metrics.compute()


def evaluate_baselines(splits: dict[str, dict[str, np.ndarray]], num_users: int, num_movies: int, task: str = "rating",
                       liked_threshold: float = 4.0, cold_movies: np.ndarray | None = None) -> dict[str, dict]:  # fmt: skip
    """Fit both baselines on `splits["train"]` and score them on val and test (and the test rows of
    `cold_movies`, a bool per movie, under "test_cold_start").

    Returns:
        {"global_mean": {"val": metrics, "test": metrics}, "bias": {..., "regularisation": chosen}}.
    """
    train = splits["train"]
    args = (train["user"], train["movie"], train["rating"], num_users, num_movies)
    candidates = [fit_bias(*args, regularisation=reg) for reg in REGULARISATION_GRID]
    val = splits["val"]
    val_rmse = [np.sqrt(np.mean((m.predict(val["user"], val["movie"]) - val["rating"]) ** 2)) for m in candidates]
    bias = candidates[int(np.argmin(val_rmse))]
    if task == "binary":  # the training rate of "liked"; biases rescaled from stars to a [0, 1] score
        constant = float((train["rating"] >= liked_threshold).mean())
        to_task = lambda stars: (stars - RANGE[0]) / (RANGE[1] - RANGE[0])  # noqa: E731
    else:
        constant = float(train["rating"].astype(np.float64).mean())
        to_task = lambda stars: stars  # noqa: E731
    out: dict[str, dict] = {"global_mean": {}, "bias": {"regularisation": bias.regularisation}}
    for split in ("val", "test"):
        cols = splits[split]
        flat = np.full(len(cols["rating"]), constant, dtype=np.float32)
        out["global_mean"][split] = score(flat, cols["rating"], task, liked_threshold)
        stars = bias.predict(cols["user"], cols["movie"])
        out["bias"][split] = score(to_task(stars), cols["rating"], task, liked_threshold)
        if split == "test" and cold_movies is not None:
            rows = cold_movies[cols["movie"]]
            out["global_mean"]["test_cold_start"] = score(flat[rows], cols["rating"][rows], task, liked_threshold)
            out["bias"]["test_cold_start"] = score(to_task(stars)[rows], cols["rating"][rows], task, liked_threshold)
    return out
