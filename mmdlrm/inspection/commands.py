"""The `inspect` and `recommend` commands: printed tables plus plots and JSON in the run folder."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import numpy as np
import torch

from mmdlrm.data.synthetic import PlantedTruth
from mmdlrm.distributed.env import DistEnv
from mmdlrm.evaluation.ranking import EXCLUDED, KS, evaluate_ranking
from mmdlrm.inspection.embeddings import genre_report, plot_genres
from mmdlrm.inspection.posters import poster_files
from mmdlrm.inspection.recommend import format_recommendations, recommend, recommend_liked, similar_movies
from mmdlrm.inspection.run import Run, open_run
from mmdlrm.retrieval.recommenders import (
    CatalogueRecommender,
    open_recommender,
    recommender_for,
    recommender_scorer,
)
from mmdlrm.tasks import Block, Evaluation, RankingTask, ranking_baselines

log = logging.getLogger("mmdlrm")


def planted_truth(run: Run) -> PlantedTruth | None:
    """The planted parameters when the run's data is a synthetic release (truth.npz beside its CSVs)."""
    path = Path(run.data.manifest["source"]["folder"]) / "truth.npz"
    return PlantedTruth.load(path) if path.is_file() else None


def inspect_genres(folder: Path) -> str:
    """Nearest genres by learnt embedding (and the planted correlation on synthetic data); writes the plots."""
    run = open_run(folder)
    report = genre_report(run.model, planted_truth(run))
    heatmap, projection = plot_genres(report, run.folder / "plots")
    out = report.table()
    if report.planted_correlation is not None:
        out += f"\n\nSpearman correlation of learnt vs planted genre similarity: {report.planted_correlation:.3f}"
    (run.folder / "genres.json").write_text(json.dumps({"names": report.names, "similarity": report.similarity.tolist(),
                                                        "planted_correlation": report.planted_correlation}, indent=1))  # fmt: skip
    log.info("wrote %s and %s", heatmap, projection)
    return out


def inspect_movies(folder: Path, movie_id: int, k: int) -> str:
    """The k movies nearest to `movie_id`: by the index's movie vectors for a retrieval run, else by the learnt
    movie embedding; with each movie's poster file where the run has posters."""
    run = open_run(folder)
    items = similar_movies(recommender_for(run), movie_id, k)
    posters = poster_files(run)
    return f"nearest to {_title(run, movie_id, posters)}:\n" + format_recommendations(items, "cosine", posters)


def inspect_ranking(folder: Path, users: int, ranker: Path | None = None) -> str:
    """Full-ranking Recall/NDCG/HitRate@10,20 on the same test users: popularity, EASE, the run's model and, with
    a `ranker` run for a retrieval run, the ranker alone over the whole catalogue and the two stages."""
    run = open_run(folder)
    other = open_run(ranker) if ranker is not None else None
    recommender = recommender_for(run, other)  # checks the ranker before anything is fitted
    cfg = run.model.config
    settings = dataclasses.replace(cfg.eval, ranking_users=users)
    ev = Evaluation(run.data, run.builder, DistEnv(0, 1, 0, torch.device("cpu")), settings, cfg.train.seed)
    target, n = ev.target("test"), run.data.num_movies
    rank = lambda scorer: evaluate_ranking(scorer, target, n, KS, 256 * n)  # noqa: E731
    seen = run.data.seen(EXCLUDED["test"])
    objective = run.model.objective
    if isinstance(recommender, CatalogueRecommender):
        models = {"model": (objective.model_label, rank(objective.scorer(run.model.task, run.builder, n, torch.device("cpu"))))}
    else:
        retriever = recommender if other is None else recommender.retriever
        models = {"model": (f"two-tower ({retriever.index.manifest['kind']} index)", rank(recommender_scorer(retriever, seen, max(KS))))}
    if other is not None:
        ranker_scorer = other.model.objective.scorer(other.model.task, other.builder, n, torch.device("cpu"))
        models["ranker"] = (f"{other.model.objective.model_label} alone", rank(ranker_scorer))
        label = f"two stages (top {recommender.candidates} re-ranked, retrieval weight {recommender.weight:g})"
        models["pipeline"] = (label, rank(recommender_scorer(recommender, seen, max(KS))))
    ratings_rows = run.data.split_rows("train")
    positives = objective.positives(run.data) if isinstance(objective, RankingTask) else np.ones(ratings_rows, bool)
    baselines = ranking_baselines(ev, positives, splits=("val", "test"))
    results = {"popularity": baselines["popularity"]["test"], "ease": baselines["ease"]["test"],
               "ease_regularisation": baselines["ease"]["regularisation"],
               **{key: metrics for key, (_, metrics) in models.items()},
               "labels": {key: label for key, (label, _) in models.items()}}  # fmt: skip
    if other is not None:
        results["ranker_run"] = str(other.folder)
    (run.folder / "ranking.json").write_text(json.dumps(results, indent=2) + "\n")
    rows = [("popularity", results["popularity"]), ("EASE", results["ease"]), *models.values()]
    return Block(f"ranking ({target.users.size} test users)", list(RankingTask.metric_names), rows).text()


def recommend_user(folder: Path, user_id: int, k: int, popular_if_unknown: bool, ranker: Path | None = None) -> str:
    """A user's top-k movies they have not rated, or the most-rated ones for an unknown user (if allowed)."""
    recommender = open_recommender(folder, ranker)
    items, fallback = recommend(recommender, user_id, k, popular_if_unknown)
    head = f"user {user_id} is unknown: the {k} most-rated movies instead (popularity fallback)\n" if fallback else ""
    return head + format_recommendations(items, "count" if fallback else "score")


def recommend_visitor(folder: Path, liked: list[int], k: int, ranker: Path | None = None) -> str:
    """The top-k movies for a visitor without an account who likes the movies `liked` (MovieLens ids)."""
    result = recommend_liked(open_recommender(folder, ranker), liked, k)
    head = f"left out, not in the catalogue: {', '.join(map(str, result.unknown))}\n" if result.unknown else ""
    return head + format_recommendations(result.items)


def _title(run: Run, movie_id: int, posters: dict[int, Path] | None = None) -> str:
    ids = run.model.movie_ids.tolist()
    title = f"{movie_id} {run.model.titles[ids.index(movie_id)]}" if movie_id in ids else str(movie_id)
    return f"{title} (poster {posters[movie_id]})" if posters and movie_id in posters else title
