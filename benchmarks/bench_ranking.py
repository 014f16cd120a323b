"""Top-k quality on a real release: the ranking task, the rating task, popularity and EASE on the same test users.

    python benchmarks/bench_ranking.py --source ../shared/data/ml-latest-small     # trains both runs (minutes)
    python benchmarks/bench_ranking.py --source ... --users 1 204 407               # + their top-10 overlap

Both runs use the shipped configs (configs/ml-latest-small-ranking.yaml, configs/ml-latest-small.yaml) on the
release given, with the same split and seed; a finished run is reused, not trained again. Every model is ranked by
`mmdlrm inspect ranking`'s protocol: full ranking over all movies, the users' training and validation movies
left out, the same seeded test users for all four; EASE's regularisation is chosen on validation. The table
also reports the rating task's test RMSE, and how many movies the top-10 lists of the given users share.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.common import print_table, write_json  # noqa: E402
from mmdlrm.config import load_config  # noqa: E402
from mmdlrm.distributed.env import init_distributed, teardown  # noqa: E402
from mmdlrm.inspection.commands import inspect_ranking  # noqa: E402
from mmdlrm.inspection.recommend import recommend  # noqa: E402
from mmdlrm.inspection.run import open_run  # noqa: E402
from mmdlrm.retrieval.recommenders import recommender_for  # noqa: E402
from mmdlrm.run_folder import RunFinished  # noqa: E402
from mmdlrm.train import train  # noqa: E402

CONFIGS = {"ranking": "configs/ml-latest-small-ranking.yaml", "rating": "configs/ml-latest-small.yaml"}


def trained(config: str, overrides: list[str]) -> Path:
    """The run of `config` (trained now, or found finished)."""
    cfg = load_config(REPO / config, overrides)
    env = init_distributed(cfg.train.device)
    try:
        train(cfg, env)
    except RunFinished:
        pass
    finally:
        teardown()
    return cfg.run_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", required=True, help="release folder (ml-latest-small or another MovieLens release)")
    parser.add_argument("--output-dir", default="runs/bench-ranking", help="where the two runs are written")
    parser.add_argument("--users", type=int, nargs="*", default=[], help="MovieLens userIds whose top-10 lists to compare")
    parser.add_argument("--ranking-users", type=int, default=1000, help="test users ranked (all, up to this many)")
    parser.add_argument("--out", type=Path, help="JSON path (default benchmarks/results/ranking.json)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("mmdlrm").setLevel(logging.INFO)

    common = [f"data.source={args.source}", f"output_dir={args.output_dir}", "train.progress=false"]
    runs = {task: trained(config, common) for task, config in CONFIGS.items()}
    tables = {}
    for task, run in runs.items():
        inspect_ranking(run, args.ranking_users)  # writes ranking.json beside the run
        tables[task] = json.loads((run / "ranking.json").read_text())
    rows = [
        {"model": "popularity", **tables["ranking"]["popularity"]},
        {"model": "EASE", **tables["ranking"]["ease"]},
        {"model": "DLRM, rating task", **tables["rating"]["model"]},
        {"model": "DLRM, ranking task", **tables["ranking"]["model"]},
    ]
    assert tables["rating"]["popularity"] == tables["ranking"]["popularity"], "both runs must rank the same users"
    popularity = rows[0]["recall@20"]
    for row in rows:
        row["recall@20_vs_popularity"] = row["recall@20"] / popularity
    rmse = json.loads((runs["rating"] / "results.json").read_text())["test"]["rmse"]
    overlap = {}
    if args.users:
        opened = open_run(runs["ranking"])
        recommender = recommender_for(opened)
        lists = {u: {r.movie_id for r in recommend(recommender, u, k=10)[0]} for u in args.users}
        overlap = {f"{a}&{b}": len(lists[a] & lists[b]) for a, b in itertools.combinations(args.users, 2)}
    print(f"\nrelease {args.source}: {rows[0]['users']} test users, full ranking")
    print_table(rows, ["model", "recall@10", "recall@20", "ndcg@10", "ndcg@20", "hit_rate@20", "recall@20_vs_popularity"])
    print(f"rating task test RMSE {rmse:.4f}; EASE regularisation {tables['ranking']['ease_regularisation']}")
    if overlap:
        print("movies shared by two users' top-10 lists (ranking task):", overlap)
    path = write_json("ranking", {"release": str(args.source), "runs": {k: str(v) for k, v in runs.items()}, "table": rows,
                                  "rating_test_rmse": rmse, "top10_overlap": overlap}, args.out)  # fmt: skip
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
