"""Reading parts of a prepared split: a rank's range of rows, one column, the training rows by user.

The rows of a split file are in a seeded random order (prepare sorts them by a random key), so any contiguous
range of them is a random sample. Rank r of w reads rows [n*r//w, n*(r+1)//w): only the Parquet row groups that
overlap that range are decoded, from the memory-mapped file, into arrays allocated once, so reading costs the
part's own bytes and one row group. Whole columns (`SplitColumns`) and the user-history lists (`read_history`,
from train_by_user.parquet, where each user's ratings are together, newest first) are read the same way.

A whole column is read once per owner and then held, with what it costs logged and counted (`held_bytes`), so
that indexing a split row by row can never turn into a whole-column read per row (issue 21).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

log = logging.getLogger(__name__)
MiB = 2**20


def part_bounds(rows: int, rank: int, world_size: int) -> tuple[int, int]:
    """Rows [start, stop) of rank `rank`'s part of `rows` rows: contiguous, sizes differing by at most one."""
    return rows * rank // world_size, rows * (rank + 1) // world_size


def read_range(path: Path, start: int, stop: int, columns: Sequence[str]) -> dict[str, np.ndarray]:
    """Rows [start, stop) of `columns` of a Parquet file, reading only the row groups that hold them."""
    source = pq.ParquetFile(str(path), memory_map=True)
    schema = source.schema_arrow
    out = {c: np.empty(max(stop - start, 0), dtype=schema.field(c).type.to_pandas_dtype()) for c in columns}
    first = 0
    for group in range(source.num_row_groups):
        size = source.metadata.row_group(group).num_rows
        lo, hi = max(start, first), min(stop, first + size)
        if lo < hi:
            table = source.read_row_group(group, columns=list(columns))
            for c in columns:
                out[c][lo - start : hi - start] = table[c].to_numpy()[lo - first : hi - first]
        first += size
        if first >= stop:
            break
    return out


def num_rows(path: Path) -> int:
    """Rows of a Parquet file, from its footer."""
    return pq.ParquetFile(str(path)).metadata.num_rows


class SplitColumns(Mapping[str, np.ndarray]):
    """One split's columns as whole numpy arrays, each read from Parquet once, on first use, and held here.

    `columns["user"]` costs a read of the whole column the first time and nothing after, so a loop that indexes
    rows (`columns["user"][i]`) reads the file once. What is held is logged at each read and counted by
    `held_bytes`; a caller done with whole columns (baselines, one-off statistics) calls `release()`, and the
    next access reads again. The whole split is what baselines and ranking evaluation read (on rank 0, or for
    a sample of users); training reads a rank's part instead (`read_range`), and serving one user reads the
    seen-movie index (`data/seen.py`), never a whole column.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._columns: list[str] | None = None
        self._held: dict[str, np.ndarray] = {}

    @property
    def _names(self) -> list[str]:
        # Read from the footer on first use, not when the dataset is opened: a run that never reads a split
        # (a validation-only run and its test split, eval.test=false) never opens its file.
        if self._columns is None:
            self._columns = pq.ParquetFile(str(self.path)).schema_arrow.names
        return self._columns

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self._names:
            raise KeyError(name)
        if name not in self._held:
            self._held[name] = read_range(self.path, 0, self.rows(), [name])[name]
            log.info("read %s column %s whole: %s rows, %.1f MiB (%.1f MiB of its columns held)", self.path.name,
                     name, f"{len(self._held[name]):,}", self._held[name].nbytes / MiB, self.held_bytes / MiB)  # fmt: skip
        return self._held[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)

    @property
    def held_bytes(self) -> int:
        """Bytes of the whole columns this object holds now."""
        return sum(column.nbytes for column in self._held.values())

    def release(self) -> None:
        """Stop holding every column read so far (arrays still referenced elsewhere live on there)."""
        self._held.clear()

    def rows(self) -> int:
        """Rows of the split (from the file's footer, reading no column)."""
        return num_rows(self.path)


def read_history(path: Path, train_count: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
    """Each user's `length` most recent training movies (ties in time by movie id) as CSR: offsets, values.

    `path` is train_by_user.parquet (rows by user, newest first, then by movie) and `train_count` each user's
    training ratings, so user u's rows start at sum(train_count[:u]); row groups are read one at a time.
    """
    counts = train_count.astype(np.int64)
    first_row = np.r_[0, np.cumsum(counts)[:-1]]
    offsets = np.r_[0, np.cumsum(np.minimum(counts, length))].astype(np.int64)
    values = np.empty(int(offsets[-1]), dtype=np.int64)
    source = pq.ParquetFile(str(path), memory_map=True)
    start = 0
    for group in range(source.num_row_groups):
        table = source.read_row_group(group, columns=["user", "movie"])
        user = table["user"].to_numpy()
        rank = np.arange(start, start + len(user)) - first_row[user]
        keep = rank < length
        values[offsets[user[keep]] + rank[keep]] = table["movie"].to_numpy()[keep]
        start += len(user)
    return offsets, values
