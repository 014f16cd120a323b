"""Recommendations from a trained run: a user's or a visitor's top-k unseen movies, a movie's nearest neighbours,
title search.

The CLI (`recommend`, `inspect movies`) and the HTTP service (mmdlrm/serving) both print or return what these
functions give, so the two never disagree.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mmdlrm.config import ConfigError
from mmdlrm.evaluation.ranking import top_k
from mmdlrm.inspection.embeddings import nearest_movies
from mmdlrm.inspection.run import Run
from mmdlrm.retrieval.recommenders import IndexRecommender, Recommender

UNKNOWN_USER_HINT = "pass --popular-if-unknown for the most-rated movies"


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


@dataclass
class VisitorRecommendations:
    """A visitor's list (`recommend_liked`) and what was made of the movies they named."""

    items: list[Recommendation]
    used: list[int]
    """The liked movieIds the list was made from, in the order given (duplicates once)."""
    unknown: list[int]
    """Liked movieIds that are not in the run's catalogue (left out of the visitor's description)."""


def movie_index(run: Run, movie_id: int) -> int | None:
    """The contiguous id of MovieLens `movie_id` in the run's data, or None if it is not in the catalogue."""
    ids = run.data.movies["movie_id"]
    position = int(np.searchsorted(ids, movie_id))
    return position if position < len(ids) and ids[position] == movie_id else None


def unknown_movie(run: Run, movie_id: int) -> UnknownIdError:
    """The error for a movieId the run's catalogue lacks, naming the catalogue's size and id range."""
    ids = run.data.movies["movie_id"]
    return UnknownIdError(f"movie {movie_id} is not in this model's catalogue ({len(ids):,} movies, ids {ids[0]}..{ids[-1]})")


def recommend(recommender: Recommender, user_id: int, k: int = 10, popular_if_unknown: bool = False,
              unknown_hint: str = UNKNOWN_USER_HINT) -> tuple[list[Recommendation], bool]:  # fmt: skip
    """The k best movies for `user_id` (raw MovieLens id) that they have not rated (in any split).

    Returns:
        (recommendations, fallback): fallback is True when the user is unknown and the most-rated movies were
        returned instead (only with `popular_if_unknown`).

    Raises:
        UnknownIdError: the user is not in the run's data and `popular_if_unknown` is False (the message ends
            with `unknown_hint`, how to ask for the fallback).
    """
    run = recommender.run
    data = run.data
    position = user_index(run, user_id)
    if position is None:
        if not popular_if_unknown:
            raise UnknownIdError(
                f"user {user_id} is not in this run's data ({data.num_users:,} users, ids "
                f"{data.users['user_id'][0]}..{data.users['user_id'][-1]}); {unknown_hint}"
            )
        popularity = torch.from_numpy(data.movies["train_count"].astype(np.float32))
        return [listing(run, int(i), float(popularity[i])) for i in top_k(popularity, np.empty(0, np.int64), k).tolist()], True
    seen = data.seen().of(position)  # every split: a few pages of the seen-movie index, no split column
    movies, scores = recommender.top_k(np.array([position]), k, [seen])
    return [listing(run, int(m), float(s)) for m, s in zip(movies[0], scores[0]) if m >= 0], False


def recommend_liked(recommender: Recommender, liked: Sequence[int], k: int = 10) -> VisitorRecommendations:
    """The k best movies for a visitor without an account who likes the movies `liked` (raw MovieLens ids), leaving
    those out. Ids the catalogue lacks are reported in `unknown`, the others describe the visitor.

    Raises:
        UnknownIdError: none of `liked` is in the catalogue.
        ConfigError: the run's model cannot describe a visitor (`Recommender.visitor_problem`).
        ValueError: `liked` is empty.
    """
    run = recommender.run
    if not liked:
        raise ValueError("no liked movies given: name at least one movieId")
    problem = recommender.visitor_problem()
    if problem is not None:
        raise ConfigError(f"this run cannot recommend for a visitor: {problem}")
    given = list(dict.fromkeys(int(m) for m in liked))
    positions = {m: movie_index(run, m) for m in given}
    unknown = [m for m, p in positions.items() if p is None]
    known = np.array([p for p in positions.values() if p is not None], dtype=np.int64)
    if not len(known):
        shown = ", ".join(map(str, unknown[:5])) + (", ..." if len(unknown) > 5 else "")
        raise UnknownIdError(f"none of the liked movies ({shown}) is in this model's catalogue "
                             f"({run.data.num_movies:,} movies); search titles for their movieIds")  # fmt: skip
    movies, scores = recommender.top_k_for_history([known], k, [known])
    items = [listing(run, int(m), float(s)) for m, s in zip(movies[0], scores[0]) if m >= 0]
    return VisitorRecommendations(items, [m for m in given if positions[m] is not None], unknown)


def similar_movies(recommender: Recommender, movie_id: int, k: int = 10) -> list[Recommendation]:
    """The k movies nearest to `movie_id` (raw MovieLens id), scored by cosine: by the index's movie vectors for a
    retrieval run, else by the learnt movie embedding.

    Raises:
        UnknownIdError: the movie is not in the run's catalogue.
    """
    run = recommender.run
    position = movie_index(run, movie_id)
    if position is None:
        raise unknown_movie(run, movie_id)
    retriever = getattr(recommender, "retriever", recommender)  # two stages: the neighbours are the retriever's
    if isinstance(retriever, IndexRecommender):
        found = retriever.similar(position, k)
    else:
        found = [(movie_index(run, m), score) for m, _, score in nearest_movies(run.model, movie_id, k)]
    return [listing(run, int(i), score) for i, score in found]


class TitleSearch:
    """Title look-up over a run's catalogue: every word of the query in the title (case and accents ignored)."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self.titles = [_folded(t) for t in run.data.titles]
        self.counts = run.data.movies["train_count"]

    def search(self, query: str, limit: int = 20) -> list[Recommendation]:
        """Up to `limit` movies whose titles hold every word of `query`: titles that start with it first, then
        the most-rated; each with its number of training ratings as the score."""
        words = _folded(query).split()
        if not words:
            return []
        start = " ".join(words)
        found = [i for i, title in enumerate(self.titles) if all(w in title for w in words)]
        found.sort(key=lambda i: (not self.titles[i].startswith(start), -int(self.counts[i]), i))
        return [listing(self.run, i, float(self.counts[i])) for i in found[:limit]]


def _folded(text: str) -> str:
    """Lower case without accents ("Amélie" -> "amelie"), for matching what a person types."""
    return "".join(c for c in unicodedata.normalize("NFKD", text.casefold()) if not unicodedata.combining(c))


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
