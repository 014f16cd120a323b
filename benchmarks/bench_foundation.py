"""Foundation throughput: preparing a 25M-rating release, building batches, and single-process training.

Each measurement sits beside a baseline measured in the same run, reported as a ratio:
- prepare:   `mmdlrm prepare` (streamed: read + validate + split + shuffle + Parquet) vs reading ratings.csv with
             pyarrow alone (the whole file in memory);
- batches:   vectorised KeyedJaggedTensor building vs a per-row Python loop over the same rows (on a sample);
- training:  the DLRM sharded by DistributedModelParallel (world of one, FBGEMM fused row-wise Adagrad) vs the
             same DLRM in plain PyTorch (`nn.EmbeddingBag(sparse=True)` + SparseAdam), on the same batches.

    python benchmarks/bench_foundation.py                    # full ml-25m scale (about 5 minutes on 2 cores)
    python benchmarks/bench_foundation.py --ratings 1000000  # quick look
Prints a table and writes benchmarks/results/foundation.json.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path

import numpy as np
import pyarrow.csv as pacsv
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks import bench_training  # noqa: E402
from benchmarks.common import print_table, timed, write_json  # noqa: E402
from mmdlrm.config import ModelConfig, SyntheticConfig  # noqa: E402
from mmdlrm.data.batches import BatchBuilder, SplitRows  # noqa: E402
from mmdlrm.data.prepare import load_prepared, prepare  # noqa: E402
from mmdlrm.data.synthetic import generate  # noqa: E402
from mmdlrm.distributed.env import init_distributed, teardown  # noqa: E402
from mmdlrm.schema import SPARSE_FEATURES  # noqa: E402


def bench_prepare(release_dir: Path, out_dir: Path) -> dict:
    """`prepare` of the release (seen-movie index included) against reading its ratings.csv with pyarrow alone."""
    read_s, table = timed(lambda: pacsv.read_csv(release_dir / "ratings.csv"))
    rows = table.num_rows
    del table
    prepare_s, _ = timed(lambda: prepare(release_dir, out_dir, "random", 0.1, 0.1, 0, progress=False))
    return {"stage": "prepare", "rows": rows, "seconds": prepare_s, "rows_per_s": rows / prepare_s,
            "baseline": "pyarrow read_csv only", "baseline_rows_per_s": rows / read_s,
            "ratio": read_s / prepare_s}  # fmt: skip


def per_row_batch(data, rows: dict[str, np.ndarray], index: np.ndarray):
    """The loop that vectorised building replaces: one Python iteration per rating.

    `rows` are numpy arrays in memory: indexed row by row, anything that reads a file per access would make this
    loop a file read per row (issue 21).
    """
    offsets, values, years = data.movies["genre_offsets"], data.movies["genre_values"], data.movies["year"]
    users, movies, genres, genre_lengths, year_ids, dense = [], [], [], [], [], []
    for i in index.tolist():
        user, movie = int(rows["user"][i]), int(rows["movie"][i])
        movie_genres = values[offsets[movie] : offsets[movie + 1]].tolist()
        users.append(user)
        movies.append(movie)
        genres.extend(movie_genres)
        genre_lengths.append(len(movie_genres))
        year_ids.append(max(0, (int(years[movie]) - 1900) // 5 + 1))
        dense.append([float(data.users["train_count"][user]), float(data.movies["train_count"][movie]), 0.0, 0.0,
                      float(years[movie])])  # fmt: skip
    from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

    n = len(users)
    return KeyedJaggedTensor(
        keys=list(SPARSE_FEATURES),
        values=torch.tensor(users + movies + genres + year_ids),
        lengths=torch.tensor([1] * n + [1] * n + genre_lengths + [1] * n),
    ), torch.tensor(dense)


def bench_batches(data, batch_size: int, steps: int, loop_rows: int) -> dict:
    builder = BatchBuilder(data, ModelConfig(year_bucket_years=5))
    rows = SplitRows.from_prepared(data, "train")
    generator = torch.Generator().manual_seed(0)
    indices = [torch.randint(len(rows), (batch_size,), generator=generator) for _ in range(steps)]
    seconds, _ = timed(lambda: [builder.build(rows, index, leave_one_out=True) for index in indices])
    columns = {"user": rows.user.numpy(), "movie": rows.movie.numpy()}  # held in memory: the loop indexes arrays
    sample = indices[0][:loop_rows].numpy()
    loop_s, _ = timed(lambda: per_row_batch(data, columns, sample))
    rate, loop_rate = steps * batch_size / seconds, len(sample) / loop_s
    return {"stage": "batch building", "rows": steps * batch_size, "seconds": seconds, "rows_per_s": rate,
            "baseline": "per-row Python loop", "baseline_rows_per_s": loop_rate, "ratio": rate / loop_rate}  # fmt: skip


def bench_training_step(data, config: str, steps: int, repeats: int = 3) -> dict:
    """One process: DistributedModelParallel against the plain-PyTorch DLRM, taking turns (bench_training.race)."""
    env = init_distributed("cpu")
    try:
        ours = bench_training.mmdlrm_contestant(config, data, env, steps, clip=False)
        plain = bench_training.plain_contestant(config, data, steps)
        rates = bench_training.race([ours, plain], steps, repeats)
    finally:
        teardown()
    rate, baseline = rates[ours.name], rates[plain.name]
    return {"stage": "training step (DMP, 1 process)", "rows": steps * ours.batch_size,
            "seconds": steps * ours.batch_size / rate, "rows_per_s": rate,
            "baseline": "plain PyTorch EmbeddingBag + SparseAdam", "baseline_rows_per_s": baseline,
            "ratio": rate / baseline, "embedding_dim": ours.report["embedding_dim"], "batch_size": ours.batch_size}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ratings", type=int, default=25_000_000)
    parser.add_argument("--users", type=int, default=162_000)
    parser.add_argument("--movies", type=int, default=62_000)
    parser.add_argument("--config", default="configs/ml25m.yaml", help="model and batch size for the training step")
    parser.add_argument("--batch-steps", type=int, default=100, help="batches of 8192 rows to build")
    parser.add_argument("--train-steps", type=int, default=150)
    parser.add_argument("--workdir", help="where the synthetic release goes (default: a temporary folder)")
    parser.add_argument("--out", help="JSON path (default benchmarks/results/foundation.json)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        release = Path(tmp) / "release"
        synth = SyntheticConfig(num_users=args.users, num_movies=args.movies, num_ratings=args.ratings)
        synth_s, _ = timed(lambda: generate(synth, release))
        results = [{"stage": "synthetic release", "rows": args.ratings, "seconds": synth_s,
                    "rows_per_s": args.ratings / synth_s}]  # fmt: skip
        results.append(bench_prepare(release, Path(tmp) / "prepared"))
        data = load_prepared(Path(tmp) / "prepared")
        results.append(bench_batches(data, 8192, args.batch_steps, loop_rows=20_000))
        results.append(bench_training_step(data, args.config, args.train_steps))

    print_table(results, ["stage", "rows", "seconds", "rows_per_s", "baseline", "baseline_rows_per_s", "ratio"])
    path = write_json("foundation", {"args": vars(args), "results": results}, args.out)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
