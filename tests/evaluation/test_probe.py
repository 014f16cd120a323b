"""The content-only probe: its ridge fit against a rating-level reference, and what signal it finds."""

from __future__ import annotations

import numpy as np
import pytest

from mmdlrm.data.movielens import read_release
from mmdlrm.data.prepare import load_prepared, prepare
from mmdlrm.evaluation import probe as content_probe


@pytest.fixture(scope="module")
def cold(tiny_release, tmp_path_factory):
    """The tiny release with 20 % + 20 % of its movies held out whole."""
    out = tmp_path_factory.mktemp("cold") / "prepared"
    prepare(read_release(tiny_release), out, "cold_movies", 0.2, 0.2, seed=0)
    return load_prepared(out)


def test_the_ridge_path_is_least_squares_over_the_training_ratings():
    rng = np.random.default_rng(0)
    movies, dim = 12, 3
    x = rng.normal(size=(movies, dim))
    count = rng.integers(1, 6, movies).astype(float)
    count[:2] = 0  # movies without training ratings: predicted, not fitted
    residuals = [rng.normal(size=int(c)) + i * 0.1 for i, c in enumerate(count)]
    offset = np.array([r.mean() if len(r) else 0.0 for r in residuals])
    # Reference: one row per training rating, standardised as the probe does, intercept unpenalised.
    rows = np.repeat(np.arange(movies), count.astype(int))
    mean = x[rows].mean(axis=0)
    z = (x - mean) / x[rows].std(axis=0)
    design = np.hstack([np.ones((len(rows), 1)), z[rows]])
    y = np.concatenate(residuals)
    for penalty, predicted in content_probe._ridge_path(x, offset, count):
        w = np.linalg.solve(design.T @ design + penalty * np.diag([0.0] + [1.0] * dim), design.T @ y)
        np.testing.assert_allclose(predicted, w[0] + z @ w[1:], rtol=1e-8, atol=1e-10)


def test_a_feature_carrying_the_offset_approaches_the_oracle_and_noise_adds_nothing(cold):
    data = cold
    rng = np.random.default_rng(1)
    splits = {s: {c: np.asarray(data.splits[s][c]) for c in ("user", "movie", "rating")} for s in ("train", "val", "test")}
    bias = content_probe._user_biases(splits, data.num_users, data.num_movies)
    truth = sum(content_probe._mean_by_movie(splits[s]["movie"], splits[s]["rating"] - bias.mu - bias.user_bias[splits[s]["user"]],
                                             data.num_movies) for s in ("train", "val", "test"))  # fmt: skip
    blocks = {
        "genres": content_probe._genres_and_year(data),
        "image": truth[:, None] + rng.normal(scale=0.05, size=(data.num_movies, 1)),  # a poster that knows the offset
        "text": rng.normal(size=(data.num_movies, 8)),  # texts that know nothing
    }
    has_poster = np.arange(data.num_movies) % 2 == 0
    rows = {r.features: r for r in content_probe.probe(data, blocks, has_poster)}
    alone = rows["user biases alone (no movie offset)"].test_rmse
    oracle = rows["oracle: each held-out movie's true mean offset"].test_rmse
    assert oracle < alone
    assert rows["poster"].test_rmse < oracle + 0.2 * (alone - oracle)
    assert rows["text"].test_rmse > alone - 0.1 * (alone - oracle)  # chosen on validation: noise is not fitted in
    assert rows["genres + year + poster + text"].dim == blocks["genres"].shape[1] + 1 + 8
    assert rows["poster"].test_rmse_with_poster is not None
    # The user-bias row is the bias baseline on new movies: mu + b_user.
    test = splits["test"]
    expected = np.sqrt(np.mean((np.clip(bias.mu + bias.user_bias[test["user"]], 0.5, 5.0) - test["rating"]) ** 2))
    assert alone == pytest.approx(expected)
