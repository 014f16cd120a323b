"""Writing the splits a chunk at a time: ratings -> buckets of whole users -> splits and statistics -> Parquet.

1. Partition: each checked chunk of ratings (`ratings_stream`) goes to on-disk buckets by a hash of its user id;
   the sorted user ids with each user's rating count (O(users)) and which movies were rated are kept.
2. Per bucket (each holds its users whole): a (user, movie) pair rated twice is an error naming both lines, or
   under on_bad_rows=skip all but the latest rating go (found in a first pass over the buckets, since the
   `random` split and the order are keyed on each kept rating's position among the kept ones); every rating
   gets its contiguous user id and its split (`splits`); the training counts and sums per user and movie are
   added up (exact: sums of half-stars in float64); each row goes on to a bucket of its split chosen by a random
   key of its position, and each training row to a bucket of its user range.
3. Per split, the buckets in key order, each sorted by key, become `<split>.parquet`: a uniformly random order
   (sorting by a random key), so any contiguous range of rows is a random sample. The user-range buckets, each
   sorted by (user, newest first, movie), become `train_by_user.parquet`, each user's ratings in one row group.
The files do not depend on the chunk size: rows are placed by keys, and row groups cut at fixed sizes.
Memory: one block of the ratings file, or one bucket (about `chunk_rows` rows), plus O(users + movies). Disk: the
buckets (about 33 bytes a rating at most, each file deleted once read) in a folder inside the output's temporary
folder.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
from tqdm import tqdm

from mmdlrm.data.buckets import Buckets, RowGroupWriter, bucket_count
from mmdlrm.data.ratings_stream import FolderRatings, ReleaseRatings
from mmdlrm.data.splits import SPLITS, RandomSplit, hash64, held_out_movies, seed_key, temporal_assignment

CHUNK_ROWS = 2_000_000
"""Rows per chunk and per bucket: what bounds prepare's memory (a few hundred MiB)."""
ROW_GROUP_ROWS = 1 << 17
"""Rows per Parquet row group of the split files: the unit a rank's part is read in."""
SPLIT_SCHEMA = pa.schema([("user", pa.int32()), ("movie", pa.int32()), ("rating", pa.float32()), ("timestamp", pa.int64())])
_INPUT_SCHEMA = pa.schema([("user_id", pa.int64()), ("movie", pa.int32()), ("rating", pa.float32()),
                           ("timestamp", pa.int64()), ("position", pa.int64()), ("split", pa.int8())])  # fmt: skip
_KEYED_SCHEMA = SPLIT_SCHEMA.append(pa.field("key", pa.uint64()))
_USER_KEY = 0x5EED_0005E5
"""Hash key of user ids into buckets: any fixed value (the files do not depend on it)."""


@dataclass(frozen=True)
class SplitRule:
    """The split to make (`splits`): kind, fractions and seed."""

    kind: str
    val_fraction: float
    test_fraction: float
    seed: int


@dataclass
class SplitStats:
    """What the passes counted: user ids, training counts and sums per user and movie, rows per split."""

    user_ids: np.ndarray
    """Sorted original user ids: contiguous user i is user_ids[i]."""
    user_count: np.ndarray
    user_sum: np.ndarray
    movie_count: np.ndarray
    movie_sum: np.ndarray
    counts: dict[str, int] = field(default_factory=dict)
    train_sum: float = 0.0
    """Sum of the training ratings (float64)."""

    @property
    def ratings(self) -> int:
        return sum(self.counts.values())


@dataclass
class _Partition:
    buckets: Buckets
    user_ids: np.ndarray
    user_rows: np.ndarray
    rated: np.ndarray
    rows: int


def write_splits(
    out: Path, ratings: FolderRatings | ReleaseRatings, num_movies: int, rule: SplitRule,
    check: Callable[[dict[str, int]], None], chunk_rows: int = CHUNK_ROWS, progress: bool | None = None,
) -> SplitStats:  # fmt: skip
    """Write `<split>.parquet` for each split and `train_by_user.parquet` into `out` (see the module docstring).

    Args:
        num_movies: size of the catalogue the ratings' movie indices point into.
        check: called with the rows per split before the files are written (raise to stop).
        progress: tqdm bars (None: where stderr is a terminal).

    Raises:
        DataError: a bad rating (from `ratings`), or a (user, movie) pair rated twice under on_bad_rows="error".
    """
    work = out / ".buckets"
    try:
        part = _partition(work, ratings, num_movies, chunk_rows, progress)
        dropped = _dropped_repeats(part) if ratings.duplicates == "skip" else np.zeros(0, np.int64)
        stats, by_key, by_user = _assign(work, part, ratings, num_movies, rule, dropped, chunk_rows, progress)
        part.buckets.remove()
        check(stats.counts)
        _write_files(out, by_key, by_user, progress)
        return stats
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _partition(work: Path, ratings, num_movies: int, chunk_rows: int, progress: bool | None) -> _Partition:
    """Pass 1: every rating to a bucket of its user (see the module docstring)."""
    buckets = Buckets(work, "users", bucket_count(ratings.rows_estimate, chunk_rows), _INPUT_SCHEMA)
    user_ids, user_rows = np.zeros(0, np.int64), np.zeros(0, np.int64)
    rated = np.zeros(num_movies, dtype=bool)
    rows = 0
    with tqdm(total=ratings.size, unit=ratings.unit, unit_scale=True, desc="prepare: reading ratings",
              disable=_disabled(progress), leave=False) as bar:  # fmt: skip
        ratings.on_progress(bar.update)
        for chunk in ratings:
            ids, counts = np.unique(chunk.user_id, return_counts=True)
            user_ids, user_rows = _merge_counts(user_ids, user_rows, ids, counts)
            rated[chunk.movie] = True
            split = chunk.split if chunk.split is not None else np.full(len(chunk), -1, np.int8)
            columns = {"user_id": chunk.user_id, "movie": chunk.movie, "rating": chunk.rating, "timestamp": chunk.timestamp,
                       "position": np.arange(rows, rows + len(chunk)), "split": split}  # fmt: skip
            buckets.append((hash64(chunk.user_id, _USER_KEY) % np.uint64(buckets.count)).astype(np.intp), columns)
            rows += len(chunk)
    buckets.close()
    return _Partition(buckets, user_ids, user_rows, rated, rows)


def _merge_counts(ids: np.ndarray, counts: np.ndarray, more_ids: np.ndarray, more: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted distinct ids of both, with their counts added."""
    if not len(ids):
        return more_ids, more
    merged = np.union1d(ids, more_ids)
    total = np.zeros(len(merged), dtype=np.int64)
    total[np.searchsorted(merged, ids)] += counts
    total[np.searchsorted(merged, more_ids)] += more
    return merged, total


def _repeats(user_id: np.ndarray, movie: np.ndarray, timestamp: np.ndarray, position: np.ndarray) -> tuple[np.ndarray, tuple | None]:
    """Ratings of a pair rated more than once: (positions of all but each pair's latest, the first repeat).

    The latest is the largest timestamp, then the later line; the first repeat is (position of the earliest
    rating of a repeated pair, position of the next rating of that pair), or None when no pair repeats.
    """
    order = np.lexsort((position, timestamp, movie, user_id))
    u, m = user_id[order], movie[order]
    again = (u[1:] == u[:-1]) & (m[1:] == m[:-1])  # row i + 1 (sorted) rates the pair of row i
    if not again.any():
        return np.zeros(0, np.int64), None
    replaced = position[order[:-1][again]]
    involved = np.zeros(len(order), dtype=bool)
    involved[:-1] |= again
    involved[1:] |= again
    rows = order[involved]
    rows = rows[np.argsort(position[rows])]
    first = rows[0]
    same = rows[1:][(user_id[rows[1:]] == user_id[first]) & (movie[rows[1:]] == movie[first])]
    return replaced, (int(position[first]), int(position[same[0]]), int(user_id[first]), int(movie[first]))


def _dropped_repeats(part: _Partition) -> np.ndarray:
    """Sorted positions of the ratings that a later rating of the same pair replaces (on_bad_rows=skip)."""
    found = []
    for b in range(part.buckets.count):
        t = part.buckets.read(b)
        columns = [t[c].to_numpy() for c in ("user_id", "movie", "timestamp", "position")]
        found.append(_repeats(*columns)[0])
    return np.sort(np.concatenate(found)) if found else np.zeros(0, np.int64)


def _assign(work: Path, part: _Partition, ratings, num_movies: int, rule: SplitRule, dropped: np.ndarray,
            chunk_rows: int, progress: bool | None) -> tuple[SplitStats, list[Buckets], Buckets]:  # fmt: skip
    """Pass 2: per bucket of users, the split and the statistics; the rows on to the output buckets."""
    n = part.rows - len(dropped)
    if ratings.duplicates == "skip":
        ratings.bad_rows.add(ratings.path, "duplicate (user, movie): kept the latest", len(dropped))
    num_users = len(part.user_ids)
    stats = SplitStats(part.user_ids, np.zeros(num_users, np.int64), np.zeros(num_users), np.zeros(num_movies, np.int64),
                       np.zeros(num_movies), counts=dict.fromkeys(SPLITS, 0))  # fmt: skip
    share = (1 - rule.val_fraction - rule.test_fraction, rule.val_fraction, rule.test_fraction)
    by_key = [Buckets(work, f"order-{name}", bucket_count(int(n * s) + 1, chunk_rows), _KEYED_SCHEMA) for name, s in zip(SPLITS, share)]
    user_starts = _user_ranges(part.user_rows, bucket_count(int(n * share[0]) + 1, chunk_rows))
    by_user = Buckets(work, "by-user", len(user_starts) + 1, SPLIT_SCHEMA)
    assign = _assigner(rule, n, part, num_movies)
    order_key = seed_key(rule.seed, 2)
    first_repeat: tuple | None = None
    for b in tqdm(range(part.buckets.count), desc="prepare: splitting", disable=_disabled(progress), leave=False):
        t = part.buckets.read(b)
        if len(dropped):
            t = t.filter(~np.isin(t["position"].to_numpy(), dropped))
        user_id, movie, rating, timestamp, position, given = (t[c].to_numpy() for c in _INPUT_SCHEMA.names)
        if ratings.duplicates == "error":
            repeat = _repeats(user_id, movie, timestamp, position)[1]
            if repeat is not None and (first_repeat is None or repeat < first_repeat):
                first_repeat = repeat
        user = np.searchsorted(part.user_ids, user_id).astype(np.int32)
        kept = position - np.searchsorted(dropped, position) if len(dropped) else position
        split = assign(kept, user, timestamp, movie, given)
        _count(stats, split, user, movie, rating)
        columns = {"user": user, "movie": movie, "rating": rating, "timestamp": timestamp, "key": hash64(kept, order_key)}
        for s, buckets in enumerate(by_key):
            rows = np.flatnonzero(split == s)
            key = columns["key"][rows]
            target = ((key >> np.uint64(32)) * np.uint64(buckets.count)) >> np.uint64(32)  # monotone in the key
            buckets.append(target.astype(np.intp), {c: v[rows] for c, v in columns.items()})
        train = np.flatnonzero(split == 0)
        by_user.append(np.searchsorted(user_starts, user[train], side="right"), {c: columns[c][train] for c in SPLIT_SCHEMA.names})
        part.buckets.drop(b)
    for buckets in (*by_key, by_user):
        buckets.close()
    if first_repeat is not None:
        first, second, user_id, movie = first_repeat
        raise ratings.repeated(first, second, user_id, int(ratings.movie_ids[movie]))
    return stats, by_key, by_user


def _assigner(rule: SplitRule, n: int, part: _Partition, num_movies: int) -> Callable[..., np.ndarray]:
    """(kept position, user, timestamp, movie, given split) of a bucket's ratings -> 0 / 1 / 2 each."""
    if rule.kind == "random":
        random = RandomSplit.plan(n, rule.val_fraction, rule.test_fraction, rule.seed)
        return lambda kept, user, timestamp, movie, given: random.assign(kept)
    if rule.kind == "temporal":
        return lambda kept, user, timestamp, movie, given: temporal_assignment(user, timestamp, movie, rule.val_fraction,
                                                                               rule.test_fraction)  # fmt: skip
    if rule.kind == "cold_movies":
        held = held_out_movies(np.flatnonzero(part.rated), num_movies, rule.val_fraction, rule.test_fraction, rule.seed)
        return lambda kept, user, timestamp, movie, given: held[movie]
    return lambda kept, user, timestamp, movie, given: given  # decided in memory (ReleaseRatings)


def _count(stats: SplitStats, split: np.ndarray, user: np.ndarray, movie: np.ndarray, rating: np.ndarray) -> None:
    for s, name in enumerate(SPLITS):
        stats.counts[name] += int((split == s).sum())
    train = split == 0
    weights = rating[train].astype(np.float64)
    stats.user_count += np.bincount(user[train], minlength=len(stats.user_count))
    stats.user_sum += np.bincount(user[train], weights, minlength=len(stats.user_sum))
    stats.movie_count += np.bincount(movie[train], minlength=len(stats.movie_count))
    stats.movie_sum += np.bincount(movie[train], weights, minlength=len(stats.movie_sum))
    stats.train_sum += float(weights.sum())


def _user_ranges(user_rows: np.ndarray, count: int) -> np.ndarray:
    """First contiguous user of each user range but the first, for `count` ranges of about equal rows."""
    total = np.cumsum(user_rows)
    if count <= 1 or not len(total):
        return np.zeros(0, np.int64)
    return np.unique(np.searchsorted(total, np.arange(1, count) * (total[-1] / count), side="right"))


def _write_files(out: Path, by_key: list[Buckets], by_user: Buckets, progress: bool | None) -> None:
    """Pass 3: the split files in key order, and the training split by user."""
    steps = sum(b.count for b in by_key) + by_user.count
    with tqdm(total=steps, desc="prepare: writing", disable=_disabled(progress), leave=False) as bar:
        for name, buckets in zip(SPLITS, by_key):
            writer = RowGroupWriter(out / f"{name}.parquet", SPLIT_SCHEMA, ROW_GROUP_ROWS)
            for b in range(buckets.count):
                t = buckets.read(b)
                writer.write(t.take(np.argsort(t["key"].to_numpy())).drop_columns(["key"]))
                buckets.drop(b)
                bar.update()
            writer.close()
            buckets.remove()
        writer = RowGroupWriter(out / "train_by_user.parquet", SPLIT_SCHEMA, ROW_GROUP_ROWS, whole="user")
        for b in range(by_user.count):
            t = by_user.read(b)
            order = np.lexsort((t["movie"].to_numpy(), -t["timestamp"].to_numpy(), t["user"].to_numpy()))
            writer.write(t.take(order))
            by_user.drop(b)
            bar.update()
        writer.close()
        by_user.remove()


def _disabled(progress: bool | None) -> bool | None:
    return None if progress is None else not progress
