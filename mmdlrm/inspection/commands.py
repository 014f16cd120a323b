"""The `inspect` and `recommend` commands: printed tables plus plots in <run>/plots/."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from mmdlrm.data.synthetic import PlantedTruth
from mmdlrm.evaluation.ranking import evaluate_ranking
from mmdlrm.inspection.embeddings import genre_report, nearest_movies, plot_genres
from mmdlrm.inspection.recommend import Recommendation, format_recommendations, recommend
from mmdlrm.inspection.run import Run, open_run

log = logging.getLogger("mmdlrm")


def planted_truth(run: Run) -> PlantedTruth | None:
    """The planted parameters when the run's data is a synthetic release (truth.npz beside its CSVs)."""
    path = Path(run.data.manifest["source"]["folder"]) / "truth.npz"
    return PlantedTruth.load(path) if path.is_file() else None


def run_inspect(args: argparse.Namespace) -> int:
    run = open_run(args.run)
    if args.inspect_command == "genres":
        report = genre_report(run.model, planted_truth(run))
        heatmap, projection = plot_genres(report, run.folder / "plots")
        print(report.table())
        if report.planted_correlation is not None:
            print(f"\nSpearman correlation of learnt vs planted genre similarity: {report.planted_correlation:.3f}")
        (run.folder / "genres.json").write_text(json.dumps({"names": report.names, "similarity": report.similarity.tolist(),
                                                            "planted_correlation": report.planted_correlation}, indent=1))  # fmt: skip
        log.info("wrote %s and %s", heatmap, projection)
    elif args.inspect_command == "movies":
        neighbours = nearest_movies(run.model, args.movie, args.k)
        items = [Recommendation(m, title, [], score) for m, title, score in neighbours]
        print(f"nearest to {_title(run, args.movie)}:\n" + format_recommendations(items, "cosine"))
    else:
        metrics = evaluate_ranking(run.model.task, run.builder, run.data.splits, run.data.num_movies, num_users=args.users)
        names = [m for m in metrics["model"] if m != "users"]
        print(f"{'ranking':<12}" + "".join(f"{n:>14}" for n in names) + f"   ({metrics['model']['users']} test users)")
        for who in ("popularity", "model"):
            print(f"{'DLRM' if who == 'model' else who:<12}" + "".join(f"{metrics[who][n]:>14.4f}" for n in names))
        (run.folder / "ranking.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return 0


def run_recommend(args: argparse.Namespace) -> int:
    run = open_run(args.run)
    if args.similar is not None:
        neighbours = nearest_movies(run.model, args.similar, args.k)
        items = [Recommendation(m, title, [], score) for m, title, score in neighbours]
        print(f"nearest to {_title(run, args.similar)}:\n" + format_recommendations(items, "cosine"))
        return 0
    items, fallback = recommend(run, args.user, args.k, args.popular_if_unknown)
    if fallback:
        print(f"user {args.user} is unknown: the {args.k} most-rated movies instead (popularity fallback)")
    print(format_recommendations(items, "count" if fallback else "score"))
    return 0


def _title(run: Run, movie_id: int) -> str:
    ids = run.model.movie_ids.tolist()
    return f"{movie_id} {run.model.titles[ids.index(movie_id)]}" if movie_id in ids else str(movie_id)
