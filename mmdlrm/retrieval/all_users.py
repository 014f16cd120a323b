"""Top-k lists for every user of a run, written to one Parquet file: (user, rank, movieId, score).

Under torchrun each process takes a contiguous share of the users and writes its part beside the output as a
hidden file; once all parts are written, rank 0 joins them in rank order into a hidden temporary file and renames
it into place. The output therefore appears whole or not at all: a killed run leaves only hidden part files,
which the next run replaces. Each user's list leaves out every movie they rated (in any split).
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch.distributed as dist
from tqdm import tqdm

from mmdlrm.data.parts import part_bounds
from mmdlrm.distributed.env import DistEnv
from mmdlrm.retrieval.recommenders import Recommender

log = logging.getLogger("mmdlrm")

SCHEMA = pa.schema([("user", pa.int64()), ("rank", pa.int32()), ("movieId", pa.int64()), ("score", pa.float32())])
USERS_PER_BATCH = 1024


def recommend_all(recommender: Recommender, k: int, out: str | Path, env: DistEnv, progress: bool = True) -> Path | None:
    """Write every user's top `k` to `out` (rank 0 writes it; returns its path there, None on other ranks).

    Every rank must call this (it waits for the others before joining the parts).
    """
    out = Path(out)
    run = recommender.run
    data = run.data
    seen = data.seen()
    start, stop = part_bounds(data.num_users, env.rank, env.world_size)
    part = _part_path(out, env.rank, env.world_size)
    part.parent.mkdir(parents=True, exist_ok=True)
    user_ids = np.asarray(data.users["user_id"], dtype=np.int64)
    movie_ids = np.asarray(data.movies["movie_id"], dtype=np.int64)
    tables = []
    if env.is_rank0:
        log.info("top %d for %s users from %s (%s), %s processes, into %s", k, f"{data.num_users:,}", run.folder,
                 recommender.name, env.world_size, out)  # fmt: skip
    # A terminal gets a live bar; a log file a line every half minute, so a long run is never silent.
    bar = tqdm(total=stop - start, unit="user", desc="top-k", disable=not (progress and env.is_rank0),
               mininterval=1.0 if sys.stderr.isatty() else 30.0)  # fmt: skip
    for first in range(start, stop, USERS_PER_BATCH):
        users = np.arange(first, min(first + USERS_PER_BATCH, stop))
        movies, scores = recommender.top_k(users, k, seen.of_users(users))
        valid = movies >= 0
        rows = np.repeat(np.arange(len(users)), valid.sum(axis=1))
        tables.append(pa.table({"user": user_ids[users[rows]], "rank": (np.cumsum(valid, axis=1)[valid]).astype(np.int32),
                                "movieId": movie_ids[movies[valid]], "score": scores[valid].astype(np.float32)},
                               schema=SCHEMA))  # fmt: skip
        bar.update(len(users))
    bar.close()
    tmp = part.with_name(part.name + f".{os.getpid()}.tmp")
    pq.write_table(pa.concat_tables(tables) if tables else SCHEMA.empty_table(), tmp, compression="zstd")
    tmp.replace(part)
    if env.world_size > 1:
        dist.barrier()
    if not env.is_rank0:
        return None
    parts = [_part_path(out, r, env.world_size) for r in range(env.world_size)]
    metadata = {b"mmdlrm": f'{{"run": "{run.folder}", "recommender": "{recommender.name}", "k": {k}}}'.encode()}
    joined = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    with pq.ParquetWriter(joined, SCHEMA.with_metadata(metadata), compression="zstd") as writer:
        for path in parts:
            writer.write_table(pq.read_table(path).cast(SCHEMA.with_metadata(metadata)))
    joined.replace(out)
    for path in out.parent.glob(f".{out.name}.part-*"):  # these parts, and any a killed earlier run left
        path.unlink(missing_ok=True)
    rows = pq.ParquetFile(out).metadata.num_rows
    log.info("wrote %s: top %d of %d users (%s rows) from %s", out, k, data.num_users, f"{rows:,}", recommender.name)
    return out


def _part_path(out: Path, rank: int, world_size: int) -> Path:
    """Where rank `rank` of `world_size` writes its users' lists before rank 0 joins them."""
    return out.with_name(f".{out.name}.part-{rank}-of-{world_size}")
