"""Batches for the DLRM: KeyedJaggedTensors and dense features built from columnar arrays by vectorised slicing.

A batch holds, for B (user, movie) rows:
- sparse features (one KeyedJaggedTensor): `user` and `movie` (one id each), `genre` (the movie's genres, 0..n
  ids), `year` (one release-year bucket), and with `model.history_length` the `history`: the user's most recent
  training movies, never including the row's own movie (leak-free: built from the training split only, and
  the candidate is left out, so training rows look like evaluation rows);
- dense features (B x 5): log counts and shrunk mean-rating deviations of the user and the movie on the training
  split, and the centred release year;
- labels: what the task makes of the rating (stars, liked or not), or 1 / 0 for positives / sampled negatives.
With negatives (the ranking task) a batch of B positives holds B * (1 + k) rows: the B positives first, then
each positive's k negatives in turn (row B + i * k + j is negative j of positive i).
TorchRec's `Batch` is reused, so batches move to devices and through TorchRec's train pipelines as they are.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torchrec.datasets.utils import Batch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from mmdlrm.config import ModelConfig
from mmdlrm.data.negatives import NegativeSampler
from mmdlrm.data.prepare import Prepared
from mmdlrm.schema import (
    COUNT_BUCKETS,
    COUNT_FEATURES,
    DEMOGRAPHIC_FEATURES,
    FIRST_YEAR,
    HISTORY_FEATURE,
    LAST_YEAR,
    SPARSE_FEATURES,
)

SHRINKAGE = 5.0
"""Pseudo-ratings at the global mean added to each user's and movie's mean (an empirical-Bayes prior)."""


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

    def where(self, keep: torch.Tensor) -> SplitRows:
        """The rows where `keep` (a bool per row) is True."""
        return SplitRows(self.user[keep], self.movie[keep], self.rating[keep])


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
    """Builds `Batch`es from row indices of a split: per-user and per-movie tables are gathered, never looped.

    Args:
        cfg: the model section (year buckets, history length).
        label: stars -> the task's label (identity: stars).
    """

    def __init__(self, data: Prepared, cfg: ModelConfig, label: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        self.mean = data.mean_rating
        self.label = label
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
        self.year_bucket = torch.where(known, (year - FIRST_YEAR) // cfg.year_bucket_years + 1, torch.zeros_like(year))
        self.year_centred = torch.where(known, (year - 1995).float() / 25.0, torch.zeros(len(year)))
        self.keys = list(SPARSE_FEATURES)
        self.history: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        if cfg.history_length:
            train = data.splits["train"]
            offsets_h, values_h = user_history(train["user"], train["movie"], train["timestamp"], data.num_users, cfg.history_length)
            offsets_h = torch.from_numpy(offsets_h)
            self.history = (offsets_h[:-1], offsets_h[1:] - offsets_h[:-1], torch.from_numpy(values_h))
            self.keys.append(HISTORY_FEATURE)
        self.extra = [name for name, _ in cfg.extra_features(data.manifest["counts"])]
        self.keys += self.extra
        self.user_codes = {n: torch.from_numpy(data.users[n].astype(np.int64)) for n in DEMOGRAPHIC_FEATURES if n in data.users}

    def build(self, rows: SplitRows, index: torch.Tensor, leave_one_out: bool = False, negatives: torch.Tensor | None = None) -> Batch:
        """The batch of `rows[index]`, followed by `negatives` (len(index) x k movie ids) if given.

        Args:
            leave_one_out: subtract each (positive) row's own rating from its user's and movie's training sums,
                so that on the training split a row's dense features never contain its own label.
        """
        user, movie, rating = rows.user[index], rows.movie[index], rows.rating[index]
        positives = len(index)
        own = rating if leave_one_out else torch.zeros_like(rating)
        seen = torch.full((positives,), float(leave_one_out))
        if negatives is None:
            labels = self.label(rating) if self.label is not None else rating
        else:
            k = negatives.shape[1]
            user = torch.cat([user, user.repeat_interleave(k)])
            movie = torch.cat([movie, negatives.reshape(-1)])
            own = torch.cat([own, torch.zeros(positives * k)])
            seen = torch.cat([seen, torch.zeros(positives * k)])
            labels = torch.cat([torch.ones(positives), torch.zeros(positives * k)])
        return MovieBatch(dense_features=self._dense(user, movie, own, seen), sparse_features=self._sparse(user, movie, seen),
                          labels=labels, movies=movie)  # fmt: skip

    def _sparse(self, user: torch.Tensor, movie: torch.Tensor, seen: torch.Tensor) -> KeyedJaggedTensor:
        one = torch.ones(len(user), dtype=torch.int64)
        genre_position, _ = segments(self.genre_start[movie], self.genre_length[movie])
        genre_length = self.genre_length[movie]
        values = [user, movie, self.genre_values[genre_position], self.year_bucket[movie]]
        lengths = [one, one, genre_length, one]
        if self.history is not None:
            start, length, history = self.history
            position, row = segments(start[user], length[user])
            kept = history[position]
            keep = kept != movie[row]  # the candidate is never part of its own history
            values.append(kept[keep])
            lengths.append(torch.bincount(row[keep], minlength=len(user)))
        for name in self.extra:
            values.append(self._extra(name, user, movie, seen))
            lengths.append(one)
        return KeyedJaggedTensor(keys=self.keys, values=torch.cat(values), lengths=torch.cat(lengths))

    def _extra(self, name: str, user: torch.Tensor, movie: torch.Tensor, seen: torch.Tensor) -> torch.Tensor:
        """One optional single-valued feature: a count bucket (leaving the row's own rating out) or a user code."""
        if name in COUNT_FEATURES:
            count = (self.user_count[user] if name == "user_activity" else self.movie_count[movie]) - seen
            return torch.log2(1 + count.clamp(min=0)).long().clamp(max=COUNT_BUCKETS - 1)
        return self.user_codes[name][user]

    def _dense(self, user: torch.Tensor, movie: torch.Tensor, own: torch.Tensor, seen: torch.Tensor) -> torch.Tensor:
        return torch.stack(
            [
                torch.log1p(self.user_count[user] - seen) / 8.0,
                self._deviation(self.user_sum[user] - own, self.user_count[user] - seen),
                torch.log1p(self.movie_count[movie] - seen) / 8.0,
                self._deviation(self.movie_sum[movie] - own, self.movie_count[movie] - seen),
                self.year_centred[movie],
            ],
            dim=1,
        )

    def _deviation(self, total: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
        return (total + SHRINKAGE * self.mean) / (count + SHRINKAGE) - self.mean


def segments(start: torch.Tensor, length: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat positions of the segments [start_i, start_i + length_i) in order, and the row each belongs to."""
    row = torch.repeat_interleave(torch.arange(len(length)), length)
    first = torch.cumsum(length, 0) - length
    return start[row] + torch.arange(len(row)) - first[row], row


def user_history(user: np.ndarray, movie: np.ndarray, timestamp: np.ndarray, num_users: int, length: int) -> tuple[np.ndarray, np.ndarray]:
    """Each user's `length` most recent movies (ties in time by movie id) as CSR: offsets (num_users + 1), values."""
    order = np.lexsort((movie, -timestamp.astype(np.int64), user))
    sorted_users = user[order]
    counts = np.bincount(sorted_users, minlength=num_users)
    start = np.r_[0, np.cumsum(counts)[:-1]]
    keep = np.arange(len(order)) - start[sorted_users] < length
    offsets = np.r_[0, np.cumsum(np.minimum(counts, length))].astype(np.int64)
    return offsets, movie[order][keep].astype(np.int64)


class BatchLoader:
    """Iterates over one split in batches; each rank takes its own share of every batch.

    Every rank yields the same number of batches (collectives in sharded models need that). Training drops the
    last incomplete global batch; evaluation keeps every row, so the last batch may be smaller. With a
    `negatives` sampler each row is a positive followed by its sampled negatives (see `BatchBuilder.build`).
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
        negatives: NegativeSampler | None = None,
    ) -> None:
        if batch_size < world_size:
            raise ValueError(f"batch size {batch_size} is smaller than the world size {world_size}")
        self.builder, self.rows = builder, rows
        self.local_batch = batch_size // world_size
        self.shuffle, self.seed, self.rank, self.world_size = shuffle, seed, rank, world_size
        self.leave_one_out = leave_one_out
        self.negatives = negatives
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
            mine = slice(bounds[self.rank], bounds[self.rank + 1])
            negatives = None
            if self.negatives is not None:  # drawn for the global batch: the same whatever the world size
                generator = torch.Generator().manual_seed((self.seed * 1_000_003 + self.epoch) * 1_000_033 + step)
                negatives = self.negatives.sample(self.rows.user[chunk], generator)[mine]
            yield self.builder.build(self.rows, chunk[mine], self.leave_one_out, negatives)
