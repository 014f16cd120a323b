"""Sharded training throughput and memory: 1 vs 2 processes, each CPU sharding type, planner estimate vs measured.

On an ml-25m-scale synthetic dataset (162k users, 62k movies, 25M ratings; generated and prepared once under
data/), each setting trains the configs/ml25m.yaml model for a fixed number of steps of the same global batch:
- 1 process with the planner's own plan (the baseline every ratio is against), with all the machine's threads;
- 2 processes (gloo) with the planner's plan, with each CPU sharding type forced, and with TorchRec's
  TrainPipelineSparseDist instead of the plain step; the threads are split between the processes.
Per rank it reports the planner's memory estimate for the tables, the bytes the rank's table shards and their
optimiser states really hold, and the process's peak resident memory (which also holds the dataset).

    python benchmarks/bench_sharding.py                   # ml-25m scale, about 6 minutes on 2 cores
    python benchmarks/bench_sharding.py --ratings 1000000 --users 20000 --movies 4000 --steps 20   # quick look
Prints a table and writes benchmarks/results/sharding.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.bench_training import random_content  # noqa: E402
from benchmarks.common import print_table, write_json  # noqa: E402
from mmdlrm.config import DataConfig, SyntheticConfig, load_config  # noqa: E402
from mmdlrm.data.batches import BatchBuilder, SplitRows  # noqa: E402
from mmdlrm.data.prepare import ensure_prepared, load_prepared  # noqa: E402
from mmdlrm.distributed.env import init_distributed, teardown  # noqa: E402
from mmdlrm.distributed.sharding import EMBEDDING_PARAM, supported_sharding_types  # noqa: E402
from mmdlrm.tasks import build_task  # noqa: E402
from mmdlrm.train import build_model, training_steps  # noqa: E402

MiB = 2**20


def _local_bytes(value) -> int:
    """Bytes this rank holds for a (possibly sharded) tensor."""
    if hasattr(value, "local_shards"):
        return sum(s.tensor.numel() * s.tensor.element_size() for s in value.local_shards())
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    return 0


def _table_bytes(model, optimizer) -> int:
    weights = sum(_local_bytes(v) for k, v in model.state_dict().items() if EMBEDDING_PARAM in k)
    states = sum(_local_bytes(t) for k, s in optimizer.state_dict()["state"].items() if EMBEDDING_PARAM in k
                 for t in s.values())  # fmt: skip
    return weights + states


def worker(rank: int, world_size: int, store: str, setting: dict, prepared: str, config: str, steps: int, out: str) -> None:
    torch.set_num_threads(max(1, (os.cpu_count() or 2) // world_size))
    logging.getLogger("torch.fx._symbolic_trace").setLevel(logging.ERROR)
    env = init_distributed("auto", rank=rank, world_size=world_size, store_path=store)
    try:
        overrides = [f"train.device={env.device.type}"] + ([f"sharding.plan={setting['plan']}"] if setting["plan"] else [])
        cfg = load_config(config, overrides)
        data = load_prepared(prepared)
        content = random_content(data.num_movies) if setting.get("clip") else {}
        sharded = build_model(cfg, data, env, build_task(cfg.model, cfg.eval), content=content)
        builder = BatchBuilder(data, cfg.model)
        rows = SplitRows.from_prepared(data, "train")
        generator = torch.Generator().manual_seed(0)
        local = cfg.train.batch_size // world_size
        batches = []
        for _ in range(min(steps, 40)):
            chunk = torch.randint(len(rows), (cfg.train.batch_size,), generator=generator)
            batches.append(builder.build(rows, chunk[rank * local : (rank + 1) * local], leave_one_out=True))

        def run(n: int) -> None:
            feed = (batches[i % len(batches)] for i in range(n))
            for _ in training_steps(sharded.model, sharded.optimizer, feed, env, setting["pipeline"]):
                pass

        run(5)
        dist.barrier()
        start = time.perf_counter()
        run(steps)
        dist.barrier()
        seconds = time.perf_counter() - start
        report = {
            "rank": rank,
            "seconds": seconds,
            "samples_per_s": steps * cfg.train.batch_size / seconds,
            "step_ms": 1000 * seconds / steps,
            "estimated_table_mib": sharded.estimated_bytes[rank] / MiB,
            "measured_table_mib": _table_bytes(sharded.model, sharded.optimizer) / MiB,
            **({"communication_ms": communication_ms(lambda: run(5), 5)} if world_size > 1 else {}),  # one process: none
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / MiB,
            "plan": {name: str(p.sharding_type) for module in sharded.plan.plan.values() for name, p in module.items()},
        }
        Path(out, f"rank{rank}.json").write_text(json.dumps(report))
    finally:
        teardown()


COMMUNICATION = ("all2all", "alltoall", "allreduce", "all_reduce", "allgather", "all_gather", "broadcast",
                 "awaitable wait", "request wait")
"""Profiler names of collectives and of waits on them (TorchRec's awaitables), matched in lower case."""


def communication_ms(steps, count: int) -> float:
    """Milliseconds per step in collectives and waiting on them: self CPU time of the matching profiler events."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        steps()
    total_us = sum(e.self_cpu_time_total for e in prof.key_averages() if any(c in e.key.lower() for c in COMMUNICATION))
    return total_us / 1000 / count


def _spawn_worker(rank: int, world_size: int, store: str, *args) -> None:
    worker(rank, world_size, store, *args)


def sharding_types() -> tuple[str, ...]:
    """Every sharding type this machine can run: the CPU ones, plus row-wise ones with CUDA (NCCL)."""
    return supported_sharding_types(torch.device("cuda" if torch.cuda.is_available() else "cpu"))


def measure(setting: dict, prepared: str, config: str, steps: int) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        args = (setting["world"], str(Path(tmp) / "store"), setting, prepared, config, steps, tmp)
        mp.start_processes(_spawn_worker, args=args, nprocs=setting["world"], start_method="spawn", join=True)
        return [json.loads(Path(tmp, f"rank{r}.json").read_text()) for r in range(setting["world"])]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ratings", type=int, default=25_000_000)
    parser.add_argument("--users", type=int, default=162_000)
    parser.add_argument("--movies", type=int, default=62_000)
    parser.add_argument("--config", default="configs/ml25m.yaml", help="model and global batch size")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--cache-dir", default="data", help="where the synthetic release is generated and prepared")
    parser.add_argument("--out", help="JSON path (default benchmarks/results/sharding.json)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    synthetic = SyntheticConfig(num_users=args.users, num_movies=args.movies, num_ratings=args.ratings)
    prepared = str(ensure_prepared(DataConfig(cache_dir=args.cache_dir, synthetic=synthetic)))
    settings = [{"name": "1 process, planner's plan", "world": 1, "plan": None, "pipeline": False},
                {"name": "2 processes, planner's plan", "world": 2, "plan": None, "pipeline": False}]  # fmt: skip
    settings += [{"name": f"2 processes, {t}", "world": 2, "plan": t, "pipeline": False} for t in sharding_types()]
    settings.append({"name": "2 processes, planner's plan, TrainPipelineSparseDist", "world": 2, "plan": None, "pipeline": True})

    results, rows = [], []
    for setting in settings:
        ranks = measure(setting, prepared, args.config, args.steps)
        rate = min(r["samples_per_s"] for r in ranks)  # all ranks wait for the slowest
        results.append({**setting, "samples_per_s": rate, "ranks": ranks})
        baseline = results[0]["samples_per_s"]
        for r in ranks:
            rows.append({"setting": setting["name"], "rank": r["rank"], "samples_per_s": rate, "ratio": rate / baseline,
                         "estimate_MiB": r["estimated_table_mib"], "measured_MiB": r["measured_table_mib"],
                         "peak_rss_MiB": r["peak_rss_mib"]})  # fmt: skip
        print(f"{setting['name']}: {rate:,.0f} samples/s", flush=True)
    print()
    print_table(rows, ["setting", "rank", "samples_per_s", "ratio", "estimate_MiB", "measured_MiB", "peak_rss_MiB"])
    path = write_json("sharding", {"args": vars(args), "prepared": prepared, "results": results}, args.out)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
