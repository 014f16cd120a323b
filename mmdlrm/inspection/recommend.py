"""Recommendations from a trained run: a user's top-k unseen movies, or a movie's nearest neighbours."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mmdlrm.evaluation.ranking import top_k
from mmdlrm.inspection.run import Run
from mmdlrm.retrieval.recommenders import Recommender


class UnknownIdError(KeyError):
    """A user or movie id the run never saw; the message says what to do."""

    def __str__(self) -> str:
        return str(self.args[0])


@dataclass
class Recommendation:
    movie_id: int
    title: str
    year: int | None
    genres: list[str]
    score: float


def user_index(run: Run, user_id: int) -> int | None:
    """The contiguous id of MovieLens `user_id` in the run's data, or None if the run never saw the user."""
    ids = run.data.users["user_id"]
    position = int(np.searchsorted(ids, user_id))
    return position if position < len(ids) and ids[position] == user_id else None


def recommend(recommender: Recommender, user_id: int, k: int = 10, popular_if_unknown: bool = False) -> tuple[list[Recommendation], bool]:
    """The k best movies for `user_id` (raw MovieLens id) that they have not rated (in any split).

    Returns:
        (recommendations, fallback): fallback is True when the user is unknown and the most-rated movies were
        returned instead (only with `popular_if_unknown`).

    Raises:
        UnknownIdError: the user is not in the run's data and `popular_if_unknown` is False.
    """
    run = recommender.run
    data = run.data
    position = user_index(run, user_id)
    if position is None:
        if not popular_if_unknown:
            raise UnknownIdError(
                f"user {user_id} is not in this run's data ({data.num_users:,} users, ids "
                f"{data.users['user_id'][0]}..{data.users['user_id'][-1]}); pass --popular-if-unknown for the most-rated movies"
            )
        popularity = torch.from_numpy(data.movies["train_count"].astype(np.float32))
        return [listing(run, int(i), float(popularity[i])) for i in top_k(popularity, np.empty(0, np.int64), k).tolist()], True
    seen = data.seen().of(position)  # every split: a few pages of the seen-movie index, no split column
    movies, scores = recommender.top_k(np.array([position]), k, [seen])
    return [listing(run, int(m), float(s)) for m, s in zip(movies[0], scores[0]) if m >= 0], False


def listing(run: Run, index: int, score: float) -> Recommendation:
    """Movie `index` (contiguous id) as a recommendation: its MovieLens id, title, year, genres and `score`."""
    data = run.data
    year = int(data.movies["year"][index])
    return Recommendation(int(data.movies["movie_id"][index]), data.titles[index], year if year > 0 else None,
                          movie_genres(run, index), score)  # fmt: skip


def movie_genres(run: Run, index: int) -> list[str]:
    """The genre names of the movie at contiguous `index`."""
    offsets, values = run.data.movies["genre_offsets"], run.data.movies["genre_values"]
    return [run.data.genres[g] for g in values[offsets[index] : offsets[index + 1]]]


def format_recommendations(items: list[Recommendation], score_name: str = "score", posters: dict[int, Path] | None = None) -> str:
    """A printed table of `items`; with `posters` (movieId -> image, `inspection.posters.poster_files`), each
    row ends with its poster's path ("-" for a movie without one)."""
    width = max([len(r.title) for r in items] + [5])
    genres = ["|".join(r.genres) for r in items]
    head = f"{'rank':>4}  {'movieId':>8}  {'title':<{width}}  {score_name:>6}  "
    rows = [f"{i:>4}  {r.movie_id:>8}  {r.title:<{width}}  {r.score:>6.3f}  " for i, r in enumerate(items, 1)]
    if not posters:
        return "\n".join([head + "genres", *(row + g for row, g in zip(rows, genres))])
    wide = max([len(g) for g in genres] + [6])
    lines = [f"{row}{g:<{wide}}  {posters.get(r.movie_id, '-')}" for row, g, r in zip(rows, genres, items)]
    return "\n".join([f"{head}{'genres':<{wide}}  poster", *lines])
