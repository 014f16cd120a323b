"""A release's ratings as a stream of validated chunks: read from its file a block at a time, or from a `Release`.

`FolderRatings` reads the ratings file with `chunks.BlockReader` and checks every chunk as `read_release` checks
the whole file (ids >= 0, ratings in range, movie in the catalogue: same messages, true file lines); a (user,
movie) pair rated twice can only be found once a user's ratings are together, so `streaming` finds it later
and asks `FolderRatings.repeated` for the message. `ReleaseRatings` hands out the ratings of a release already
read (and checked) in memory, with their split given. Both number the ratings they hand out 0, 1, 2, ... in file
order (their positions), which the `random` split and the shuffled order are keyed on.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa

from mmdlrm.data.chunks import BlockReader
from mmdlrm.data.movielens import _CSV, _CSV_NAMES, _DAT, _RATINGS_NAMES, _U_DATA, Release, ReleaseKind, rating_checks
from mmdlrm.data.tables import BadRows, DataError, OnBadRows, TextFormat

MIN_LINE_BYTES = 16
"""A rating line is at least this long in practice (`1,1,4.0,9649827`): an upper bound on the rows of a file."""
RATINGS_FILES: dict[str, str] = {"csv": "ratings.csv", "dat": "ratings.dat", "100k": "u.data"}
_TYPES = {"user_id": pa.int64(), "movie_id": pa.int64(), "rating": pa.float32(), "timestamp": pa.int64()}
_LAYOUT: dict[str, tuple[TextFormat, bool]] = {"csv": (_CSV, True), "dat": (_DAT, False), "100k": (_U_DATA, False)}
"""Each layout's text format, and whether its ratings file has a header (with ml-25m's column names)."""


@dataclass
class RatingChunk:
    """Consecutive ratings: original user ids, movie indices into the sorted catalogue, and their split if known."""

    user_id: np.ndarray
    """int64, as in the file."""
    movie: np.ndarray
    """int32 index into the catalogue sorted by movie id."""
    rating: np.ndarray
    timestamp: np.ndarray
    split: np.ndarray | None = None
    """int8 0 / 1 / 2 where the split was decided in memory (`ReleaseRatings`)."""

    def __len__(self) -> int:
        return len(self.user_id)


class FolderRatings:
    """The ratings file of the release in `folder`, one checked chunk per block (see the module docstring).

    Raises (while iterating):
        DataError: a bad row under on_bad_rows="error", naming file, line and column.
    """

    unit = "B"

    def __init__(self, folder: Path, kind: ReleaseKind, movie_ids: np.ndarray, on_bad_rows: OnBadRows, bad_rows: BadRows,
                 block_bytes: int) -> None:  # fmt: skip
        self.path = folder / RATINGS_FILES[kind]
        self.kind, self.movie_ids, self.on_bad_rows, self.bad_rows = kind, movie_ids, on_bad_rows, bad_rows
        fmt, header = _LAYOUT[kind]
        columns = {_CSV_NAMES[n] if header else n: t for n, t in _TYPES.items()}
        rename = {_CSV_NAMES[n]: n for n in _TYPES} if header else None
        names = None if header else _RATINGS_NAMES
        self.reader = BlockReader(self.path, columns, fmt, names=names, rename=rename, on_bad_rows=on_bad_rows,
                                  bad_rows=bad_rows, block_bytes=block_bytes)  # fmt: skip
        self.duplicates: Literal["error", "skip"] = on_bad_rows
        self.size = self.path.stat().st_size
        """Progress is counted in bytes of the file."""
        self.rows_estimate = self.size // MIN_LINE_BYTES + 1

    def on_progress(self, update: Callable[[int], object]) -> None:
        """Call `update` with the bytes of each block read."""
        self.reader.progress = update

    def __iter__(self) -> Iterator[RatingChunk]:
        skipped = BadRows(quiet=True)
        for table in self.reader:
            chunk = self._checked(table, skipped)
            if len(chunk):
                yield chunk
        self.bad_rows.merge(self.path, skipped)

    def repeated(self, first: int, second: int, user_id: int, movie_id: int) -> DataError:
        """The error for `user_id` rating `movie_id` twice, at data rows `first` and `second` (in file order)."""
        a, b = self.reader.lines(np.array([first, second]))
        return DataError(
            f"{self.path} lines {a} and {b}: user {user_id} rated movie {movie_id} twice (one rating per user and "
            "movie); delete one of the lines, or pass data.on_bad_rows=skip to keep the latest rating of each pair"
        )

    def _checked(self, table: pa.Table, skipped: BadRows) -> RatingChunk:
        """The chunk's ratings after the checks of `movielens._validate_ratings` (repeated pairs aside)."""
        user = table["user_id"].to_numpy()
        movie = table["movie_id"].to_numpy()
        rating = table["rating"].to_numpy()
        index = np.searchsorted(self.movie_ids, movie).clip(max=len(self.movie_ids) - 1)
        unknown = self.movie_ids[index] != movie
        keep = np.ones(len(rating), dtype=bool)
        for mask, reason, fix, name, values in rating_checks(user, movie, rating, unknown):
            if not mask.any():
                continue
            if self.on_bad_rows == "skip":
                skipped.add(self.path, reason, int((mask & keep).sum()))
                keep &= ~mask
                continue
            row = int(np.flatnonzero(mask)[0])
            line = int(self.reader.lines(np.array([self.reader.rows - table.num_rows + row]))[0])
            raise DataError(
                f"{self.path} line {line}, column {self._column(name)}: {reason} ({values[row]}); {fix}, or pass "
                "data.on_bad_rows=skip"
            )
        parts = (user, index.astype(np.int32), rating, table["timestamp"].to_numpy())
        return RatingChunk(*(p if keep.all() else p[keep] for p in parts))

    def _column(self, name: str) -> int:
        return self.reader.column(_CSV_NAMES[name]) if self.kind == "csv" else _RATINGS_NAMES.index(name) + 1


class ReleaseRatings:
    """The ratings of a release read in memory (already checked, each pair once), with their split decided."""

    duplicates: Literal["absent"] = "absent"
    unit = "rows"

    def __init__(self, release: Release, movie_ids: np.ndarray, split: np.ndarray, rows: int) -> None:
        self.release, self.movie_ids, self.split, self.rows = release, movie_ids, split, rows
        self.size = self.rows_estimate = release.ratings.num_rows
        self._update: Callable[[int], object] = lambda n: None

    def on_progress(self, update: Callable[[int], object]) -> None:
        """Call `update` with the rows of each chunk handed out."""
        self._update = update

    def __iter__(self) -> Iterator[RatingChunk]:
        ratings = self.release.ratings
        for start in range(0, ratings.num_rows, self.rows):
            part = ratings.slice(start, self.rows)
            movie = np.searchsorted(self.movie_ids, part["movie_id"].to_numpy()).astype(np.int32)
            yield RatingChunk(part["user_id"].to_numpy(), movie, part["rating"].to_numpy(), part["timestamp"].to_numpy(),
                              self.split[start : start + part.num_rows])  # fmt: skip
            self._update(part.num_rows)
