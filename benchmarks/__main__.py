"""The benchmark suite: data, training (1 and 2 processes, each CPU sharding type), inference, bandwidth.

    python -m benchmarks            # full: ml-25m-scale synthetic data (25M ratings); goal: 15 minutes on 2 cores
    python -m benchmarks --quick    # CI smoke: small data, few steps
(benchmarks/README.md gives the measured durations.)
Each stage prints a line as it starts, with the time it is expected to take on an idle 2-core machine, and its
tables as soon as it ends; a stage still running past its expected time says so at once. At the end every table
is printed again as one summary, with each stage's time. benchmarks/results/suite.json (or --out) is rewritten
after every stage, so a run stopped part-way keeps what it measured. Every throughput sits beside baselines
measured in the same run: the reference notebook's approach (a) and the same DLRM in plain PyTorch (b).
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path

from benchmarks import bench_foundation, bench_sharding, bench_training
from benchmarks.common import Stages, print_table, write_json
from mmdlrm.config import DataConfig, SyntheticConfig
from mmdlrm.data.prepare import Prepared, ensure_prepared, load_prepared

FULL = {"ratings": 25_000_000, "users": 162_000, "movies": 62_000, "steps": 40, "repeats": 3, "notebook_rows": 100_000,
        "configs": ["configs/debug.yaml", "configs/ml25m.yaml"], "sharding_steps": 40, "bandwidth_mb": 512,
        "expected_s": {"dataset": 600, "prepare": 90, "batches": 5, "bandwidth": 5,
                       "training configs/debug.yaml": 30, "training configs/ml25m.yaml": 210,
                       "processes configs/debug.yaml": 45, "processes configs/debug.yaml clip": 45,
                       "processes configs/ml25m.yaml": 170, "processes configs/ml25m.yaml clip": 70}}  # fmt: skip
"""Expected seconds per stage on an idle 2-core machine: the idle run of 2026-11-29 (542 s in all, the dataset
cached) plus about a quarter. The dataset's generation was timed only on a loaded machine (1,108 s at load 4-5)."""
QUICK = {"ratings": 200_000, "users": 5_000, "movies": 1_000, "steps": 8, "repeats": 2, "notebook_rows": 4_000,
         "configs": ["configs/debug.yaml"], "sharding_steps": 5, "bandwidth_mb": 128,
         "expected_s": {"dataset": 20, "prepare": 10, "batches": 5, "bandwidth": 5, "training configs/debug.yaml": 30,
                        "processes configs/debug.yaml": 40, "processes configs/debug.yaml clip": 40}}  # fmt: skip
DATA_COLUMNS = ["stage", "rows", "seconds", "rows_per_s", "baseline", "baseline_rows_per_s", "ratio"]


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="small and fast, for CI")
    parser.add_argument("--cache-dir", default="data", help="where the benchmark dataset is generated and prepared")
    parser.add_argument("--out", help="JSON path (default benchmarks/results/suite.json, or suite-quick.json)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("torch.fx._symbolic_trace").setLevel(logging.ERROR)
    size = QUICK if args.quick else FULL
    expected, stages = size["expected_s"], Stages()
    results: dict = {"mode": "quick" if args.quick else "full", "size": size, "stages": stages.records, "data": [],
                     "training": [], "scaling": []}  # fmt: skip

    def save(finished: bool) -> Path:
        return write_json("suite-quick" if args.quick else "suite", results | {"finished": finished}, args.out)

    # Data: prepare time against a bare pyarrow read, batch building against a per-row loop.
    synthetic = SyntheticConfig(num_users=size["users"], num_movies=size["movies"], num_ratings=size["ratings"], media=False)
    with stages.stage(f"dataset: {size['ratings']:,} synthetic ratings, generated and prepared once under {args.cache_dir}/",
                      expected["dataset"]):  # fmt: skip
        prepared = ensure_prepared(DataConfig(cache_dir=args.cache_dir, synthetic=synthetic), progress=False)
        data = load_prepared(prepared)
    with stages.stage("data: prepare (timed again, into a temporary folder) against pyarrow read_csv", expected["prepare"]):
        with tempfile.TemporaryDirectory() as tmp:
            results["data"].append(bench_foundation.bench_prepare(Path(data.manifest["source"]["folder"]), Path(tmp) / "prepared"))
    print_table(results["data"][-1:], DATA_COLUMNS)
    with stages.stage("data: batch building against a per-row Python loop", expected["batches"]):
        loop_rows = min(20_000, size["notebook_rows"])
        results["data"].append(bench_foundation.bench_batches(data, 8192, size["steps"], loop_rows=loop_rows))
    print_table(results["data"][-1:], DATA_COLUMNS)
    with stages.stage("memory bandwidth (a large tensor copy)", expected["bandwidth"]):
        results["copy_bandwidth_bytes_per_s"] = bench_training.copy_bandwidth(size["bandwidth_mb"])
    print(f"memory bandwidth (copy, read + write): {results['copy_bandwidth_bytes_per_s'] / 1e9:.2f} GB/s")
    save(False)

    for config in size["configs"]:
        with stages.stage(f"training, one process, and inference: {config}", expected[f"training {config}"]):
            rows = training_rows(config, data, size, results["copy_bandwidth_bytes_per_s"])
        results["training"] += rows
        print_training(rows)
        save(False)

    for config in size["configs"]:
        for clip in (False, True):
            with stages.stage(f"processes and sharding types: {config}{', CLIP vectors' if clip else ''}",
                              expected[f"processes {config}{' clip' if clip else ''}"]):  # fmt: skip
                rows = scaling_rows(config, clip, str(prepared), size, full_types=not args.quick and not clip and config == size["configs"][-1])
            results["scaling"] += rows
            print_scaling(rows)
            save(False)

    print(f"\n{stages.clock()} summary")
    print("\ndata")
    print_table(results["data"], DATA_COLUMNS)
    print_training(results["training"])
    print_scaling(results["scaling"])
    print("\nstages (expected: on an idle 2-core machine)")
    print_table([r | {"over": "OVER" if r["over"] else ""} for r in stages.records], ["stage", "seconds", "cpu_s", "expected_s", "over"])
    print(f"\nwrote {save(True)}")


def training_rows(config: str, data: Prepared, size: dict, bandwidth: float) -> list[dict]:
    """mmdlrm's contestants, (b) and (a) on one model size, with ratios, lookup bandwidth and inference."""
    rows = bench_training.bench_training(config, data, size["steps"], size["repeats"])
    rows.append(bench_training.bench_notebook(config, data, size["notebook_rows"]))
    plain = next(r for r in rows if r["name"].startswith("(b)"))
    notebook = rows[-1]
    for row in rows:
        row.update(config=config, vs_b=row["samples_per_s"] / plain["samples_per_s"], vs_a=row["samples_per_s"] / notebook["samples_per_s"])
        if "lookup_bytes_per_sample" in row:
            row["lookup_bytes_per_s"] = row["lookup_bytes_per_sample"] * row["samples_per_s"]
            row["lookup_fraction_of_copy_bandwidth"] = row["lookup_bytes_per_s"] / bandwidth
    return rows


def scaling_rows(config: str, clip: bool, prepared: str, size: dict, full_types: bool) -> list[dict]:
    """1 and 2 processes (and, with `full_types`, each sharding type this machine runs) in spawned workers."""
    settings = [{"name": "1 process", "world": 1}, {"name": "2 processes", "world": 2}]
    if full_types:
        settings += [{"name": f"2 processes, {t}", "world": 2, "plan": t} for t in bench_sharding.sharding_types()]
    rows = []
    for setting in settings:
        setting = {"plan": None, "pipeline": False, "clip": clip, "config": config} | setting
        ranks = bench_sharding.measure(setting, prepared, config, size["sharding_steps"])
        row = {**setting, "samples_per_s": min(r["samples_per_s"] for r in ranks), "ranks": ranks,
               "step_ms": max(r["step_ms"] for r in ranks)}  # fmt: skip
        if setting["world"] > 1:
            row["communication_ms"] = max(r["communication_ms"] for r in ranks)
        rows.append(row)
    for row in rows:
        row["vs_1_process"] = row["samples_per_s"] / rows[0]["samples_per_s"]
    return rows


def print_training(rows: list[dict]) -> None:
    print("\ntraining, one process (ratios against (b) plain PyTorch and (a) the notebook, same run)")
    print_table(rows, ["config", "name", "samples_per_s", "vs_b", "vs_a"])
    print("\nstep breakdown, ms (input = building the batch)")
    print_table([{"config": r["config"], "name": r["name"], **r["step_ms"]} for r in rows if "step_ms" in r],
                ["config", "name", "input", "forward", "backward", "optimizer"])  # fmt: skip
    print("\ninference (one user's top 10: score every movie, leave out the user's rated movies from the seen-movie index)")
    print_table([{"config": r["config"], **r["inference"]} for r in rows if r.get("inference")],
                ["config", "pairs_per_s", "top10_ms", "seen_lookup_ms", "seen_movies", "movies"])  # fmt: skip
    print("\nembedding rows read by training, against the copy bandwidth")
    print_table([r for r in rows if "lookup_bytes_per_s" in r], ["config", "name", "lookup_bytes_per_s",
                                                                "lookup_fraction_of_copy_bandwidth"])  # fmt: skip


def print_scaling(rows: list[dict]) -> None:
    print("\nprocesses and sharding types (communication: time in collectives and waits on them, slowest rank)")
    print_table(rows, ["config", "clip", "name", "samples_per_s", "vs_1_process", "step_ms", "communication_ms"])


if __name__ == "__main__":
    main()
