"""The benchmark suite: data, training (1 and 2 processes, each CPU sharding type), inference, bandwidth.

    python -m benchmarks            # full: ml-25m-scale synthetic data (25M ratings), about 7 minutes on 2 cores
    python -m benchmarks --quick    # CI smoke: small data, few steps, about a minute
Prints tables and writes benchmarks/results/suite.json (or --out). Every throughput sits beside baselines
measured in the same run: the reference notebook's approach (a) and the same DLRM in plain PyTorch (b).
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path

from benchmarks import bench_foundation, bench_sharding, bench_training
from benchmarks.common import print_table, write_json
from mmdlrm.config import DataConfig, SyntheticConfig
from mmdlrm.data.prepare import ensure_prepared, load_prepared
from mmdlrm.data.synthetic import generate

FULL = {"ratings": 25_000_000, "users": 162_000, "movies": 62_000, "steps": 40, "repeats": 3, "notebook_rows": 100_000,
        "configs": ["configs/debug.yaml", "configs/ml25m.yaml"], "sharding_steps": 40}  # fmt: skip
QUICK = {"ratings": 200_000, "users": 5_000, "movies": 1_000, "steps": 8, "repeats": 2, "notebook_rows": 4_000,
         "configs": ["configs/debug.yaml"], "sharding_steps": 5}  # fmt: skip


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

    # Data: prepare time against a bare pyarrow read, batch building against a per-row loop.
    synthetic = SyntheticConfig(num_users=size["users"], num_movies=size["movies"], num_ratings=size["ratings"], media=False)
    with tempfile.TemporaryDirectory() as tmp:
        release = generate(synthetic, Path(tmp) / "release")
        data_rows = [bench_foundation.bench_prepare(release, Path(tmp) / "prepared")]
    prepared = ensure_prepared(DataConfig(cache_dir=args.cache_dir, synthetic=synthetic))
    data = load_prepared(prepared)
    data_rows.append(bench_foundation.bench_batches(data, 8192, size["steps"], loop_rows=min(20_000, size["notebook_rows"])))

    # Training, one process: mmdlrm against (a) and (b), ids only and with CLIP vectors; inference.
    training = []
    for config in size["configs"]:
        rows = bench_training.bench_training(config, data, size["steps"], size["repeats"])
        rows.append(bench_training.bench_notebook(config, data, size["notebook_rows"]))
        plain = next(r for r in rows if r["name"].startswith("(b)"))
        notebook = rows[-1]
        for row in rows:
            row.update(config=config, vs_b=row["samples_per_s"] / plain["samples_per_s"],
                       vs_a=row["samples_per_s"] / notebook["samples_per_s"])  # fmt: skip
            training.append(row)

    # Processes and sharding types, per model size, ids only and with CLIP vectors; row-wise types with CUDA.
    scaling = []
    for config in size["configs"]:
        for clip in (False, True):
            settings = [{"name": "1 process", "world": 1}, {"name": "2 processes", "world": 2}]
            if not args.quick and not clip and config == size["configs"][-1]:
                settings += [{"name": f"2 processes, {t}", "world": 2, "plan": t} for t in bench_sharding.sharding_types()]
            rows = []
            for setting in settings:
                setting = {"plan": None, "pipeline": False, "clip": clip, "config": config} | setting
                ranks = bench_sharding.measure(setting, str(prepared), config, size["sharding_steps"])
                row = {**setting, "samples_per_s": min(r["samples_per_s"] for r in ranks), "ranks": ranks,
                       "step_ms": max(r["step_ms"] for r in ranks)}  # fmt: skip
                if setting["world"] > 1:
                    row["communication_ms"] = max(r["communication_ms"] for r in ranks)
                rows.append(row)
            for row in rows:
                row["vs_1_process"] = row["samples_per_s"] / rows[0]["samples_per_s"]
            scaling += rows

    bandwidth = bench_training.copy_bandwidth(128 if args.quick else 512)
    for row in training:
        if "lookup_bytes_per_sample" in row:
            row["lookup_bytes_per_s"] = row["lookup_bytes_per_sample"] * row["samples_per_s"]
            row["lookup_fraction_of_copy_bandwidth"] = row["lookup_bytes_per_s"] / bandwidth

    print("\ndata")
    print_table(data_rows, ["stage", "rows", "seconds", "rows_per_s", "baseline", "baseline_rows_per_s", "ratio"])
    print("\ntraining, one process (ratios against (b) plain PyTorch and (a) the notebook, same run)")
    print_table(training, ["config", "name", "samples_per_s", "vs_b", "vs_a"])
    print("\nstep breakdown, ms (input = building the batch)")
    print_table([{"config": r["config"], "name": r["name"], **r["step_ms"]} for r in training if "step_ms" in r],
                ["config", "name", "input", "forward", "backward", "optimizer"])  # fmt: skip
    print("\ninference")
    print_table([{"config": r["config"], **r["inference"]} for r in training if r.get("inference")],
                ["config", "pairs_per_s", "top10_ms", "movies"])  # fmt: skip
    print(f"\nmemory bandwidth (copy, read + write): {bandwidth / 1e9:.2f} GB/s; embedding rows read by training:")
    print_table([r for r in training if "lookup_bytes_per_s" in r], ["config", "name", "lookup_bytes_per_s",
                                                                    "lookup_fraction_of_copy_bandwidth"])  # fmt: skip
    print("\nprocesses and sharding types (communication: time in collectives and waits on them, slowest rank)")
    print_table(scaling, ["config", "clip", "name", "samples_per_s", "vs_1_process", "step_ms", "communication_ms"])
    name = "suite-quick" if args.quick else "suite"
    path = write_json(name, {"mode": "quick" if args.quick else "full", "size": size, "data": data_rows,
                             "training": training, "scaling": scaling, "copy_bandwidth_bytes_per_s": bandwidth}, args.out)  # fmt: skip
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
