"""Metrics against numpy references, and the baselines on data with known biases."""

import numpy as np
import pytest
import torch

from mmdlrm.config import EvalConfig, ModelConfig
from mmdlrm.evaluation.baselines import evaluate_baselines, fit_bias
from mmdlrm.evaluation.metrics import PointwiseMetrics
from mmdlrm.tasks import BinaryTask, RatingTask


def test_rating_metrics_match_numpy_over_several_updates():
    rng = np.random.default_rng(0)
    preds, labels = rng.uniform(0.5, 5, 1000).astype(np.float32), rng.uniform(0.5, 5, 1000).astype(np.float32)
    metrics = PointwiseMetrics(RatingTask.metric_names)
    for chunk in np.array_split(np.arange(1000), 7):
        metrics.update(torch.from_numpy(preds[chunk]), torch.from_numpy(labels[chunk]))
    values = metrics.compute()
    assert values["rmse"] == pytest.approx(np.sqrt(np.mean((preds - labels) ** 2)), rel=1e-5)
    assert values["mae"] == pytest.approx(np.mean(np.abs(preds - labels)), rel=1e-5)


def test_binary_metrics_auc_by_pair_counting():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 300).astype(np.float32)
    preds = np.clip(labels * 0.3 + rng.uniform(0, 0.7, 300), 0, 1).astype(np.float32)
    metrics = PointwiseMetrics(BinaryTask.metric_names)
    metrics.update(torch.from_numpy(preds), torch.from_numpy(labels))
    values = metrics.compute()
    pos, neg = preds[labels == 1], preds[labels == 0]
    auc = ((pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()) / (len(pos) * len(neg))
    assert values["auc"] == pytest.approx(auc, rel=1e-4)
    log_loss = -np.mean(labels * np.log(preds.clip(1e-7)) + (1 - labels) * np.log((1 - preds).clip(1e-7)))
    assert values["log_loss"] == pytest.approx(log_loss, rel=1e-4)
    assert values["accuracy"] == pytest.approx(np.mean((preds >= 0.5) == labels), rel=1e-6)


def test_bias_model_recovers_planted_biases():
    rng = np.random.default_rng(2)
    n_users, n_movies, n = 200, 100, 20_000
    user_bias, movie_bias = rng.normal(0, 0.5, n_users), rng.normal(0, 0.5, n_movies)
    users, movies = rng.integers(0, n_users, n), rng.integers(0, n_movies, n)
    ratings = 3.5 + user_bias[users] + movie_bias[movies] + rng.normal(0, 0.1, n)
    model = fit_bias(users, movies, ratings, n_users, n_movies, regularisation=1.0)
    assert np.corrcoef(model.user_bias, user_bias)[0, 1] > 0.98
    assert np.corrcoef(model.movie_bias, movie_bias)[0, 1] > 0.98
    assert model.mu == pytest.approx(ratings.mean())


def test_baselines_are_scored_on_val_and_test(tiny_prepared):
    data = tiny_prepared
    task = RatingTask(ModelConfig(), EvalConfig())
    result = evaluate_baselines(data.splits, data.num_users, data.num_movies, task.metric_names, task.label, task.from_stars)
    test = data.splits["test"]
    mean = data.splits["train"]["rating"].mean()
    assert result["global_mean"]["test"]["rmse"] == pytest.approx(np.sqrt(np.mean((test["rating"] - mean) ** 2)), rel=1e-4)
    assert result["bias"]["test"]["rmse"] < result["global_mean"]["test"]["rmse"]
    assert result["bias"]["regularisation"] in (1.0, 3.0, 10.0, 25.0)
