"""Top-k movies for many users at once, from a trained run: one interface, three ways.

- `CatalogueRecommender`: the run's model scores every movie for each user (any task; the DLRM's over arch runs
  once per user-movie pair, so this costs the catalogue's size per user).
- `IndexRecommender`: a retrieval run: the query tower encodes each user once, the FAISS index returns the best
  movies by inner product.
- `TwoStageRecommender`: a retrieval run's index proposes `model.retrieval.candidates` movies per user, a ranker
  run (rating, binary or ranking task, on the same prepared data) scores only those, and the best k by the
  ranker's score are kept.

Each gives, for contiguous user ids and the movies to leave out of each list, U x k movie ids and scores, best
first (-1 and -inf where fewer than k movies are left); `top_k_for_history` gives the same for visitors without
an account, each described by the movies they like (through the history feature, where the model has one and no
user-id table: `visitor_problem` says why not otherwise). `open_recommender` picks the way a run (and an optional
ranker run) supports; `recommend`, `inspect ranking`, `--all-users` and the HTTP service all go through it.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from mmdlrm.config import ConfigError
from mmdlrm.data.batches import SplitRows
from mmdlrm.data.seen import SeenMovies
from mmdlrm.evaluation.ranking import Scorer
from mmdlrm.inspection.run import Run, check_run_folder, open_run
from mmdlrm.retrieval.index import IndexFileError, MovieIndex, build_index, load_index, recall_against_exact, save_index
from mmdlrm.retrieval.index import INDEX_FILE, model_fingerprint, settings_of
from mmdlrm.retrieval.two_stages import combine, settings_for
from mmdlrm.tasks import RetrievalTask

log = logging.getLogger("mmdlrm")

CPU = torch.device("cpu")


class Recommender(Protocol):
    """Top-k movies for contiguous user ids, leaving out the given movies of each user."""

    run: Run
    name: str
    """How the lists are made, for tables and logs."""

    def top_k(self, users: np.ndarray, k: int, exclude: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """U x k movie ids and scores, best first (-1 and -inf where fewer than k movies are left)."""
        ...

    def top_k_for_history(self, liked: list[np.ndarray], k: int, exclude: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """As `top_k`, for V visitors each described by the contiguous ids of the movies they like.

        Raises:
            ConfigError: the model cannot describe a visitor (`visitor_problem`).
        """
        ...

    def visitor_problem(self) -> str | None:
        """Why this recommender cannot describe a visitor by the movies they like, or None if it can."""
        ...


def top_k_of_scores(scores: torch.Tensor, k: int, exclude: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The k best columns of each row of `scores` (U x movies), leaving out each row's `exclude` columns."""
    scores = scores.float().clone()
    rows = np.repeat(np.arange(len(exclude)), [len(e) for e in exclude])
    if len(rows):
        scores[torch.from_numpy(rows), torch.from_numpy(np.concatenate(exclude).astype(np.int64))] = -math.inf
    k_eff = min(k, scores.shape[1])
    values, movies = torch.topk(scores, k_eff, dim=1)
    movies = torch.where(torch.isfinite(values), movies, torch.full_like(movies, -1))
    out_movies = np.full((len(scores), k), -1, dtype=np.int64)
    out_scores = np.full((len(scores), k), -np.inf, dtype=np.float32)
    out_movies[:, :k_eff], out_scores[:, :k_eff] = movies.numpy(), values.numpy()
    return out_movies, out_scores


class CatalogueRecommender:
    """Every movie scored by the run's model for each user (see the module docstring)."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self.name = f"{run.model.objective.model_label}, whole catalogue"
        self._scorer: Scorer = self._scorer_of(run.builder)
        self.users_per_call = max(1, (1 << 22) // run.data.num_movies)

    def _scorer_of(self, builder) -> Scorer:
        return self.run.model.objective.scorer(self.run.model.task, builder, self.run.data.num_movies, CPU)

    def top_k(self, users, k, exclude, scorer: Scorer | None = None):
        scorer = scorer or self._scorer
        movies, scores = [], []
        for start in range(0, len(users), self.users_per_call):
            part = slice(start, start + self.users_per_call)
            found = top_k_of_scores(scorer(torch.as_tensor(users[part], dtype=torch.int64)), k, exclude[part])
            movies.append(found[0]), scores.append(found[1])
        return _stack(movies, scores, k)

    def top_k_for_history(self, liked, k, exclude):
        visitors = self._scorer_of(self.run.builder.for_visitors(liked))
        return self.top_k(np.arange(len(liked)), k, exclude, visitors)

    def visitor_problem(self):
        return self.run.builder.visitor_problem()


class IndexRecommender:
    """A retrieval run's query tower and FAISS index (see the module docstring)."""

    def __init__(self, run: Run, index: MovieIndex) -> None:
        self.run, self.index = run, index
        self.name = f"two-tower, {index.manifest['kind']} index"
        self._directions: torch.Tensor | None = None

    def top_k(self, users, k, exclude):
        if len(users) == 0:
            return np.empty((0, k), np.int64), np.empty((0, k), np.float32)
        return self.index.search(user_vectors(self.run, users), k, exclude)

    def top_k_for_history(self, liked, k, exclude):
        if not liked:
            return np.empty((0, k), np.int64), np.empty((0, k), np.float32)
        vectors = user_vectors(self.run, np.arange(len(liked)), self.run.builder.for_visitors(liked))
        return self.index.search(vectors, k, exclude)

    def visitor_problem(self):
        return self.run.builder.visitor_problem()

    def similar(self, movie: int, k: int) -> list[tuple[int, float]]:
        """The k movies whose vectors point nearest (cosine, without the movie offsets) to `movie`'s."""
        if self._directions is None:  # every movie's direction, once: a matrix-vector product per call after
            self._directions = self.run.model.task.model.directions(torch.from_numpy(movie_vectors(self.run)))
        scores = self._directions @ self._directions[movie]
        scores[movie] = -math.inf
        best = torch.topk(scores, min(k, len(scores) - 1))
        return [(int(m), float(s)) for s, m in zip(best.values, best.indices)]


def user_vectors(run: Run, users: np.ndarray, builder=None) -> np.ndarray:
    """A retrieval run's query-tower unit vectors of `users` (contiguous ids; U x dim float32), built by the run's
    builder or by `builder` (e.g. one for visitors, `TowerBatchBuilder.for_visitors`)."""
    with torch.no_grad():
        dense, sparse = (builder or run.builder).queries(torch.as_tensor(users, dtype=torch.int64))
        return run.model.task.model.encode_queries(dense, sparse)[0].numpy()


def movie_vectors(run: Run, movies: np.ndarray | None = None) -> np.ndarray:
    """A retrieval run's candidate-tower unit vectors of `movies` (contiguous ids; every movie if None)."""
    with torch.no_grad():
        if movies is None:
            dense, sparse, ids = run.builder.catalogue()
        else:
            dense, sparse, ids = run.builder.candidates(torch.as_tensor(movies, dtype=torch.int64))
        return run.model.task.model.encode_candidates(dense, sparse, ids)[0].numpy()


class TwoStageRecommender:
    """Candidates from a retrieval run's index, re-ranked by another run's model (see the module docstring).

    The final score is `two_stages.combine`: the ranker's standardised score plus `weight` times the retrieval
    score's (0: the ranker alone orders the candidates), the weight chosen on validation (`two_stages`).
    """

    def __init__(self, retriever: IndexRecommender, ranker: Run, candidates: int, weight: float = 0.0) -> None:
        self.retriever, self.ranker, self.candidates, self.weight = retriever, ranker, candidates, weight
        self.run = retriever.run
        self.name = (f"two-tower top {candidates}, re-ranked by {ranker.model.objective.model_label} ({ranker.folder.name}"
                     f"; retrieval weight {weight:g})")  # fmt: skip

    def stages(self, users: np.ndarray, exclude: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Each user's candidates (U x N, -1 where fewer), the ranker's scores of them and the retrieval scores."""
        candidates, retrieval = self.retriever.top_k(users, self.candidates, exclude)
        return candidates, pair_scores(self.ranker, users, candidates), retrieval

    def top_k(self, users, k, exclude):
        return self._best(*self.stages(users, exclude), k)

    def top_k_for_history(self, liked, k, exclude):
        problem = self.visitor_problem()
        if problem is not None:
            raise ConfigError(problem)
        candidates, retrieval = self.retriever.top_k_for_history(liked, self.candidates, exclude)
        ranker = pair_scores(self.ranker, np.arange(len(liked)), candidates, self.ranker.builder.for_visitors(liked))
        return self._best(candidates, ranker, retrieval, k)

    def visitor_problem(self):
        problem = self.retriever.visitor_problem()
        ranker = self.ranker.builder.visitor_problem()
        return problem or (f"the ranker {self.ranker.folder.name}: {ranker}" if ranker else None)

    def _best(self, candidates: np.ndarray, ranker: np.ndarray, retrieval: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The k best candidates of each row by the combined score (`stages`' three arrays)."""
        scores = combine(ranker, retrieval, self.weight)
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        movies = np.take_along_axis(candidates, order, axis=1)
        values = np.take_along_axis(scores, order, axis=1)
        if movies.shape[1] < k:  # fewer candidates than k: pad as the other recommenders do
            pad = k - movies.shape[1]
            movies = np.pad(movies, ((0, 0), (0, pad)), constant_values=-1)
            values = np.pad(values, ((0, 0), (0, pad)), constant_values=-np.inf)
        return movies, np.where(movies >= 0, values, -np.inf).astype(np.float32)


def pair_scores(ranker: Run, users: np.ndarray, movies: np.ndarray, builder=None) -> np.ndarray:
    """The ranker's score of each (user, movie) pair: `movies` is U x N (-1: no movie, scored -inf); the batches
    come from the ranker's builder, or `builder` (e.g. one for visitors)."""
    valid = movies >= 0
    rows = np.repeat(np.asarray(users, dtype=np.int64), movies.shape[1])[valid.ravel()]
    cols = movies[valid]
    out = np.full(movies.shape, -np.inf, dtype=np.float32)
    if len(rows):
        pairs = SplitRows(torch.from_numpy(rows), torch.from_numpy(cols), torch.zeros(len(rows)))
        with torch.no_grad():
            _, (_, preds, _) = ranker.model.task((builder or ranker.builder).build(pairs, torch.arange(len(rows))))
        out[valid] = preds.float().numpy()
    return out


def ensure_index(run: Run) -> MovieIndex:
    """The retrieval run's FAISS index, built (and saved in the run folder) if it is missing or older than the
    exported model."""
    model_file = run.folder / "model.pt"
    try:
        return load_index(run.folder, model_file)
    except IndexFileError as why:
        if (run.folder / INDEX_FILE).exists():
            log.info("rebuilding the movie index of %s: the saved one cannot be used (%s)", run.folder, why)
        else:
            log.info("building the movie index of %s (every movie's candidate vector)", run.folder)
    return build_run_index(run)


def build_run_index(run: Run) -> MovieIndex:
    """Encode every movie with the run's candidate tower, index the vectors, save the index with its manifest."""
    cfg = run.model.config.model.retrieval
    vectors = movie_vectors(run)
    index = build_index(vectors, cfg)
    manifest = {"format": 1, "kind": cfg.index, "settings": settings_of(cfg), "dim": int(vectors.shape[1]),
                "movies": int(vectors.shape[0]), "model": model_fingerprint(run.folder / "model.pt")}  # fmt: skip
    if cfg.index != "flat":  # how much of the exact top 100 the approximate index finds, on a sample of users
        sample = np.random.default_rng(0).choice(run.data.num_users, min(1000, run.data.num_users), replace=False)
        queries = user_vectors(run, np.sort(sample))
        manifest["recall_at_100_vs_exact"] = recall_against_exact(index, vectors, queries, 100)
        log.info("%s index: recall@100 against exact search %.4f", cfg.index, manifest["recall_at_100_vs_exact"])
    save_index(run.folder, index, manifest)
    return load_index(run.folder, run.folder / "model.pt")


def open_recommender(run_dir: str | Path, ranker_dir: str | Path | None = None) -> Recommender:
    """The recommender of the run in `run_dir` (and the ranker run in `ranker_dir`): see `recommender_for`."""
    for folder in (run_dir, ranker_dir):  # both named before either model loads
        if folder is not None:
            check_run_folder(Path(folder))
    return recommender_for(open_run(run_dir), open_run(ranker_dir) if ranker_dir is not None else None)


def is_retrieval(run: Run) -> bool:
    """Whether the run trained the two-tower retrieval model (and so has a movie index)."""
    return isinstance(run.model.objective, RetrievalTask)


def recommender_for(run: Run, ranker: Run | None = None) -> Recommender:
    """The recommender a run supports: its index (a retrieval run), with `ranker` re-ranking the candidates; or
    its model over the whole catalogue (any other run).

    Raises:
        ConfigError: a ranker given for a run that is not a retrieval run, a ranker that is itself a retrieval run,
            or a ranker trained on other prepared data.
    """
    if not is_retrieval(run):
        if ranker is not None:
            raise ConfigError(f"--ranker re-ranks the candidates of a retrieval run; {run.folder} is a "
                             f"{run.model.config.model.task} run (train one with model.task=retrieval)")  # fmt: skip
        return CatalogueRecommender(run)
    retriever = IndexRecommender(run, ensure_index(run))
    if ranker is None:
        return retriever
    if is_retrieval(ranker):
        raise ConfigError(f"--ranker {ranker.folder} is a retrieval run; give a rating, binary or ranking run")
    check_same_data(run, ranker)
    unweighted = TwoStageRecommender(retriever, ranker, run.model.config.model.retrieval.candidates)
    weight = settings_for(run, ranker, unweighted.stages)["weight"]
    return TwoStageRecommender(retriever, ranker, unweighted.candidates, weight)


def check_same_data(run: Run, other: Run) -> None:
    """Raise ConfigError unless both runs were trained on the same prepared dataset (release, split, seed)."""
    mine, theirs = run.data.manifest, other.data.manifest
    same = (mine["split"] == theirs["split"] and mine["counts"] == theirs["counts"]
            and mine["source"]["files"] == theirs["source"]["files"])  # fmt: skip
    if not same:
        raise ConfigError(
            f"{other.folder} was trained on other data than {run.folder} ({other.data.folder} against "
            f"{run.data.folder}): a ranker must share the retrieval run's release, split and seed "
            f"({json.dumps(mine['split'])})"
        )


def recommender_scorer(recommender: Recommender, seen: SeenMovies, depth: int) -> Scorer:
    """A scorer for the ranking protocol from a recommender: each user's top `depth` movies (leaving out their
    `seen` ones, as the protocol does) keep their scores, every other movie scores -inf."""
    num_movies = recommender.run.data.num_movies

    def score(users: torch.Tensor) -> torch.Tensor:
        ids = users.numpy()
        movies, values = recommender.top_k(ids, depth, seen.of_users(ids))
        out = torch.full((len(ids), num_movies), -math.inf)
        rows, cols = np.nonzero(movies >= 0)
        out[torch.from_numpy(rows), torch.from_numpy(movies[rows, cols])] = torch.from_numpy(values[rows, cols])
        return out

    return score


def _stack(movies: list[np.ndarray], scores: list[np.ndarray], k: int) -> tuple[np.ndarray, np.ndarray]:
    if not movies:
        return np.empty((0, k), np.int64), np.empty((0, k), np.float32)
    return np.concatenate(movies), np.concatenate(scores)
