"""Serving speed: `mmdlrm serve` as a real process on a free port, driven over HTTP at concurrency 1, 8 and 32.

    python benchmarks/bench_serving.py --source ../shared/data/ml-latest-small     # trains the runs it needs
    python benchmarks/bench_serving.py --quick                                     # a small synthetic catalogue

Catalogues: ml-latest-small (given by --source) and a 62,000-movie synthetic release (20,000 users, 1M ratings).
On each, two runs trained here (a finished run is reused): a retrieval run, served from its FAISS index (the query
tower once per request, then an exact inner-product search), and a ranking run, the full DLRM scoring the whole
catalogue for every request. Both are trained briefly (a few epochs, a sampled evaluation): how fast a model
answers depends on its shape, not on how well it learnt.

For each server, `GET /recommend?user=ID&k=10` (known users, cycled) and `POST /recommend` (a visitor liking 10
of such a user's movies, k=10) are sent by `--concurrency` keep-alive connections (an asyncio client on raw
sockets, cheap beside the server) for `--seconds` each after a warm-up: p50/p95/p99 latency and requests/s. The
same calls in this process (`recommend`, `recommend_liked`, one at a time) are timed beside them. The client runs
on the same machine as the server and takes some of its CPU; numbers from a machine that other work shares are
marked with its load average.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.common import print_table, trained, write_json  # noqa: E402
from mmdlrm.inspection.recommend import recommend, recommend_liked  # noqa: E402
from mmdlrm.retrieval.recommenders import open_recommender  # noqa: E402
from mmdlrm.serving.process import ServerProcess  # noqa: E402
from mmdlrm.serving.server import one_thread_per_request  # noqa: E402

K = 10
LIKED = 10
"""Movies a benchmark visitor likes."""
SAMPLE_USERS = 500
BRIEF = ["train.progress=false", "train.tensorboard=false", "eval.ranking_users=200", "eval.ease_max_items=1000"]
"""Every benchmark run: a sampled evaluation and a small EASE, so that training them takes minutes."""
SYNTHETIC_62K = ["data.synthetic.num_movies=62000", "data.synthetic.num_users=20000", "data.synthetic.media=false",
                 "data.synthetic.watch_taste=2", "model.user_id=false", "model.history_length=50", "model.embedding_dim=32",
                 "train.batch_size=4096", "train.max_epochs=1", "train.min_epochs=1"]  # fmt: skip
BRIEF_DLRM = ["model.task=ranking", "model.ranking.negatives=4", "train.max_epochs=1", "train.min_epochs=1"]
"""The full-DLRM runs: one epoch against 4 negatives a positive (the DLRM trains far slower than the two towers)."""
CATALOGUES = {
    "ml-latest-small": {
        "config": "configs/ml-latest-small-ranking.yaml",
        "common": ["train.batch_size=1024"],
        "retrieval": ["model.task=retrieval", "train.max_epochs=3", "train.min_epochs=1"],
        "ranking": BRIEF_DLRM,
    },
    "synthetic-62k": {
        "config": "configs/synthetic.yaml",
        "common": SYNTHETIC_62K,
        "retrieval": ["data.synthetic.num_ratings=1000000", "model.task=retrieval", "model.retrieval.negatives=sampled"],
        # the same 62,000-movie catalogue and users, 200k ratings: what a request costs depends on the catalogue
        # and the history length, not on how many ratings the model learnt from
        "ranking": ["data.synthetic.num_ratings=200000", *BRIEF_DLRM, "eval.ranking_users=50"],
    },
}
QUICK = {"synthetic-2k": {"config": "configs/debug.yaml", "retrieval": ["model.task=retrieval"], "ranking": ["model.task=ranking"],
                          "common": ["data.synthetic.num_movies=2000", "data.synthetic.num_users=2000",
                                     "data.synthetic.num_ratings=60000", "data.synthetic.media=false",
                                     "model.user_id=false", "model.history_length=20", "train.max_epochs=1"]}}  # fmt: skip


def workload(run_dir: Path, seed: int = 0) -> tuple[list[int], list[list[int]]]:
    """Sampled known users, and for each a visitor who likes LIKED of that user's rated movies (MovieLens ids)."""
    recommender = open_recommender(run_dir)
    data = recommender.run.data
    rng = np.random.default_rng(seed)
    users = np.sort(rng.choice(data.num_users, min(SAMPLE_USERS, data.num_users), replace=False))
    seen = data.seen().of_users(users)
    movie_ids = data.movies["movie_id"]
    liked = [movie_ids[rng.choice(s, min(LIKED, len(s)), replace=False)].tolist() for s in seen]
    return [int(u) for u in data.users["user_id"][users]], liked


def http_requests(users: list[int], liked: list[list[int]]) -> dict[str, list[bytes]]:
    """The raw HTTP/1.1 requests of each endpoint, one per sampled user."""
    head = "Host: 127.0.0.1\r\nConnection: keep-alive\r\n"
    get = [f"GET /recommend?user={u}&k={K} HTTP/1.1\r\n{head}\r\n".encode() for u in users]
    post = []
    for movies in liked:
        body = json.dumps({"liked": movies, "k": K}).encode()
        post.append(f"POST /recommend HTTP/1.1\r\n{head}Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
    return {"GET /recommend": get, "POST /recommend": post}


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> int:
    writer.write(request)
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:"))
    await reader.readexactly(length)
    return status


async def _drive(port: int, requests: list[bytes], concurrency: int, seconds: float, warmup: int) -> dict:
    """`concurrency` keep-alive connections sending `requests` in turn for `seconds`, once each has sent `warmup`."""
    order = itertools.count()
    latencies: list[float] = []
    errors, ready, clock = 0, 0, {"begin": 0.0, "stop": 0.0}
    started = asyncio.Event()

    async def connection() -> None:
        nonlocal errors, ready
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for _ in range(warmup):
                await _exchange(reader, writer, requests[next(order) % len(requests)])
            ready += 1
            if ready == concurrency:  # the last one warmed up starts the clock for all
                clock["begin"] = time.perf_counter()
                clock["stop"] = clock["begin"] + seconds
                started.set()
            await started.wait()
            while time.perf_counter() < clock["stop"]:
                request = requests[next(order) % len(requests)]
                begin = time.perf_counter()
                status = await _exchange(reader, writer, request)
                latencies.append(time.perf_counter() - begin)
                errors += status != 200
        finally:
            writer.close()

    await asyncio.gather(*(connection() for _ in range(concurrency)))
    return _summary(latencies, time.perf_counter() - clock["begin"]) | {"errors": errors}


def _summary(latencies: list[float], wall: float) -> dict:
    ms = np.asarray(latencies) * 1000.0
    if not len(ms):
        return {"requests": 0}
    return {"requests": len(ms), "p50_ms": float(np.percentile(ms, 50)), "p95_ms": float(np.percentile(ms, 95)),
            "p99_ms": float(np.percentile(ms, 99)), "req_per_s": len(ms) / wall}  # fmt: skip


def in_process(run_dir: Path, users: list[int], liked: list[list[int]], seconds: float) -> dict[str, dict]:
    """`recommend` and `recommend_liked` called in this process, one at a time (what a request costs without HTTP),
    with the server's thread settings."""
    one_thread_per_request()
    recommender = open_recommender(run_dir)
    calls = {"GET /recommend": lambda i: recommend(recommender, users[i], K),
             "POST /recommend": lambda i: recommend_liked(recommender, liked[i], K)}  # fmt: skip
    out = {}
    for name, call in calls.items():
        for i in range(min(5, len(users))):
            call(i)  # warm-up: the seen-movie index, lazily built tables
        latencies, begin = [], time.perf_counter()
        for i in itertools.cycle(range(len(users))):
            if time.perf_counter() - begin >= seconds:
                break
            start = time.perf_counter()
            call(i)
            latencies.append(time.perf_counter() - start)
        out[name] = _summary(latencies, sum(latencies))
    return out


def catalogue_runs(name: str, spec: dict, output_dir: str, cache_dir: str) -> dict[str, Path]:
    """The catalogue's retrieval and ranking runs, trained now or found finished."""
    common = [f"output_dir={output_dir}", f"data.cache_dir={cache_dir}", *BRIEF, *spec["common"]]
    if "source" in spec:
        common.append(f"data.source={spec['source']}")
    return {kind: trained(spec["config"], [*common, *spec[kind], f"name=serving-{name}-{kind}"]) for kind in ("retrieval", "ranking")}


def bench_catalogue(name: str, runs: dict[str, Path], levels: list[int], seconds: float, tmp: Path) -> list[dict]:
    """Both servers of a catalogue over HTTP at each concurrency, and both in-process calls."""
    rows = []
    for kind, run in runs.items():
        users, liked = workload(run)
        requests = http_requests(users, liked)
        path = "index" if kind == "retrieval" else "full DLRM"
        movies = open_recommender(run).run.data.num_movies
        base = {"catalogue": name, "movies": movies, "path": path}
        for endpoint, result in in_process(run, users, liked, seconds).items():
            rows.append(base | {"endpoint": endpoint, "via": "in-process", "concurrency": 1, **result})
        with ServerProcess(run, tmp / f"{name}-{kind}.log") as server:
            for endpoint, sent in requests.items():
                for level in levels:
                    result = asyncio.run(_drive(server.port, sent, level, seconds, warmup=2))
                    rows.append(base | {"endpoint": endpoint, "via": "HTTP", "concurrency": level, **result})
                    print_table([rows[-1]], COLUMNS)
    return rows


COLUMNS = ["catalogue", "movies", "path", "endpoint", "via", "concurrency", "requests", "p50_ms", "p95_ms", "p99_ms",
           "req_per_s", "errors"]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", help="the ml-latest-small release folder (left out without it)")
    parser.add_argument("--quick", action="store_true", help="one small synthetic catalogue, 2 s a level (a smoke test)")
    parser.add_argument("--output-dir", default="runs/bench-serving", help="where the runs are trained (and reused)")
    parser.add_argument("--cache-dir", default="data", help="where synthetic releases are generated and prepared")
    parser.add_argument("--seconds", type=float, help="measured seconds per endpoint and concurrency (default 10; 2 quick)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--only", nargs="+", help="catalogues to measure (ml-latest-small, synthetic-62k)")
    parser.add_argument("--out", type=Path, help="JSON path (default benchmarks/results/serving.json)")
    parser.add_argument("--train-only", action="store_true", help="train (or find) the runs, measure nothing")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("mmdlrm").setLevel(logging.INFO)
    seconds = args.seconds or (2.0 if args.quick else 10.0)
    catalogues = dict(QUICK) if args.quick else {n: dict(s) for n, s in CATALOGUES.items()}
    if not args.quick:
        if args.source is None:
            catalogues.pop("ml-latest-small")
            logging.getLogger("mmdlrm").warning("no --source: the ml-latest-small catalogue is left out")
        else:
            catalogues["ml-latest-small"]["source"] = str(Path(args.source).resolve())
    if args.only:
        catalogues = {n: s for n, s in catalogues.items() if n in args.only}
    runs = {name: catalogue_runs(name, spec, args.output_dir, args.cache_dir) for name, spec in catalogues.items()}
    if args.train_only:
        return
    load_before = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, pair in runs.items():
            rows += bench_catalogue(name, pair, args.concurrency, seconds, Path(tmp))
    load_after = os.getloadavg()
    print(f"\nserving, k={K}, {seconds:g} s per row; load average (1, 5, 15 min) {load_before[0]:.1f} {load_before[1]:.1f} "
          f"{load_before[2]:.1f} before, {load_after[0]:.1f} {load_after[1]:.1f} {load_after[2]:.1f} after, on {os.cpu_count()} CPUs")  # fmt: skip
    print_table(rows, COLUMNS)
    out = write_json("serving-quick" if args.quick else "serving", {
        "config": {"k": K, "liked": LIKED, "seconds": seconds, "concurrency": args.concurrency, "catalogues": catalogues,
                   "brief_training": BRIEF},
        "load_average": {"before": load_before, "after": load_after}, "rows": rows}, args.out)  # fmt: skip
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
