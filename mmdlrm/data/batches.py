"""Batches for the DLRM: KeyedJaggedTensors and dense features built from columnar arrays by vectorised slicing.

A batch holds, for B ratings:
- sparse features (one KeyedJaggedTensor): `user` and `movie` (one id each), `genre` (the movie's genres, 0..n
  ids), `year` (one release-year bucket);
- dense features (B x 5): log counts and shrunk mean-rating deviations of the user and the movie on the training
  split, and the centred release year;
- labels: the rating in stars, or 1.0 / 0.0 for liked / not liked.
TorchRec's `Batch` is reused, so batches move to devices and through TorchRec's train pipelines as they are.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torchrec.datasets.utils import Batch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from mmdlrm.data.prepare import Prepared

SPARSE_FEATURES = ("user", "movie", "genre", "year")
DENSE_FEATURES = ("user_log_count", "user_mean_dev", "movie_log_count", "movie_mean_dev", "year")
FIRST_YEAR, LAST_YEAR = 1900, 2030
SHRINKAGE = 5.0
"""Pseudo-ratings at the global mean added to each user's and movie's mean (an empirical-Bayes prior)."""


def num_year_buckets(span: int) -> int:
    """Year buckets of `span` years from 1900 to 2030, plus bucket 0 for an unknown year."""
    return (LAST_YEAR - FIRST_YEAR) // span + 2


@dataclass
class SplitRows:
    """One split's columns as tensors (user and movie are contiguous ids)."""

    user: torch.Tensor
    movie: torch.Tensor
    rating: torch.Tensor

    @classmethod
    def from_prepared(cls, data: Prepared, split: str) -> SplitRows:
        cols = data.splits[split]
        return cls(
            torch.from_numpy(cols["user"].astype(np.int64)),
            torch.from_numpy(cols["movie"].astype(np.int64)),
            torch.from_numpy(cols["rating"].astype(np.float32)),
        )

    def __len__(self) -> int:
        return len(self.rating)


@dataclass
class MovieBatch(Batch):
    """TorchRec's Batch plus each row's movie id, which the content arch gathers vectors by."""

    movies: torch.Tensor = None  # type: ignore[assignment]

    def to(self, device: torch.device, non_blocking: bool = False) -> MovieBatch:
        moved = super().to(device, non_blocking)
        return MovieBatch(moved.dense_features, moved.sparse_features, moved.labels,
                          self.movies.to(device=device, non_blocking=non_blocking))  # fmt: skip

    def record_stream(self, stream: torch.Stream) -> None:
        super().record_stream(stream)
        self.movies.record_stream(stream)

    def pin_memory(self) -> MovieBatch:
        pinned = super().pin_memory()
        return MovieBatch(pinned.dense_features, pinned.sparse_features, pinned.labels, self.movies.pin_memory())


class BatchBuilder:
    """Builds `Batch`es from row indices of a split: per-user and per-movie tables are gathered, never looped."""

    def __init__(self, data: Prepared, year_span: int, task: str = "rating", liked_threshold: float = 4.0) -> None:
        self.mean = data.mean_rating
        self.task = task
        self.liked_threshold = liked_threshold
        self.user_count = torch.from_numpy(data.users["train_count"].astype(np.float32))
        self.user_sum = torch.from_numpy(data.users["train_sum"].astype(np.float32))
        self.movie_count = torch.from_numpy(data.movies["train_count"].astype(np.float32))
        self.movie_sum = torch.from_numpy(data.movies["train_sum"].astype(np.float32))
        offsets = torch.from_numpy(data.movies["genre_offsets"])
        self.genre_start = offsets[:-1]
        self.genre_length = offsets[1:] - offsets[:-1]
        self.genre_values = torch.from_numpy(data.movies["genre_values"])
        year = torch.from_numpy(data.movies["year"].astype(np.int64))
        known = (year >= FIRST_YEAR) & (year < LAST_YEAR)
        self.year_bucket = torch.where(known, (year - FIRST_YEAR) // year_span + 1, torch.zeros_like(year))
        self.year_centred = torch.where(known, (year - 1995).float() / 25.0, torch.zeros(len(year)))

    def build(self, rows: SplitRows, index: torch.Tensor, leave_one_out: bool = False) -> Batch:
        """The batch of `rows[index]`.

        Args:
            leave_one_out: subtract each row's own rating from its user's and movie's training sums, so that on
                the training split a row's dense features never contain its own label.
        """
        user, movie, rating = rows.user[index], rows.movie[index], rows.rating[index]
        batch_size = len(index)
        one = torch.ones(batch_size, dtype=torch.int64)
        genre_length = self.genre_length[movie]
        # Positions of each row's genres in genre_values: row start repeated per genre, plus 0..len-1.
        row_of_genre = torch.repeat_interleave(torch.arange(batch_size), genre_length)
        first = torch.cumsum(genre_length, 0) - genre_length
        position = self.genre_start[movie][row_of_genre] + torch.arange(len(row_of_genre)) - first[row_of_genre]
        sparse = KeyedJaggedTensor(
            keys=list(SPARSE_FEATURES),
            values=torch.cat([user, movie, self.genre_values[position], self.year_bucket[movie]]),
            lengths=torch.cat([one, one, genre_length, one]),
        )
        own = rating if leave_one_out else torch.zeros_like(rating)
        seen = float(leave_one_out)
        dense = torch.stack(
            [
                torch.log1p(self.user_count[user] - seen) / 8.0,
                self._deviation(self.user_sum[user] - own, self.user_count[user] - seen),
                torch.log1p(self.movie_count[movie] - seen) / 8.0,
                self._deviation(self.movie_sum[movie] - own, self.movie_count[movie] - seen),
                self.year_centred[movie],
            ],
            dim=1,
        )
        labels = (rating >= self.liked_threshold).float() if self.task == "binary" else rating
        return MovieBatch(dense_features=dense, sparse_features=sparse, labels=labels, movies=movie)

    def _deviation(self, total: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
        return (total + SHRINKAGE * self.mean) / (count + SHRINKAGE) - self.mean


class BatchLoader:
    """Iterates over one split in batches; each rank takes its own share of every batch.

    Every rank yields the same number of batches (collectives in sharded models need that). Training drops the
    last incomplete global batch; evaluation keeps every row, so the last batch may be smaller.
    """

    def __init__(
        self,
        builder: BatchBuilder,
        rows: SplitRows,
        batch_size: int,
        *,
        shuffle: bool,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        leave_one_out: bool = False,
    ) -> None:
        if batch_size < world_size:
            raise ValueError(f"batch size {batch_size} is smaller than the world size {world_size}")
        self.builder, self.rows = builder, rows
        self.local_batch = batch_size // world_size
        self.shuffle, self.seed, self.rank, self.world_size = shuffle, seed, rank, world_size
        self.leave_one_out = leave_one_out
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Use the permutation of `epoch` (every rank draws the same one from the shared seed)."""
        self.epoch = epoch

    def __len__(self) -> int:
        global_batch = self.local_batch * self.world_size
        n = len(self.rows)
        return n // global_batch if self.shuffle else math.ceil(n / global_batch)

    def _order(self) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(len(self.rows))
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return torch.randperm(len(self.rows), generator=generator)

    def __iter__(self) -> Iterator[Batch]:
        return self.batches()

    def batches(self, start: int = 0) -> Iterator[Batch]:
        """This rank's batches from step `start` of the epoch on (a resumed epoch skips the steps it has done)."""
        order = self._order()
        global_batch = self.local_batch * self.world_size
        for step in range(start, len(self)):
            chunk = order[step * global_batch : (step + 1) * global_batch]
            # Contiguous shares: rank r takes rows [r*b, (r+1)*b) of the global batch (uneven only at the end).
            bounds = [len(chunk) * r // self.world_size for r in range(self.world_size + 1)]
            yield self.builder.build(self.rows, chunk[bounds[self.rank] : bounds[self.rank + 1]], self.leave_one_out)
