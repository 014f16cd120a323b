"""Scale: the streaming prepare and per-rank input at 25M and 100M ratings, with one and with two processes.

For each size a synthetic release (users scaled with the ratings at ml-25m's density, ml-25m's 62,000 movies) is
generated once under --cache-dir/scale/, then measured:
- generate, prepare: seconds and peak resident memory (VmHWM) of the generator and of the streaming prepare, each
  in a fresh interpreter that imports only the data layer (`mmdlrm prepare` adds the CLI's imports: torch,
  open_clip, transformers: about 0.9 GiB and 5 s);
- data per rank, world 1 and 2: each rank opens the prepared dataset for its rank and builds what training reads
  (the batch builder, its part of the training split through the task's loader, its part of the validation
  split), then builds --steps batches. What that adds to the process's peak resident memory (the peak is reset
  first, /proc/self/clear_refs) is the rank's data memory: the figure the per-rank input is about;
- training, world 1 and 2: each rank runs `train.build` (data and sharded model, configs/ml25m.yaml) and times
  --steps steps of the real loader after 5 warm-up steps: ms per step, samples/s, peak resident memory per rank;
- with --epoch: one whole epoch through `train.train` per world size (rank 0 fits the baselines on the whole
  training split first; validation, checkpoints and the test after): seconds and peak resident memory per rank.

    python benchmarks/bench_scale.py --epoch 100000000    # 25M and 100M, an epoch at 100M: ~2 h on 2 cores, 15 GB disk
    python benchmarks/bench_scale.py --sizes 1000000 --steps 20 --epoch    # a quick look (a few minutes)
Prints tables and writes benchmarks/results/scale.json. --clean deletes each size's release and prepared data
once measured.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import print_table, write_json  # noqa: E402
from mmdlrm.config import load_config  # noqa: E402
from mmdlrm.data.batches import BatchBuilder, SplitRows  # noqa: E402
from mmdlrm.data.prepare import load_prepared  # noqa: E402
from mmdlrm.distributed.env import DistEnv, init_distributed, teardown  # noqa: E402
from mmdlrm.tasks import build_task  # noqa: E402
from mmdlrm.train import build, train, training_steps  # noqa: E402

MiB = 2**20
USERS_PER_RATING = 162_000 / 25_000_000
"""ml-25m's users per rating: the synthetic releases keep its density."""
MOVIES = 62_000


def status() -> dict[str, int]:
    """This process's /proc/self/status memory lines, in KiB (VmRSS, VmHWM, ...)."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("Vm") or line.startswith("Rss"):
            name, value = line.split(":")
            out[name] = int(value.split()[0])
    return out


def reset_peak() -> None:
    """Start VmHWM again from the current resident memory (Linux: `5` to /proc/self/clear_refs)."""
    Path("/proc/self/clear_refs").write_text("5")


def fresh_python(code: str) -> dict:
    """Run `code` in a fresh interpreter (data layer only); it prints one JSON line; adds its peak memory."""
    tail = "\nimport json, pathlib\nprint(json.dumps({**result, 'peak_mib': [int(l.split()[1]) for l in " \
           "pathlib.Path('/proc/self/status').read_text().splitlines() if l.startswith('VmHWM')][0] / 1024}))"  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code + tail], capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"subprocess failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def generate(release: Path, ratings: int) -> dict:
    users = round(ratings * USERS_PER_RATING)
    code = (f"import time\nfrom mmdlrm.config import SyntheticConfig\nfrom mmdlrm.data.synthetic import generate\n"
            f"start = time.perf_counter()\ngenerate(SyntheticConfig(num_users={users}, num_movies={MOVIES}, "
            f"num_ratings={ratings}, media=False), {str(release)!r})\nresult = {{'seconds': time.perf_counter() - start}}")  # fmt: skip
    return fresh_python(code) | {"users": users, "movies": MOVIES, "csv_mib": (release / "ratings.csv").stat().st_size / MiB}


def prepare(release: Path, cache: Path) -> dict:
    """Prepare `release` afresh where `train.build_data` will find it (ensure_prepared, default split settings)."""
    for earlier in (cache / "prepared").glob(f"{release.name}-*"):  # this benchmark's own output: measure anew
        shutil.rmtree(earlier)
    code = (f"import time\nfrom mmdlrm.config import DataConfig\nfrom mmdlrm.data.prepare import ensure_prepared\n"
            f"start = time.perf_counter()\nfolder = ensure_prepared(DataConfig(source={str(release)!r}, "
            f"cache_dir={str(cache)!r}), progress=False)\nresult = {{'seconds': time.perf_counter() - start, "
            f"'folder': str(folder)}}")  # fmt: skip
    out = fresh_python(code)
    out["parquet_mib"] = sum(p.stat().st_size for p in Path(out["folder"]).iterdir()) / MiB
    return out


def data_worker(rank: int, world_size: int, store: str, prepared: str, config: str, steps: int, out: str) -> None:
    """What one rank's training input costs: its parts and tables, and building `steps` batches."""
    torch.set_num_threads(_threads(world_size))
    cfg = load_config(config, ["train.device=cpu"])
    env = DistEnv(rank, world_size, rank, torch.device("cpu"))
    task = build_task(cfg.model, cfg.eval)
    before = status()["VmRSS"]
    reset_peak()
    start = time.perf_counter()
    data = load_prepared(prepared, rank, world_size)
    builder = BatchBuilder(data, cfg.model, task.label)
    loader = task.training_loader(builder, data, cfg.train.batch_size, cfg.train.seed, env)
    val = SplitRows.from_prepared(data, "val")
    opened = time.perf_counter() - start
    start = time.perf_counter()
    built = sum(1 for _ in itertools.islice(loader, steps))
    batch_ms = 1000 * (time.perf_counter() - start) / max(built, 1)
    report = {"rank": rank, "train_rows": len(loader.rows), "val_rows": len(val), "steps_per_epoch": len(loader),
              "open_s": opened, "batch_ms": batch_ms, "data_mib": (status()["VmHWM"] - before) / 1024}  # fmt: skip
    Path(out, f"rank{rank}.json").write_text(json.dumps(report))


def train_worker(rank: int, world_size: int, store: str, overrides: list[str], config: str, steps: int, out: str) -> None:
    """`train.build` as training runs it, then --steps timed steps of its loader."""
    torch.set_num_threads(_threads(world_size))
    logging.getLogger("torch.fx._symbolic_trace").setLevel(logging.ERROR)
    env = init_distributed("cpu", rank=rank, world_size=world_size, store_path=store)
    try:
        cfg = load_config(config, overrides)
        setup = build(cfg, env)
        model, optimizer = setup.sharded.model, setup.sharded.optimizer
        batches = setup.loader.batches()
        for _ in training_steps(model, optimizer, itertools.islice(batches, 5), env, False):
            pass
        dist.barrier()
        start = time.perf_counter()
        for _ in training_steps(model, optimizer, itertools.islice(batches, steps), env, False):
            pass
        dist.barrier()
        seconds = time.perf_counter() - start
        report = {"rank": rank, "step_ms": 1000 * seconds / steps, "samples_per_s": steps * cfg.train.batch_size / seconds,
                  "train_rows": len(setup.loader.rows), "peak_rss_mib": status()["VmHWM"] / 1024}  # fmt: skip
        Path(out, f"rank{rank}.json").write_text(json.dumps(report))
    finally:
        teardown()


def epoch_worker(rank: int, world_size: int, store: str, overrides: list[str], config: str, steps: int, out: str) -> None:
    """One whole epoch through `train.train`: baselines (rank 0), training, validation, checkpoints, test."""
    torch.set_num_threads(_threads(world_size))
    logging.getLogger("torch.fx._symbolic_trace").setLevel(logging.ERROR)
    env = init_distributed("cpu", rank=rank, world_size=world_size, store_path=store)
    try:
        cfg = load_config(config, overrides)
        start = time.perf_counter()
        result = train(cfg, env)
        epoch = result.epochs[0]
        report = {"rank": rank, "seconds": time.perf_counter() - start, "epoch_s": epoch["seconds"],
                  "samples_per_s": epoch["samples_per_s"], "test_rmse": result.test["rmse"],
                  "peak_rss_mib": status()["VmHWM"] / 1024}  # fmt: skip
        Path(out, f"rank{rank}.json").write_text(json.dumps(report))
    finally:
        teardown()


def _threads(world_size: int) -> int:
    """Torch threads per rank: --threads (passed to the workers in the environment), or the cores shared out."""
    return int(os.environ.get("BENCH_SCALE_THREADS", 0)) or max(1, (os.cpu_count() or 2) // world_size)


def _spawn_worker(rank: int, worker, world_size: int, store: str, *args) -> None:
    worker(rank, world_size, store, *args)


def spawn(worker, world_size: int, *args) -> list[dict]:
    """Run `worker` in `world_size` spawned processes; their reports, by rank."""
    with tempfile.TemporaryDirectory() as tmp:
        store = str(Path(tmp) / "store")
        mp.start_processes(_spawn_worker, args=(worker, world_size, store, *args, tmp), nprocs=world_size,
                           start_method="spawn", join=True)  # fmt: skip
        return [json.loads(Path(tmp, f"rank{r}.json").read_text()) for r in range(world_size)]


def measure_size(ratings: int, args: argparse.Namespace) -> dict:
    scale = Path(args.cache_dir) / "scale"
    release = scale / f"synthetic-{ratings}"
    out: dict = {"ratings": ratings, "load_average_at_start": os.getloadavg()}  # other work on the machine slows steps
    if not (release / "ratings.csv").is_file():
        out["generate"] = generate(release, ratings)
        print(f"{ratings:,}: generated in {out['generate']['seconds']:.0f} s", flush=True)
    out["prepare"] = prepare(release, scale)
    print(f"{ratings:,}: prepared in {out['prepare']['seconds']:.0f} s, peak {out['prepare']['peak_mib']:.0f} MiB", flush=True)
    prepared = out["prepare"]["folder"]
    run = [f"data.source={release}", f"data.cache_dir={scale}", "train.device=cpu", "train.progress=false",
           "train.tensorboard=false", "train.checkpoint_every=0", f"output_dir={scale / 'runs'}", "overwrite=true"]  # fmt: skip
    out["data"], out["training"], out["epoch"] = {}, {}, {}
    for world in args.worlds:
        out["data"][world] = spawn(data_worker, world, prepared, args.config, args.steps)
        print(f"{ratings:,}: data, {world} process(es): {[round(r['data_mib']) for r in out['data'][world]]} MiB", flush=True)
    for world in args.worlds:
        out["training"][world] = spawn(train_worker, world, run + [f"name=scale-{ratings}-{world}"], args.config, args.steps)
        print(f"{ratings:,}: training, {world} process(es): {out['training'][world][0]['step_ms']:.0f} ms/step", flush=True)
    if args.epoch is not None and (not args.epoch or ratings in args.epoch):
        for world in args.worlds:
            overrides = run + [f"name=scale-{ratings}-{world}", "train.max_epochs=1", "train.min_epochs=1"]
            out["epoch"][world] = spawn(epoch_worker, world, overrides, args.config, args.steps)
            print(f"{ratings:,}: one epoch, {world} process(es): {out['epoch'][world][0]['seconds']:.0f} s", flush=True)
    out["load_average_at_end"] = os.getloadavg()
    if args.clean:
        shutil.rmtree(release, ignore_errors=True)
        shutil.rmtree(prepared, ignore_errors=True)
        shutil.rmtree(scale / "runs", ignore_errors=True)
    return out


def tables(results: list[dict]) -> None:
    rows = []
    for r in results:
        gen, prep = r.get("generate", {}), r["prepare"]
        rows.append({"ratings": r["ratings"], "generate_s": gen.get("seconds"), "generate_peak_MiB": gen.get("peak_mib"),
                     "csv_MiB": gen.get("csv_mib"), "prepare_s": prep["seconds"], "prepare_peak_MiB": prep["peak_mib"],
                     "parquet_MiB": prep["parquet_mib"]})  # fmt: skip
    print("\ngenerate and prepare (each in a fresh interpreter: data layer only)")
    print_table(rows, ["ratings", "generate_s", "generate_peak_MiB", "csv_MiB", "prepare_s", "prepare_peak_MiB", "parquet_MiB"])
    rows = []
    for r in results:
        single = max(x["data_mib"] for x in r["data"].get(1, r["data"][min(r["data"])]))
        for world, ranks in r["data"].items():
            for x in ranks:
                rows.append({"ratings": r["ratings"], "world": world, "rank": x["rank"], "train_rows": x["train_rows"],
                             "val_rows": x["val_rows"], "data_MiB": x["data_mib"], "vs_world_1": x["data_mib"] / single,
                             "batch_ms": x["batch_ms"]})  # fmt: skip
    print("\ndata per rank (training part, validation part, per-user and per-movie tables, building batches)")
    print_table(rows, ["ratings", "world", "rank", "train_rows", "val_rows", "data_MiB", "vs_world_1", "batch_ms"])
    rows = []
    for r in results:
        for world, ranks in r["training"].items():
            for x in ranks:
                rows.append({"ratings": r["ratings"], "world": world, "rank": x["rank"], "step_ms": x["step_ms"],
                             "samples_per_s": x["samples_per_s"], "peak_rss_MiB": x["peak_rss_mib"]})  # fmt: skip
    print("\ntraining steps (train.build: data + sharded model; peak resident memory of the whole process)")
    print_table(rows, ["ratings", "world", "rank", "step_ms", "samples_per_s", "peak_rss_MiB"])
    rows = []
    for r in results:
        for world, ranks in r["epoch"].items():
            for x in ranks:
                rows.append({"ratings": r["ratings"], "world": world, "rank": x["rank"], "seconds": x["seconds"],
                             "epoch_s": x["epoch_s"], "samples_per_s": x["samples_per_s"], "test_rmse": x["test_rmse"],
                             "peak_rss_MiB": x["peak_rss_mib"]})  # fmt: skip
    if rows:
        print("\none epoch through train.train (rank 0 also fits the baselines on the whole training split)")
        print_table(rows, ["ratings", "world", "rank", "seconds", "epoch_s", "samples_per_s", "test_rmse", "peak_rss_MiB"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[25_000_000, 100_000_000], help="ratings")
    parser.add_argument("--worlds", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--config", default="configs/ml25m.yaml", help="model and global batch size")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--epoch", type=int, nargs="*", help="also train one whole epoch per world size: at these "
                        "sizes (ratings), or at every size when none is given")  # fmt: skip
    parser.add_argument("--threads", type=int, default=0, help="torch threads per rank (default: cores / world size; "
                        "1 keeps timings sane on a machine other work shares)")  # fmt: skip
    parser.add_argument("--cache-dir", default="data")
    parser.add_argument("--clean", action="store_true", help="delete each size's release and prepared data after")
    parser.add_argument("--out", help="JSON path (default benchmarks/results/scale.json)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    os.environ["BENCH_SCALE_THREADS"] = str(args.threads)  # the spawned workers inherit it
    results = []
    for ratings in args.sizes:
        results.append(measure_size(ratings, args))
        write_json("scale", {"args": vars(args), "results": results}, args.out)  # after each size: nothing lost
    tables(results)
    print(f"\nwrote {write_json('scale', {'args': vars(args), 'results': results}, args.out)}")


if __name__ == "__main__":
    main()
