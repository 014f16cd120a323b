"""Ranking quality: score every movie for a user, rank those the user has not seen, compare with what they liked.

The protocol (`RankingTarget`): a seeded sample of the users with at least one relevant held-out movie (rated at
least `relevant_threshold` stars in the split ranked); every movie is scored (full ranking, no sampled
candidates); the user's training movies, and for the test split their validation movies too, are left out.
Recall, NDCG and HitRate at each k come from torchmetrics' retrieval metrics, fed each user's top max(k) movies
plus the relevant ones ranked below them: exactly the metrics over the full ranking, with a few dozen rows per
user instead of the whole catalogue.

Any scorer can be ranked: the model (many users per forward pass; the users are shared out over the ranks and
the metrics reduced), popularity, EASE.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torchmetrics import MetricCollection
from torchmetrics.retrieval import RetrievalHitRate, RetrievalNormalizedDCG, RetrievalRecall

from mmdlrm.data.batches import BatchBuilder, SplitRows
from mmdlrm.data.seen import SeenMovies
from mmdlrm.distributed.env import DistEnv

Scorer = Callable[[torch.Tensor], torch.Tensor]
"""U contiguous user ids -> U x num_movies scores (higher: ranked first)."""
KS = (10, 20)
EXCLUDED = {"val": ("train",), "test": ("train", "val")}
"""The splits whose movies are not ranked when ranking a split's held-out movies."""


@dataclass
class RankingTarget:
    """Who is ranked, what is left out for each user, and what is relevant to them."""

    users: np.ndarray
    """Sorted contiguous user ids."""
    exclude: list[np.ndarray]
    """Per user: movies never ranked (already seen)."""
    relevant: list[np.ndarray]
    """Per user: held-out movies that count as hits."""


def ranking_target(
    held: Mapping[str, np.ndarray], seen: SeenMovies, split: str, relevant_threshold: float, max_users: int, seed: int = 0
) -> RankingTarget:
    """The ranking protocol for `split` (`val` or `test`): see the module docstring.

    Args:
        held: the split's whole `user`, `movie` and `rating` columns (each read once).
        seen: the movies of the splits `EXCLUDED[split]`, by user (`Prepared.seen`): what is left out.

    Raises:
        ValueError: no user has a relevant movie in the split.
    """
    user, movie, rating = held["user"], held["movie"], held["rating"]
    liked = rating >= relevant_threshold
    candidates = np.unique(user[liked])
    if len(candidates) == 0:
        raise ValueError(f"no {split} rating reaches eval.relevant_threshold={relevant_threshold}: nothing to rank")
    rng = np.random.default_rng(seed)
    users = np.sort(rng.choice(candidates, min(max_users, len(candidates)), replace=False))
    return RankingTarget(users, seen.of_users(users), by_user(user[liked], movie[liked], users))


def by_user(user: np.ndarray, movie: np.ndarray, users: np.ndarray) -> list[np.ndarray]:
    """The movies of each of `users` (sorted ids), by one sort instead of a scan per user."""
    order = np.argsort(user, kind="stable")
    start, stop = np.searchsorted(user[order], users), np.searchsorted(user[order], users + 1)
    return [movie[order[a:b]].astype(np.int64) for a, b in zip(start, stop)]


class RankingMetrics:
    """Recall, NDCG and HitRate at each k (torchmetrics retrieval metrics; `sync` reduces them over ranks)."""

    def __init__(self, ks: tuple[int, ...] = KS, sync: bool = False) -> None:
        self.ks = ks
        metrics = {}
        for k in ks:
            # A query without relevant items is skipped: only the placeholder `evaluate_ranking` adds has none.
            kw = {"top_k": k, "sync_on_compute": sync, "empty_target_action": "skip"}
            metrics |= {f"recall@{k}": RetrievalRecall(**kw), f"ndcg@{k}": RetrievalNormalizedDCG(**kw),
                        f"hit_rate@{k}": RetrievalHitRate(**kw)}  # fmt: skip
        self.collection = MetricCollection(metrics)
        self.users = 0

    def update(self, scores: torch.Tensor, exclude: list[np.ndarray], relevant: list[np.ndarray], first_query: int) -> None:
        """Add U users: `scores` U x num_movies, with each user's movies to leave out and relevant movies."""
        if len(scores) == 0:
            return
        scores = scores.float().clone()
        rows = np.repeat(np.arange(len(exclude)), [len(e) for e in exclude])
        scores[torch.from_numpy(rows), torch.from_numpy(np.concatenate(exclude))] = -math.inf
        top = torch.topk(scores, min(max(self.ks), scores.shape[1]), dim=1).indices
        preds, target, indexes = [], [], []
        for i, liked in enumerate(relevant):
            liked_t = torch.from_numpy(liked)
            shown = top[i][torch.isfinite(scores[i, top[i]])]
            below = liked_t[~torch.isin(liked_t, shown)]
            items = torch.cat([shown, below])
            # torchmetrics' recall counts only predictions > 0 as retrieved: pass each candidate's rank instead
            # of its score (n for the best ... 1 for the last), which keeps the order and is always positive.
            order = torch.argsort(scores[i, items], descending=True, stable=True)
            ranks = torch.empty(len(items))
            ranks[order] = torch.arange(len(items), 0, -1, dtype=torch.float32)
            preds.append(ranks)
            target.append(torch.isin(items, liked_t))
            indexes.append(torch.full((len(items),), first_query + i, dtype=torch.long))
        self.collection.update(torch.cat(preds), torch.cat(target), indexes=torch.cat(indexes))
        self.users += len(relevant)

    def compute(self) -> dict[str, float]:
        return {name: float(value) for name, value in self.collection.compute().items()}


def evaluate_ranking(
    scorer: Scorer,
    target: RankingTarget,
    num_movies: int,
    ks: tuple[int, ...] = KS,
    rows_per_call: int = 65_536,
    env: DistEnv | None = None,
) -> dict[str, float]:
    """Ranking metrics of `scorer` on `target`, scoring `rows_per_call // num_movies` users per call.

    With `env` (a sharded model), every rank scores its own contiguous share of the users, all ranks make the
    same number of calls (collectives inside the model need that; a rank out of users scores an empty batch),
    and the metrics are reduced over the ranks. Without, this process ranks every user.
    """
    rank, world = (env.rank, env.world_size) if env is not None else (0, 1)
    per_call = max(1, rows_per_call // num_movies)
    bounds = [len(target.users) * r // world for r in range(world + 1)]
    mine = range(bounds[rank], bounds[rank + 1])
    calls = max(math.ceil((bounds[r + 1] - bounds[r]) / per_call) for r in range(world))
    metrics = RankingMetrics(ks, sync=world > 1)
    for call in range(calls):
        part = mine[call * per_call : (call + 1) * per_call]
        users = torch.from_numpy(target.users[part.start : part.stop])
        scores = scorer(users)
        metrics.update(scores, target.exclude[part.start : part.stop], target.relevant[part.start : part.stop], part.start)
    if world > 1 and metrics.users == 0:  # torchmetrics cannot sync an empty state: a query with nothing relevant
        placeholder = torch.tensor([len(target.users) + rank])
        metrics.collection.update(torch.zeros(1), torch.zeros(1, dtype=torch.bool), indexes=placeholder)
    values = metrics.compute()
    return values | {"users": len(target.users)}


def model_scorer(model: torch.nn.Module, builder: BatchBuilder, num_movies: int, device: torch.device) -> Scorer:
    """Scores of every movie for each user from a (possibly sharded) task module: one forward pass per call.

    The module must be in eval mode; it returns `(loss, (loss, predictions, labels))`.
    """
    movies = torch.arange(num_movies)

    @torch.no_grad()
    def score(users: torch.Tensor) -> torch.Tensor:
        rows = SplitRows(users.repeat_interleave(num_movies), movies.repeat(len(users)), torch.zeros(len(users) * num_movies))
        _, (_, preds, _) = model(builder.build(rows, torch.arange(len(rows))).to(device))
        return preds.view(len(users), num_movies).float().cpu()

    return score


def tower_scorer(module: torch.nn.Module, builder, device: torch.device) -> Scorer:
    """Scores of every movie for each user from a (possibly sharded) two-tower module: the catalogue's vectors are
    encoded once, each call encodes its users and takes the dot products.

    Args:
        builder: a `data.tower_batches.TowerBatchBuilder` of the same data.
    """
    model = getattr(module, "module", module).model  # under DistributedModelParallel: the wrapped module
    with torch.no_grad():
        dense, sparse, movies = builder.catalogue()
        candidates, _ = model.encode_candidates(dense.to(device), sparse.to(device), movies.to(device))

    @torch.no_grad()
    def score(users: torch.Tensor) -> torch.Tensor:
        dense, sparse = builder.queries(users)
        queries, _ = model.encode_queries(dense.to(device), sparse.to(device))
        return model.score(queries, candidates).float().cpu()

    return score


def popularity_scorer(train_movies: np.ndarray, num_movies: int) -> Scorer:
    """Every user gets the same scores: the movies' training interaction counts."""
    counts = torch.from_numpy(np.bincount(train_movies, minlength=num_movies).astype(np.float32))
    return lambda users: counts.expand(len(users), -1)


def top_k(scores: torch.Tensor, exclude: np.ndarray, k: int) -> torch.Tensor:
    """Indices of the k best-scored movies, leaving out `exclude` (e.g. the user's rated movies)."""
    scores = scores.clone()
    scores[torch.from_numpy(exclude).long()] = -math.inf
    return torch.topk(scores, min(k, int(torch.isfinite(scores).sum()))).indices
