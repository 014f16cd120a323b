"""Which ratings train, validate and test: the split rules, each one computable a group of whole users at a time.

`prepare` streams: it reads the ratings in chunks and then handles them a bucket of users at a time, never all at
once. So every rule is written to need no more than that, and `split_rows` (all ratings in memory) applies the
same functions to the whole arrays, giving the same assignment:
- `random`: the rating at position p (its place among the kept ratings, in file order) goes to test when its
  keyed 64-bit hash (splitmix64 of p, keyed by the seed) is among the round(n * test_fraction) smallest of the n
  hashes, to validation when among the next round(n * val_fraction). The two thresholds come from a radix
  select over the hashes of 0..n-1 alone, without the data: exact counts, and each rating's split is a function
  of its position, so any subset of the ratings can be assigned on its own. (Before format 3 this was a numpy
  permutation of all positions, which needs them all in memory: the same kind of split, other rows.)
- `temporal`: per user, the latest test_fraction of their ratings (ties in time by movie) go to test and the
  val_fraction before those to validation: whole users at a time.
- `cold_movies`: a seeded permutation of the rated movies holds whole movies out: O(movies).
- `files`: ml-100k's own folds, matched by (user, movie) in memory (ml-100k is small).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mmdlrm.data.movielens import Release, read_fold
from mmdlrm.data.tables import DataError

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
_GAMMA, _MIX1, _MIX2 = np.uint64(0x9E3779B97F4A7C15), np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
_BLOCK = 1 << 22
"""Positions hashed at a time when selecting thresholds (32 MiB of uint64)."""
_TOP_BITS = 16


def hash64(values: np.ndarray, key: int) -> np.ndarray:
    """splitmix64 of `values ^ key` as uint64: a bijection, so distinct values never share a hash."""
    z = np.asarray(values).astype(np.uint64) ^ np.uint64(key)
    z += _GAMMA
    z ^= z >> np.uint64(30)
    z *= _MIX1
    z ^= z >> np.uint64(27)
    z *= _MIX2
    z ^= z >> np.uint64(31)
    return z


def seed_key(seed: int, purpose: int) -> int:
    """A 64-bit hash key for one use (`purpose`) of a seed."""
    return int(hash64(np.array([seed], dtype=np.int64), purpose)[0])


@dataclass(frozen=True)
class RandomSplit:
    """The `random` rule for n ratings: test below one hash threshold, validation below the next (see above)."""

    key: int
    test_below: int | None
    """Hashes below this go to test (None: every rating)."""
    val_below: int | None
    """Hashes from test_below up to below this go to validation (None: every other rating)."""

    @classmethod
    def plan(cls, n: int, val_fraction: float, test_fraction: float, seed: int) -> RandomSplit:
        key = seed_key(seed, 1)
        n_test, n_val = int(round(n * test_fraction)), int(round(n * val_fraction))
        test_below, val_below = _kth_smallest(n, [n_test, n_test + n_val], key)
        return cls(key, test_below, val_below)

    def assign(self, positions: np.ndarray) -> np.ndarray:
        """0 / 1 / 2 (train, val, test) for the ratings at `positions`."""
        h = hash64(positions, self.key)
        out = np.zeros(len(h), dtype=np.int8)
        if self.val_below is None:
            out[:] = 1
        else:
            out[h < np.uint64(self.val_below)] = 1
        if self.test_below is None:
            out[:] = 2
        else:
            out[h < np.uint64(self.test_below)] = 2
        return out


def _kth_smallest(n: int, ks: list[int], key: int) -> list[int | None]:
    """For each k, the k-th smallest (0-based) hash of the positions 0..n-1 (None where k >= n).

    Two passes over the hashes, a block at a time: a histogram of their top bits finds the bin holding each k-th
    value, then the values in those bins alone are sorted.
    """
    wanted = sorted({k for k in ks if k < n})
    if not wanted:
        return [None] * len(ks)
    counts = np.zeros(1 << _TOP_BITS, dtype=np.int64)
    for start in range(0, n, _BLOCK):
        top = hash64(np.arange(start, min(n, start + _BLOCK)), key) >> np.uint64(64 - _TOP_BITS)
        counts += np.bincount(top.astype(np.intp), minlength=1 << _TOP_BITS)
    cumulative = np.cumsum(counts)
    bins = {k: int(np.searchsorted(cumulative, k, side="right")) for k in wanted}
    members: dict[int, list[np.ndarray]] = {b: [] for b in bins.values()}
    for start in range(0, n, _BLOCK):
        h = hash64(np.arange(start, min(n, start + _BLOCK)), key)
        top = h >> np.uint64(64 - _TOP_BITS)
        for b, found in members.items():
            found.append(h[top == np.uint64(b)])
    out = []
    for k in ks:
        if k >= n:
            out.append(None)
            continue
        b = bins[k]
        values = np.sort(np.concatenate(members[b]))
        out.append(int(values[k - (cumulative[b] - counts[b])]))
    return out


def temporal_assignment(users: np.ndarray, timestamp: np.ndarray, movies: np.ndarray, val_fraction: float,
                        test_fraction: float) -> np.ndarray:  # fmt: skip
    """The `temporal` rule on ratings that hold each of their users whole: 0 / 1 / 2 per rating."""
    n = len(users)
    out = np.zeros(n, dtype=np.int8)
    if n == 0:
        return out
    order = np.lexsort((movies, timestamp, users))
    sorted_users = users[order]
    starts = np.flatnonzero(np.r_[True, sorted_users[1:] != sorted_users[:-1]])
    sizes = np.diff(np.r_[starts, n])
    run = np.repeat(np.arange(len(starts)), sizes)
    rank = np.arange(n) - starts[run]
    size = sizes[run]
    n_test = np.floor(size * test_fraction).astype(np.int64)
    n_val = np.floor(size * val_fraction).astype(np.int64)
    out[order[rank >= size - n_test]] = 2
    out[order[(rank >= size - n_test - n_val) & (rank < size - n_test)]] = 1
    return out


def held_out_movies(rated: np.ndarray, num_movies: int, val_fraction: float, test_fraction: float, seed: int) -> np.ndarray:
    """The `cold_movies` rule: 0 / 1 / 2 per movie index (`rated`: the sorted indices of the rated movies)."""
    perm = np.random.default_rng(seed).permutation(rated)
    n_test, n_val = int(round(len(rated) * test_fraction)), int(round(len(rated) * val_fraction))
    held = np.zeros(num_movies, dtype=np.int8)
    held[perm[:n_test]] = 2
    held[perm[n_test : n_test + n_val]] = 1
    return held


def split_rows(
    users: np.ndarray, timestamp: np.ndarray, movies: np.ndarray, split: str, val_fraction: float,
    test_fraction: float, seed: int,
) -> np.ndarray:  # fmt: skip
    """Assign each rating (all of them, in file order) to 0 = train, 1 = val, 2 = test (rules: module docstring).

    `random`: exact counts round(n * fraction), by position; `temporal`: for each user, the latest
    `test_fraction` of their ratings go to test and the `val_fraction` before those to val (ties in time broken
    by movie, so the result is stable); `cold_movies`: a seeded `test_fraction` of the rated movies, and another
    `val_fraction`, are held out whole: every rating of such a movie goes to test (or val), so the model meets
    them only through their content.
    """
    n = len(users)
    if split == "random":
        return RandomSplit.plan(n, val_fraction, test_fraction, seed).assign(np.arange(n))
    if split == "cold_movies":
        return held_out_movies(np.unique(movies), int(movies.max()) + 1, val_fraction, test_fraction, seed)[movies]
    if split != "temporal":
        raise ValueError(f"unknown split {split!r}; use random, temporal, cold_movies or files")
    return temporal_assignment(users, timestamp, movies, val_fraction, test_fraction)


def fold_assignment(release: Release, fold: str, val_fraction: float, seed: int) -> np.ndarray:
    """0 / 1 / 2 per rating from ml-100k's `<fold>.base` / `<fold>.test`, validation carved from the base by seed.

    Raises:
        DataError: the fold files are missing, or they and the release's ratings are not the same ratings.
    """
    base, test = read_fold(release.folder, fold)
    ratings = release.ratings
    span = int(max(ratings["movie_id"].to_numpy().max(), base["movie_id"].to_numpy().max(), test["movie_id"].to_numpy().max())) + 1
    key = lambda t: t["user_id"].to_numpy() * span + t["movie_id"].to_numpy()  # noqa: E731
    rows, in_base, in_test = key(ratings), key(base), key(test)
    out = np.full(len(rows), -1, dtype=np.int8)
    out[np.isin(rows, in_test)] = 2
    base_rows = np.flatnonzero(np.isin(rows, in_base) & (out < 0))
    out[base_rows] = 0
    out[np.random.default_rng(seed).permutation(base_rows)[: int(round(len(base_rows) * val_fraction))]] = 1
    unmatched = int((out < 0).sum()) + int((~np.isin(in_base, rows)).sum()) + int((~np.isin(in_test, rows)).sum())
    if unmatched:
        raise DataError(
            f"{release.folder}: {fold}.base and {fold}.test do not hold the same ratings as {release.files[0].name} "
            f"({unmatched:,} ratings are in one and not the other); are they from this release?"
        )
    return out


def cold_in_test(users: np.ndarray, items: np.ndarray, assignment: np.ndarray) -> dict:
    """How many test ratings have a user or a movie the training part never saw (logged; they stay in test)."""
    train = assignment == 0
    test = assignment == 2
    new_user = ~np.isin(users[test], np.unique(users[train]))
    new_movie = ~np.isin(items[test], np.unique(items[train]))
    if new_user.any() or new_movie.any():
        log.warning(
            "%d test ratings have a user and %d a movie absent from the training part; they are scored with ids "
            "the model never trained (biases fall back to the mean)", int(new_user.sum()), int(new_movie.sum()),
        )  # fmt: skip
    return {"test_ratings_of_unseen_users": int(new_user.sum()), "test_ratings_of_unseen_movies": int(new_movie.sum())}


def check_split_sizes(folder: Path, counts: dict[str, int], split: str, val: float, test: float) -> None:
    """Refuse a split that leaves train, validation or test without ratings.

    Raises:
        DataError: naming the sizes and the settings to change.
    """
    sizes = f"{sum(counts.values()):,} ratings split {split} into train {counts['train']:,}, val {counts['val']:,}, test {counts['test']:,}"
    if not counts["train"]:
        raise DataError(f"{folder}: {sizes}: no ratings left for training; lower data.val_fraction/test_fraction")
    empty = [name for name in ("val", "test") if not counts[name]]
    if empty:
        raise DataError(
            f"{folder}: {sizes}: the {' and '.join(empty)} split{'s are' if len(empty) > 1 else ' is'} empty; "
            f"use a release with more ratings (per user, for split=temporal), or raise data.val_fraction / "
            f"data.test_fraction (now {val} / {test})"
        )
