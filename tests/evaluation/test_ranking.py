"""Ranking metrics against hand-computed cases; batched evaluation equals one user at a time; EASE by hand."""

import math

import numpy as np
import pytest
import torch

from mmdlrm.data.seen import SeenMovies, user_movies
from mmdlrm.evaluation.ease import Ease, ease_weights, fit_ease, interactions
from mmdlrm.evaluation.ranking import RankingMetrics, RankingTarget, evaluate_ranking, ranking_target


def test_metrics_of_a_hand_computed_case():
    # Two users, 6 movies. User A: movie 0 seen (excluded); relevant {1, 4}. User B: relevant {5}.
    scores = torch.tensor([[9.0, 8.0, 7.0, 6.0, 5.0, 1.0], [0.0, 6.0, 5.0, 4.0, 3.0, 2.0]])
    metrics = RankingMetrics(ks=(2, 4))
    metrics.update(scores, [np.array([0]), np.array([], np.int64)], [np.array([1, 4]), np.array([5])], first_query=0)
    values = metrics.compute()
    # A ranks 1, 2, 3, 4, 5: hits at positions 1 and 4. B ranks 1, 2, 3, 4, 5, 0: its movie 5 is 5th.
    a_ndcg2 = 1.0 / (1 + 1 / math.log2(3))
    a_ndcg4 = (1 + 1 / math.log2(5)) / (1 + 1 / math.log2(3))
    assert values["recall@2"] == pytest.approx((0.5 + 0.0) / 2)
    assert values["recall@4"] == pytest.approx((1.0 + 0.0) / 2)
    assert values["ndcg@2"] == pytest.approx((a_ndcg2 + 0.0) / 2)
    assert values["ndcg@4"] == pytest.approx((a_ndcg4 + 0.0) / 2)
    assert values["hit_rate@2"] == pytest.approx(0.5) and values["hit_rate@4"] == pytest.approx(0.5)


def test_an_excluded_movie_never_counts_even_when_relevant_elsewhere():
    scores = torch.tensor([[5.0, 4.0, 3.0]])
    metrics = RankingMetrics(ks=(1,))
    metrics.update(scores, [np.array([0])], [np.array([1])], first_query=0)
    assert metrics.compute()["recall@1"] == pytest.approx(1.0)  # movie 0 is out, so movie 1 leads


def _random_target(seed: int, users: int = 23, movies: int = 40) -> tuple[RankingTarget, torch.Tensor]:
    rng = np.random.default_rng(seed)
    exclude, relevant = [], []
    for _ in range(users):
        picked = rng.permutation(movies)
        exclude.append(picked[: rng.integers(0, 10)])
        relevant.append(picked[10 : 10 + rng.integers(1, 6)])
    table = torch.from_numpy(rng.normal(size=(users, movies)).astype(np.float32))
    return RankingTarget(np.arange(users), exclude, relevant), table


def test_batched_evaluation_equals_one_user_at_a_time():
    target, table = _random_target(0)
    scorer = lambda users: table[users]  # noqa: E731
    many = evaluate_ranking(scorer, target, 40, ks=(5, 10), rows_per_call=40 * 7)
    one = evaluate_ranking(scorer, target, 40, ks=(5, 10), rows_per_call=1)
    assert many == pytest.approx(one)
    # And both equal a plain loop over users with full sorting.
    expected = {f"recall@{k}": 0.0 for k in (5, 10)}
    for u in range(len(target.users)):
        row = table[u].clone()
        row[torch.from_numpy(target.exclude[u])] = -math.inf
        ranked = torch.argsort(row, descending=True)[:10].tolist()
        for k in (5, 10):
            expected[f"recall@{k}"] += len(set(ranked[:k]) & set(target.relevant[u].tolist())) / len(target.relevant[u])
    for k in (5, 10):
        assert many[f"recall@{k}"] == pytest.approx(expected[f"recall@{k}"] / len(target.users))
    assert many["users"] == 23


def test_ranking_target_excludes_training_and_validation_movies_from_test():
    splits = {
        "train": {"user": np.array([0, 0, 1]), "movie": np.array([1, 2, 3]), "rating": np.array([5.0, 4.0, 3.0])},
        "val": {"user": np.array([0, 1]), "movie": np.array([3, 4]), "rating": np.array([4.0, 5.0])},
        "test": {"user": np.array([0, 0, 1, 2]), "movie": np.array([4, 5, 0, 0]), "rating": np.array([4.5, 2.0, 4.0, 1.0])},
    }
    seen = SeenMovies({s: user_movies(splits[s]["user"], splits[s]["movie"], 3) for s in ("train", "val")})
    target = ranking_target(splits["test"], seen, "test", relevant_threshold=4.0, max_users=10)
    assert target.users.tolist() == [0, 1]  # user 2 has nothing relevant in test
    assert [e.tolist() for e in target.exclude] == [[1, 2, 3], [3, 4]]
    assert [r.tolist() for r in target.relevant] == [[4], [0]]
    assert len(ranking_target(splits["test"], seen, "test", 4.0, max_users=1, seed=3).users) == 1


def test_ease_weights_equal_the_closed_form_solved_by_hand():
    x = np.array([[1, 1, 0, 0], [0, 1, 1, 0], [1, 0, 1, 1], [0, 0, 1, 1], [1, 1, 1, 0]], dtype=np.float64)
    lam = 2.0
    p = np.linalg.inv(x.T @ x + lam * np.eye(4))
    expected = np.eye(4) - p / np.diag(p)[None, :]
    np.fill_diagonal(expected, 0.0)
    got = ease_weights(torch.from_numpy(x.T @ x).float(), lam)
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-5)
    # As a scorer over the whole catalogue (one movie never interacted with: not scored).
    users, movies = np.nonzero(x)
    items, matrix = interactions(users, movies, 5, 6, max_items=10)
    assert items.tolist() == [0, 1, 2, 3]
    scores = Ease(items, got, matrix, 6, lam).scorer()(torch.tensor([2, 4]))
    np.testing.assert_allclose(scores[:, :4].numpy(), (x @ expected)[[2, 4]], atol=1e-5)
    assert torch.isinf(scores[:, 4:]).all()


def test_ease_keeps_the_most_interacted_movies_and_picks_the_best_regularisation():
    users = np.array([0, 0, 1, 1, 1, 2, 2, 3])
    movies = np.array([0, 1, 0, 1, 2, 0, 3, 0])
    items, _ = interactions(users, movies, 4, 5, max_items=2)
    assert items.tolist() == [0, 1]
    seen = []

    def validate(scorer):
        seen.append(scorer(torch.tensor([0])).clone())
        return -len(seen)  # the first regularisation tried scores best

    model, tried = fit_ease(users, movies, 4, 5, (1.0, 10.0), validate, max_items=5)
    assert model.regularisation == 1.0 and list(tried) == [1.0, 10.0] and not torch.equal(seen[0], seen[1])


def test_negative_scores_rank_like_positive_ones():
    """torchmetrics' recall ignores predictions <= 0; a model's logits often are: the metrics must not change."""
    target, table = _random_target(1)
    shifted = evaluate_ranking(lambda u: table[u] + 100.0, target, 40, ks=(5,))
    negative = evaluate_ranking(lambda u: table[u] - 100.0, target, 40, ks=(5,))
    assert shifted == pytest.approx(negative) and shifted["recall@5"] > 0
