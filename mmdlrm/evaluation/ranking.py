"""Ranking quality: score every movie for a user, rank the unseen ones, compare with what the user rated in test.

Recall@k, NDCG@k and HitRate@k use full ranking over all movies (not sampled negatives), excluding each user's
training items, for a seeded sample of test users; a popularity ranking (training rating counts) is scored on
the same users in the same call. A test item is relevant when rated at least `relevant_threshold` stars.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from mmdlrm.data.batches import BatchBuilder, SplitRows


@torch.no_grad()
def score_movies(task: nn.Module, builder: BatchBuilder, user: int, num_movies: int) -> torch.Tensor:
    """Predicted rating (or liked-probability) of every movie for `user`: one batch of num_movies pairs."""
    movies = torch.arange(num_movies)
    rows = SplitRows(torch.full_like(movies, user), movies, torch.zeros(num_movies))
    _, (_, preds, _) = task(builder.build(rows, torch.arange(num_movies)))
    return preds


def top_k(scores: torch.Tensor, exclude: np.ndarray, k: int) -> torch.Tensor:
    """Indices of the k best-scored movies, leaving out `exclude` (e.g. the user's rated movies)."""
    scores = scores.clone()
    scores[torch.from_numpy(exclude).long()] = -math.inf
    return torch.topk(scores, min(k, int(torch.isfinite(scores).sum()))).indices


def ranking_metrics(ranked: list[int], relevant: set[int], k: int) -> dict[str, float]:
    """Recall@k, NDCG@k and HitRate@k of one user's ranking."""
    hits = [1.0 if m in relevant else 0.0 for m in ranked[:k]]
    dcg = sum(h / math.log2(i + 2) for i, h in enumerate(hits))
    ideal = sum(1.0 / math.log2(i + 2) for i in range(min(len(relevant), k)))
    return {f"recall@{k}": sum(hits) / len(relevant), f"ndcg@{k}": dcg / ideal, f"hit_rate@{k}": float(any(hits))}


def evaluate_ranking(
    task: nn.Module,
    builder: BatchBuilder,
    splits: dict[str, dict[str, np.ndarray]],
    num_movies: int,
    ks: tuple[int, ...] = (10, 20),
    num_users: int = 500,
    relevant_threshold: float = 4.0,
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """Mean ranking metrics of the model and of the popularity baseline over a sample of test users."""
    train, test = splits["train"], splits["test"]
    popularity = torch.from_numpy(np.bincount(train["movie"], minlength=num_movies).astype(np.float32))
    liked = test["rating"] >= relevant_threshold
    users = np.unique(test["user"][liked])
    rng = np.random.default_rng(seed)
    users = np.sort(rng.choice(users, min(num_users, len(users)), replace=False))
    seen_of, liked_of = _by_user(train["user"], train["movie"], users), _by_user(test["user"][liked], test["movie"][liked], users)
    totals = {"model": {}, "popularity": {}}
    for i, user in enumerate(users.tolist()):
        seen, relevant = seen_of[i], set(liked_of[i].tolist())
        for name, scores in (("model", score_movies(task, builder, user, num_movies)), ("popularity", popularity)):
            ranked = top_k(scores, seen, max(ks)).tolist()
            for k in ks:
                for metric, value in ranking_metrics(ranked, relevant, k).items():
                    totals[name][metric] = totals[name].get(metric, 0.0) + value
    return {name: {m: v / len(users) for m, v in values.items()} | {"users": len(users)} for name, values in totals.items()}


def _by_user(user: np.ndarray, movie: np.ndarray, users: np.ndarray) -> list[np.ndarray]:
    """The movies of each of `users` (sorted ids), by one sort instead of a scan per user."""
    order = np.argsort(user, kind="stable")
    start, stop = np.searchsorted(user[order], users), np.searchsorted(user[order], users + 1)
    return [movie[order[a:b]] for a, b in zip(start, stop)]
