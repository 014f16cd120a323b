"""Top-k quality on a release: popularity, EASE, the rating and ranking tasks, the retrieval task alone and as the
first of two stages (its candidates re-ranked by the ranking task's model), all on the same test users.

    python benchmarks/bench_ranking.py --source ../shared/data/ml-latest-small     # trains the runs (minutes)
    python benchmarks/bench_ranking.py --source ... --users 1 204 407               # + their top-10 overlap
    python benchmarks/bench_ranking.py --source synthetic --set data.synthetic.watch_taste=2 ...   # another release

The runs use the shipped configs (configs/ml-latest-small-ranking.yaml, configs/ml-latest-small-retrieval.yaml,
configs/ml-latest-small.yaml) on the release given (`--set` adds overrides to every run), with the same split and
seed; a finished run is reused, not trained again. Every model is ranked by `mmdlrm inspect ranking`'s protocol:
full ranking over all movies, the users' training and validation movies left out, the same seeded test users for
all; EASE's regularisation is chosen on validation. The table also reports the rating task's test RMSE, and how
many movies the top-10 lists of the given users share.
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

from benchmarks.common import print_table, trained, write_json  # noqa: E402
from mmdlrm.inspection.commands import inspect_ranking  # noqa: E402
from mmdlrm.inspection.recommend import recommend  # noqa: E402
from mmdlrm.inspection.run import open_run  # noqa: E402
from mmdlrm.retrieval.recommenders import recommender_for  # noqa: E402

CONFIGS = {"ranking": "configs/ml-latest-small-ranking.yaml", "retrieval": "configs/ml-latest-small-retrieval.yaml",
           "rating": "configs/ml-latest-small.yaml"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", required=True, help="release folder (ml-latest-small or another MovieLens release)")
    parser.add_argument("--output-dir", default="runs/bench-ranking", help="where the two runs are written")
    parser.add_argument("--users", type=int, nargs="*", default=[], help="MovieLens userIds whose top-10 lists to compare")
    parser.add_argument("--ranking-users", type=int, default=1000, help="test users ranked (all, up to this many)")
    parser.add_argument("--out", type=Path, help="JSON path (default benchmarks/results/ranking.json)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides for every run")
    parser.add_argument("--tasks", nargs="*", default=list(CONFIGS), choices=list(CONFIGS), help="which runs to train")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("mmdlrm").setLevel(logging.INFO)

    common = [f"data.source={args.source}", f"output_dir={args.output_dir}", "train.progress=false", *args.set]
    runs = {task: trained(CONFIGS[task], common) for task in args.tasks}
    tables = {}
    for task, run in runs.items():
        ranker = runs.get("ranking") if task == "retrieval" else None
        inspect_ranking(run, args.ranking_users, ranker)  # writes ranking.json beside the run
        tables[task] = json.loads((run / "ranking.json").read_text())
    first = tables[args.tasks[0]]
    rows = [{"model": "popularity", **first["popularity"]}, {"model": "EASE", **first["ease"]}]
    labels = {"rating": "DLRM, rating task", "ranking": "DLRM, ranking task", "retrieval": "two-tower, retrieval task"}
    rows += [{"model": labels[task], **tables[task]["model"]} for task in ("rating", "ranking", "retrieval") if task in tables]
    if "pipeline" in tables.get("retrieval", {}):
        rows.append({"model": "two stages: retrieval, re-ranked by the ranking task", **tables["retrieval"]["pipeline"]})
    assert all(t["popularity"] == first["popularity"] for t in tables.values()), "every run must rank the same users"
    popularity = rows[0]["recall@20"]
    for row in rows:
        row["recall@20_vs_popularity"] = row["recall@20"] / popularity
    rmse = json.loads((runs["rating"] / "results.json").read_text())["test"]["rmse"] if "rating" in runs else None
    overlap = {}
    if args.users and "ranking" in runs:
        recommender = recommender_for(open_run(runs["ranking"]))
        lists = {u: {r.movie_id for r in recommend(recommender, u, k=10)[0]} for u in args.users}
        overlap = {f"{a}&{b}": len(lists[a] & lists[b]) for a, b in itertools.combinations(args.users, 2)}
    print(f"\nrelease {args.source} {' '.join(args.set)}: {rows[0]['users']} test users, full ranking")
    print_table(rows, ["model", "recall@10", "recall@20", "ndcg@10", "ndcg@20", "hit_rate@20", "recall@20_vs_popularity"])
    print(f"EASE regularisation {first['ease_regularisation']}" + (f"; rating task test RMSE {rmse:.4f}" if rmse else ""))
    if overlap:
        print("movies shared by two users' top-10 lists (ranking task):", overlap)
    path = write_json("ranking", {"release": str(args.source), "overrides": args.set, "table": rows, "top10_overlap": overlap,
                                  "runs": {k: str(v) for k, v in runs.items()}, "rating_test_rmse": rmse}, args.out)  # fmt: skip
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
