"""Which movies each user rated, per split: a CSR index over contiguous user ids, made once per prepared folder.

Serving one user (`recommend`, the ranking protocol's left-out and relevant movies, top-k lists for many users)
needs that user's movies, not whole split columns. A prepared dataset holds, per split, `seen_<split>.offsets.npy`
(int64, users + 1: user u's movies are positions offsets[u]:offsets[u+1]) and `seen_<split>.movies.npy` (int32,
each user's movies in ascending id order), and `seen.json`, the index's manifest, naming what they were made from (the split files' sizes and rows, the user count): training movies from train_by_user.parquet a
row group at a time, validation and test movies from their split files, read once.

`prepare` writes the index. A folder prepared before it existed, or whose split files no longer match the
manifest, gets it (again) at first use: each file is written aside and renamed into place, the manifest last, so
a reader never sees a half-written index and processes building it at once write the same bytes. Where the
folder is read-only the index is built in memory, with a warning. The arrays are memory-mapped: one user's
movies cost a few pages, not a read of the index.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from mmdlrm.data.parts import num_rows, read_range
from mmdlrm.data.splits import SPLITS
from mmdlrm.data.tables import DataError

log = logging.getLogger(__name__)

MANIFEST = "seen.json"
"""The index's manifest in a prepared dataset (beside `seen_<split>.offsets.npy` and `seen_<split>.movies.npy`)."""
FORMAT = 1
SOURCES = {"train": "train_by_user.parquet", "val": "val.parquet", "test": "test.parquet"}
"""The file each split's movies are read from (the training split's by-user copy: a row group at a time)."""


@dataclass(frozen=True)
class UserMovies:
    """One split's movies per user as CSR: user u's movies are `movies[offsets[u]:offsets[u + 1]]`, ascending."""

    offsets: np.ndarray
    """int64, num_users + 1."""
    movies: np.ndarray
    """int32 contiguous movie ids."""

    @property
    def num_users(self) -> int:
        return len(self.offsets) - 1


def user_movies(user: np.ndarray, movie: np.ndarray, num_users: int) -> UserMovies:
    """The CSR of the (user, movie) pairs given (any order), each user's movies sorted."""
    order = np.lexsort((movie, user))
    offsets = np.zeros(num_users + 1, dtype=np.int64)
    np.cumsum(np.bincount(user, minlength=num_users), out=offsets[1:])
    return UserMovies(offsets, np.asarray(movie)[order].astype(np.int32))


class SeenMovies:
    """The movies each user rated in some splits (`Prepared.seen`): look-ups by contiguous user id.

    Movies come back as sorted int64 contiguous ids; a user who rated nothing in these splits gets an empty
    array. Splits never share a (user, movie) pair (prepare keeps one rating per pair), so no movie repeats.
    """

    def __init__(self, parts: Mapping[str, UserMovies]) -> None:
        if not parts:
            raise ValueError("SeenMovies needs at least one split")
        sizes = {p.num_users for p in parts.values()}
        if len(sizes) != 1:
            raise ValueError(f"the splits' indexes cover different numbers of users: {sorted(sizes)}")
        self._parts = dict(parts)
        self.splits: tuple[str, ...] = tuple(parts)
        self.num_users: int = sizes.pop()

    def of(self, user: int) -> np.ndarray:
        """The movies `user` rated in these splits, sorted.

        Raises:
            IndexError: `user` is not a contiguous user id of this dataset.
        """
        (user,) = self._checked([user]).tolist()
        slices = [part.movies[part.offsets[user] : part.offsets[user + 1]] for part in self._parts.values()]
        return np.sort(np.concatenate(slices).astype(np.int64))  # a few slices of memory-mapped arrays

    def of_users(self, users: Sequence[int] | np.ndarray) -> list[np.ndarray]:
        """The movies each of `users` rated in these splits, sorted; one array per user, in the order given."""
        count = len(np.atleast_1d(users))
        if count == 0:
            return []
        rows, movies = self.pairs(users)
        order = np.lexsort((movies, rows))
        ends = np.cumsum(np.bincount(rows, minlength=count))
        return np.split(movies[order], ends[:-1])

    def counts(self, users: Sequence[int] | np.ndarray) -> np.ndarray:
        """How many movies each of `users` rated in these splits (int64)."""
        users = self._checked(users)
        return sum(p.offsets[users + 1] - p.offsets[users] for p in self._parts.values())

    def pairs(self, users: Sequence[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(row, movie) for every movie of every user, vectorised: `row` indexes `users` (a U x movies mask).

        `scores[rows, movies] = -inf` leaves each user's seen movies out of a U x num_movies score matrix.
        Rows come in order; within a row, split by split.
        """
        users = self._checked(users)
        rows, movies = [], []
        for part in self._parts.values():
            start, lengths = part.offsets[users], part.offsets[users + 1] - part.offsets[users]
            index = np.repeat(start - np.cumsum(lengths) + lengths, lengths) + np.arange(int(lengths.sum()))
            rows.append(np.repeat(np.arange(len(users)), lengths))
            movies.append(np.asarray(part.movies[index], dtype=np.int64))
        rows_all, movies_all = np.concatenate(rows), np.concatenate(movies)
        order = np.argsort(rows_all, kind="stable")
        return rows_all[order], movies_all[order]

    def _checked(self, users: Sequence[int] | np.ndarray) -> np.ndarray:
        users = np.atleast_1d(np.asarray(users, dtype=np.int64))
        outside = users[(users < 0) | (users >= self.num_users)]
        if len(outside):
            raise IndexError(f"user {int(outside[0])} is outside the contiguous ids 0..{self.num_users - 1}")
        return users


def write_seen(folder: Path, num_users: int) -> dict[str, UserMovies]:
    """Build the index of the prepared dataset in `folder` and write it there (see the module docstring)."""
    parts = build_seen(folder, num_users)
    _save(folder, parts, num_users)
    return parts


def _save(folder: Path, parts: dict[str, UserMovies], num_users: int) -> None:
    for split, part in parts.items():
        _replace(_path(folder, split, "offsets"), lambda f, a=part.offsets: np.save(f, a))
        _replace(_path(folder, split, "movies"), lambda f, a=part.movies: np.save(f, a))
    manifest = json.dumps(_inputs(folder, num_users), indent=2) + "\n"
    _replace(folder / MANIFEST, lambda f: f.write(manifest.encode()))


def load_seen(folder: Path, num_users: int, splits: Sequence[str] = SPLITS) -> dict[str, UserMovies]:
    """The index of `splits` of the prepared dataset in `folder`, memory-mapped; built first if missing or stale.

    Only the files of `splits` are looked at (sizes, footers, index files), so that a run which must not read a
    split (a validation-only run and its test split) does not open it while the index is current.
    """
    manifest = folder / MANIFEST
    current = manifest.is_file() and _current(json.loads(manifest.read_text()), folder, num_users, splits)
    files = [_path(folder, s, kind) for s in splits for kind in ("offsets", "movies")]
    if not (current and all(f.is_file() for f in files)):
        why = "is missing" if not manifest.is_file() else "was made from other split files" if not current else "is incomplete"
        log.info("%s: the seen-movie index %s; building it (read once: train_by_user, val, test)", folder, why)
        parts = build_seen(folder, num_users)
        try:
            _save(folder, parts, num_users)
        except OSError as error:
            log.warning("%s: cannot write the seen-movie index (%s); holding it in memory for this process", folder, error)
            return {s: parts[s] for s in splits}
    return {s: UserMovies(np.load(_path(folder, s, "offsets"), mmap_mode="r"), np.load(_path(folder, s, "movies"), mmap_mode="r"))
            for s in splits}  # fmt: skip


def _current(saved: dict, folder: Path, num_users: int, splits: Sequence[str]) -> bool:
    """Whether the index manifest `saved` matches the source files of `splits` as they are now."""
    if saved.get("format") != FORMAT or saved.get("users") != num_users:
        return False
    made_from = saved.get("made_from") or {}
    return all(made_from.get(SOURCES[s]) == _source(folder / SOURCES[s]) for s in splits)


def build_seen(folder: Path, num_users: int) -> dict[str, UserMovies]:
    """Each split's movies per user, in memory: training from train_by_user.parquet a row group at a time."""
    parts = {"train": _by_user_file(folder / SOURCES["train"], num_users)}
    for split in ("val", "test"):
        path = folder / SOURCES[split]
        columns = read_range(path, 0, num_rows(path), ["user", "movie"])
        parts[split] = user_movies(columns["user"], columns["movie"], num_users)
    return parts


def _by_user_file(path: Path, num_users: int) -> UserMovies:
    """The CSR of a file whose rows are ordered by user (train_by_user.parquet), one row group at a time.

    Raises:
        DataError: the rows are not ordered by user.
    """
    source = pq.ParquetFile(str(path), memory_map=True)
    movies = np.empty(source.metadata.num_rows, dtype=np.int32)
    counts = np.zeros(num_users, dtype=np.int64)
    start, last = 0, -1
    for group in range(source.num_row_groups):
        table = source.read_row_group(group, columns=["user", "movie"])
        user, movie = table["user"].to_numpy(), table["movie"].to_numpy()
        if len(user) and (user[0] < last or np.any(np.diff(user) < 0)):
            raise DataError(f"{path}: rows are not ordered by user (row group {group}); prepare the dataset again")
        movies[start : start + len(user)] = movie[np.lexsort((movie, user))]
        counts += np.bincount(user, minlength=num_users)
        start += len(user)
        last = int(user[-1]) if len(user) else last
    offsets = np.zeros(num_users + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    return UserMovies(offsets, movies)


def _path(folder: Path, split: str, kind: str) -> Path:
    return folder / f"seen_{split}.{kind}.npy"


def _inputs(folder: Path, num_users: int) -> dict:
    """What the index is made from: its format, the user count, and each source file's bytes and rows."""
    files = {name: _source(folder / name) for name in SOURCES.values()}
    return {"format": FORMAT, "users": num_users, "made_from": files}


def _source(path: Path) -> dict:
    """What the index records of one source file: its bytes and rows (from the footer)."""
    return {"bytes": path.stat().st_size, "rows": num_rows(path)}


def _replace(path: Path, write) -> None:
    """Write `path` through a uniquely named file beside it, renamed into place (atomic on one filesystem)."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
