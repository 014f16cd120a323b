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
from mmdlrm.evaluation.ranking import KS, evaluate_ranking, model_scorer
from mmdlrm.inspection.embeddings import genre_report, nearest_movies, plot_genres
from mmdlrm.inspection.recommend import Recommendation, format_recommendations, movie_genres, recommend
from mmdlrm.inspection.run import Run, open_run
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
    """The k movies nearest to `movie_id` by learnt embedding."""
    run = open_run(folder)
    index = {int(m): i for i, m in enumerate(run.data.movies["movie_id"])}
    items = [Recommendation(m, title, movie_genres(run, index[m]), score) for m, title, score in nearest_movies(run.model, movie_id, k)]
    return f"nearest to {_title(run, movie_id)}:\n" + format_recommendations(items, "cosine")


def inspect_ranking(folder: Path, users: int) -> str:
    """Full-ranking Recall/NDCG/HitRate@10,20 of the run's model, popularity and EASE on the same test users."""
    run = open_run(folder)
    cfg = run.model.config
    settings = dataclasses.replace(cfg.eval, ranking_users=users)
    ev = Evaluation(run.data, run.builder, DistEnv(0, 1, 0, torch.device("cpu")), settings, cfg.train.seed)
    scorer = model_scorer(run.model.task, run.builder, run.data.num_movies, torch.device("cpu"))
    model = evaluate_ranking(scorer, ev.target("test"), run.data.num_movies, KS, settings.batch_size)
    ratings = run.data.splits["train"]["rating"]
    positives = RankingTask(cfg.model, cfg.eval).positives(run.data) if cfg.model.task == "ranking" else np.ones(len(ratings), bool)
    baselines = ranking_baselines(ev, positives, splits=("val", "test"))
    results = {"popularity": baselines["popularity"]["test"], "ease": baselines["ease"]["test"], "model": model,
               "ease_regularisation": baselines["ease"]["regularisation"]}  # fmt: skip
    (run.folder / "ranking.json").write_text(json.dumps(results, indent=2) + "\n")
    rows = [("popularity", results["popularity"]), ("EASE", results["ease"]), ("DLRM", model)]
    return Block(f"ranking ({model['users']} test users)", list(RankingTask.metric_names), rows).text()


def recommend_user(folder: Path, user_id: int, k: int, popular_if_unknown: bool) -> str:
    """A user's top-k movies they have not rated, or the most-rated ones for an unknown user (if allowed)."""
    run = open_run(folder)
    items, fallback = recommend(run, user_id, k, popular_if_unknown)
    head = f"user {user_id} is unknown: the {k} most-rated movies instead (popularity fallback)\n" if fallback else ""
    return head + format_recommendations(items, "count" if fallback else "score")


def _title(run: Run, movie_id: int) -> str:
    ids = run.model.movie_ids.tolist()
    return f"{movie_id} {run.model.titles[ids.index(movie_id)]}" if movie_id in ids else str(movie_id)
