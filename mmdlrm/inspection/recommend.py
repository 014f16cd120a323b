"""Recommendations from a trained run: a user's top-k unseen movies, or a movie's nearest neighbours."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from mmdlrm.evaluation.ranking import model_scorer, top_k
from mmdlrm.inspection.run import Run


class UnknownIdError(KeyError):
    """A user or movie id the run never saw; the message says what to do."""

    def __str__(self) -> str:
        return str(self.args[0])


@dataclass
class Recommendation:
    movie_id: int
    title: str
    genres: list[str]
    score: float


def recommend(run: Run, user_id: int, k: int = 10, popular_if_unknown: bool = False) -> tuple[list[Recommendation], bool]:
    """The k best-scored movies `user_id` (raw MovieLens id) has not rated (in any split).

    Returns:
        (recommendations, fallback): fallback is True when the user is unknown and the most-rated movies were
        returned instead (only with `popular_if_unknown`).

    Raises:
        UnknownIdError: the user is not in the run's data and `popular_if_unknown` is False.
    """
    data = run.data
    position = np.searchsorted(data.users["user_id"], user_id)
    known = position < data.num_users and data.users["user_id"][position] == user_id
    popularity = torch.from_numpy(data.movies["train_count"].astype(np.float32))
    if not known:
        if not popular_if_unknown:
            raise UnknownIdError(
                f"user {user_id} is not in this run's data ({data.num_users:,} users, ids "
                f"{data.users['user_id'][0]}..{data.users['user_id'][-1]}); pass --popular-if-unknown for the most-rated movies"
            )
        return _listing(run, popularity, np.empty(0, np.int64), k), True
    seen = np.concatenate([data.splits[s]["movie"][data.splits[s]["user"] == position] for s in ("train", "val", "test")])
    scores = model_scorer(run.model.task, run.builder, data.num_movies, torch.device("cpu"))(torch.tensor([int(position)]))[0]
    return _listing(run, scores, seen, k), False


def _listing(run: Run, scores: torch.Tensor, seen: np.ndarray, k: int) -> list[Recommendation]:
    data = run.data
    return [Recommendation(int(data.movies["movie_id"][i]), data.titles[i], movie_genres(run, i), float(scores[i]))
            for i in top_k(scores, seen, k).tolist()]  # fmt: skip


def movie_genres(run: Run, index: int) -> list[str]:
    """The genre names of the movie at contiguous `index`."""
    offsets, values = run.data.movies["genre_offsets"], run.data.movies["genre_values"]
    return [run.data.genres[g] for g in values[offsets[index] : offsets[index + 1]]]


def format_recommendations(items: list[Recommendation], score_name: str = "score") -> str:
    width = max([len(r.title) for r in items] + [5])
    lines = [f"{'rank':>4}  {'movieId':>8}  {'title':<{width}}  {score_name:>6}  genres"]
    lines += [f"{i:>4}  {r.movie_id:>8}  {r.title:<{width}}  {r.score:>6.3f}  {'|'.join(r.genres)}" for i, r in enumerate(items, 1)]
    return "\n".join(lines)
