"""Serving top-k from the retrieval index against scoring the catalogue with the DLRM, at ml-25m scale.

    python benchmarks/bench_retrieval.py            # 162,000 users, 62,000 movies, 25M ratings (~10 minutes)
    python benchmarks/bench_retrieval.py --quick    # small, a minute

On a synthetic release of the given size (generated and prepared once under --cache-dir), with the shipped
configs' models (configs/ml25m-retrieval.yaml, configs/ml25m.yaml with the ranking task) at their initial weights
(speed does not depend on what the weights learnt):
- one user's top 10, leaving out the movies they rated: the query tower + the FAISS index (flat, ivf, hnsw; the
  approximate ones with their recall@100 against exact search), and the DLRM scoring every movie, same run;
- every user's top 100 (`recommend --all-users` as the command runs it: one process), rows/s and total time.
Prints the tables and writes benchmarks/results/retrieval.json (or --out).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.common import print_table, write_json  # noqa: E402
from mmdlrm.config import load_config  # noqa: E402
from mmdlrm.data.prepare import ensure_prepared, load_prepared  # noqa: E402
from mmdlrm.distributed.env import DistEnv  # noqa: E402
from mmdlrm.export import ExportedModel  # noqa: E402
from mmdlrm.inspection.run import Run  # noqa: E402
from mmdlrm.model.tables import vocab_of  # noqa: E402
from mmdlrm.retrieval.all_users import recommend_all  # noqa: E402
from mmdlrm.retrieval.index import MovieIndex, build_index, recall_against_exact, settings_of  # noqa: E402
from mmdlrm.retrieval.recommenders import CatalogueRecommender, IndexRecommender, movie_vectors, user_vectors  # noqa: E402
from mmdlrm.tasks import build_task  # noqa: E402

FULL = {"users": 162_000, "movies": 62_000, "ratings": 25_000_000, "one_user": 300, "dlrm_users": 5}
QUICK = {"users": 5_000, "movies": 3_000, "ratings": 200_000, "one_user": 50, "dlrm_users": 3}
SYNTHETIC = ["data.source=synthetic", "data.synthetic.media=false"]


def in_memory_run(config: str, overrides: list[str], cache: str) -> Run:
    """A run of `config` on the benchmark data, its model at its initial weights, without a run folder."""
    cfg = load_config(REPO / config, [*SYNTHETIC, f"data.cache_dir={cache}", *overrides])
    data = load_prepared(ensure_prepared(cfg.data))
    task = build_task(cfg.model, cfg.eval)
    torch.manual_seed(0)
    vocab = vocab_of(cfg.model, data.manifest["counts"])
    module = task.build_module(vocab, cfg.features, sparse_device="cpu").eval()
    ids = torch.from_numpy(np.asarray(data.users["user_id"], dtype=np.int64))
    model = ExportedModel(module, task, cfg, vocab, data.genres, ids,
                          torch.from_numpy(np.asarray(data.movies["movie_id"], dtype=np.int64)), data.titles, {})  # fmt: skip
    return Run(Path(tempfile.mkdtemp(prefix="bench-retrieval-")), model, data, task.builder(data), {})


def one_user_ms(recommender, data, users: np.ndarray, k: int = 10) -> dict:
    """Median and p99 milliseconds of one user's top k (their rated movies left out), over `users`."""
    seen = data.seen()
    recommender.top_k(users[:1], k, seen.of_users(users[:1]))  # warm-up
    latencies = []
    for user in users:
        start = time.perf_counter()
        recommender.top_k(np.array([user]), k, [seen.of(int(user))])
        latencies.append(1000 * (time.perf_counter() - start))
    return {"top10_ms_p50": statistics.median(latencies), "top10_ms_p99": float(np.percentile(latencies, 99)),
            "users_timed": len(users)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small and fast, for CI")
    parser.add_argument("--cache-dir", default="data", help="where the benchmark release is generated and prepared")
    parser.add_argument("--out", help="JSON path (default benchmarks/results/retrieval[-quick].json)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("torch.fx._symbolic_trace").setLevel(logging.ERROR)
    size = QUICK if args.quick else FULL
    scale = [f"data.synthetic.num_users={size['users']}", f"data.synthetic.num_movies={size['movies']}",
             f"data.synthetic.num_ratings={size['ratings']}"]  # fmt: skip
    print(f"data: {size['users']:,} users, {size['movies']:,} movies, {size['ratings']:,} ratings (generated once)", flush=True)
    retrieval = in_memory_run("configs/ml25m-retrieval.yaml", scale, args.cache_dir)
    data = retrieval.data
    users = np.random.default_rng(0).choice(data.num_users, size["one_user"], replace=False)

    rows = []
    start = time.perf_counter()
    vectors = movie_vectors(retrieval)
    encode_s = time.perf_counter() - start
    queries = user_vectors(retrieval, users[:100])
    indexes = {}
    for kind in ("flat", "ivf", "hnsw"):
        cfg = dataclasses.replace(retrieval.model.config.model.retrieval, index=kind)
        start = time.perf_counter()
        index = build_index(vectors, cfg)
        build_s = time.perf_counter() - start
        indexes[kind] = MovieIndex(index, {"kind": kind, "settings": settings_of(cfg)})
        recall = 1.0 if kind == "flat" else recall_against_exact(index, vectors, queries, 100)
        print(f"index {kind}: built in {build_s:.1f} s (movie vectors encoded in {encode_s:.1f} s)", flush=True)
        rows.append({"path": f"two-tower + {kind} index", "build_s": build_s, "recall_at_100": recall,
                     **one_user_ms(IndexRecommender(retrieval, indexes[kind]), data, users)})  # fmt: skip

    dlrm = in_memory_run("configs/ml25m.yaml", [*scale, "model.task=ranking"], args.cache_dir)
    rows.append({"path": "DLRM over the whole catalogue", **one_user_ms(CatalogueRecommender(dlrm), data, users[: size["dlrm_users"]])})
    for row in rows:
        row["vs_dlrm"] = rows[-1]["top10_ms_p50"] / row["top10_ms_p50"]
    print("\none user's top 10 (their rated movies left out), ms")
    print_table(rows, ["path", "top10_ms_p50", "top10_ms_p99", "vs_dlrm", "recall_at_100", "users_timed"])

    with tempfile.TemporaryDirectory() as tmp:
        recommender = IndexRecommender(retrieval, indexes["flat"])
        start = time.perf_counter()
        out = recommend_all(recommender, 100, Path(tmp) / "recs.parquet", DistEnv(0, 1, 0, torch.device("cpu")), progress=False)
        all_s = time.perf_counter() - start
        written = pq.ParquetFile(out).metadata.num_rows
    every = {"users": data.num_users, "movies": data.num_movies, "k": 100, "seconds": all_s, "rows": written,
             "users_per_s": data.num_users / all_s}  # fmt: skip
    print("\nevery user's top 100 (flat index, one process)")
    print_table([every], ["users", "movies", "k", "rows", "seconds", "users_per_s"])
    path = write_json("retrieval-quick" if args.quick else "retrieval", {"size": size, "one_user": rows, "all_users": every}, args.out)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
