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

import copy
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torchrec.datasets.utils import Batch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from mmdlrm.config import ConfigError, ModelConfig
from mmdlrm.data.negatives import NegativeSampler
from mmdlrm.data.parts import part_bounds, read_range
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
    """Rows of one split as tensors (user and movie are contiguous ids): the whole split, or one rank's part.

    A part read for rank r of w (`from_prepared` on a `Prepared` loaded for that rank) holds rows [start, start +
    len) of the whole split's `total`; after `where`, `position` holds each remaining row's place in the whole
    split. `BatchLoader` places rows by those positions, so batches do not depend on how they were read.
    """

    user: torch.Tensor
    movie: torch.Tensor
    rating: torch.Tensor
    total: int | None = None
    """Rows of the whole split (before any `where`); None: len(self), the whole split."""
    start: int = 0
    """Position in the whole split of this part's first row."""
    position: torch.Tensor | None = None
    """Each row's position in the whole split, after `where`; None: start, start + 1, ..."""
    part: tuple[int, int] = (0, 1)
    """(rank, world size) these rows are the part of; (0, 1): the whole split."""

    @classmethod
    def from_prepared(cls, data: Prepared, split: str) -> SplitRows:
        """This process's part of `split`: the rows of rank `data.rank` of `data.world_size` (see parts.py)."""
        total = data.split_rows(split)
        start, stop = part_bounds(total, data.rank, data.world_size)
        cols = read_range(data.split_path(split), start, stop, ("user", "movie", "rating"))
        return cls(torch.from_numpy(cols["user"]), torch.from_numpy(cols["movie"]), torch.from_numpy(cols["rating"]),
                   total, start, None, (data.rank, data.world_size))  # fmt: skip

    def __len__(self) -> int:
        return len(self.rating)

    @property
    def rows_in_split(self) -> int:
        return len(self) if self.total is None else self.total

    def positions(self) -> torch.Tensor:
        """Each row's position in the whole split."""
        if self.position is not None:
            return self.position
        return torch.arange(self.start, self.start + len(self))

    def where(self, keep: torch.Tensor) -> SplitRows:
        """The rows where `keep` is True: a bool per row of these rows, or per row of the whole split."""
        if len(keep) != len(self):
            keep = keep[self.positions()]  # a mask over the whole split, for these rows
        return SplitRows(self.user[keep], self.movie[keep], self.rating[keep], self.rows_in_split, self.start,
                         self.positions()[keep], self.part)  # fmt: skip

    def part_for(self, rank: int, world_size: int) -> SplitRows:
        """Rank `rank`'s part of these rows: themselves if they are that part, a slice if they are the whole split.

        Raises:
            ValueError: these rows are the part of another rank or world size.
        """
        if self.part == (rank, world_size):
            return self
        if self.part != (0, 1):
            raise ValueError(f"rows read for rank {self.part[0]} of {self.part[1]} given to rank {rank} of {world_size}")
        lo, hi = part_bounds(self.rows_in_split, rank, world_size)
        if self.position is None:
            a, b = lo - self.start, hi - self.start
            return SplitRows(self.user[a:b], self.movie[a:b], self.rating[a:b], self.rows_in_split, lo, None, (rank, world_size))
        a, b = torch.searchsorted(self.position, torch.tensor([lo, hi])).tolist()
        return SplitRows(self.user[a:b], self.movie[a:b], self.rating[a:b], self.rows_in_split, lo, self.position[a:b],
                         (rank, world_size))  # fmt: skip

    def bounds_of(self, edges: list[int]) -> list[int]:
        """Local row index of each position in `edges` (sorted positions in the whole split)."""
        if self.position is None:
            return [min(max(e - self.start, 0), len(self)) for e in edges]
        return torch.searchsorted(self.position, torch.tensor(edges)).tolist()


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
        self.user_id = cfg.user_id
        self.movie_id_dropout = cfg.movie_id_dropout
        self.unknown_movie = len(year)  # the extra row of the movie table when movie_id_dropout is on
        self.keys = [f for f in SPARSE_FEATURES if cfg.user_id or f != "user"]
        self.history: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        if cfg.history_length:
            offsets_h, values_h = data.history(cfg.history_length)  # by row group: never the whole split
            offsets_h = torch.from_numpy(offsets_h)
            self.history = (offsets_h[:-1], offsets_h[1:] - offsets_h[:-1], torch.from_numpy(values_h))
            self.keys.append(HISTORY_FEATURE)
        self.extra = [name for name, _ in cfg.extra_features(data.manifest["counts"])]
        self.keys += self.extra
        self.user_codes = {n: torch.from_numpy(data.users[n].astype(np.int64)) for n in DEMOGRAPHIC_FEATURES if n in data.users}
        self.history_length = cfg.history_length

    def visitor_problem(self) -> str | None:
        """Why this model cannot describe a visitor by the movies they like (`for_visitors`), or None if it can."""
        if self.user_id:  # (a model without a user table always has a history: the config insists)
            return ("the model has a user-id table (model.user_id=true): it needs a known user; a visitor can be "
                    "described only by a run trained with model.user_id=false and model.history_length > 0")  # fmt: skip
        return None

    def for_visitors(self, liked: list[np.ndarray]) -> BatchBuilder:
        """A copy of this builder whose users 0..V-1 are visitors described by the movies each likes (`liked[v]`:
        contiguous movie ids), for scoring people who have no account (issue 22).

        A visitor's history is their last `model.history_length` liked movies, their rating count the number liked,
        their mean rating the training mean (their stars are unknown) and their demographics unknown (code 0).
        Movie tables are shared with this builder; only the per-user ones are replaced.

        Raises:
            ConfigError: the model cannot describe a visitor (`visitor_problem`).
        """
        problem = self.visitor_problem()
        if problem is not None:
            raise ConfigError(problem)
        lists = [np.asarray(movies, dtype=np.int64)[-self.history_length :] for movies in liked]
        lengths = torch.tensor([len(m) for m in lists], dtype=torch.int64)
        visitors = copy.copy(self)
        visitors.user_count = torch.tensor([float(len(m)) for m in liked])
        visitors.user_sum = visitors.user_count * self.mean
        visitors.history = (torch.cumsum(lengths, 0) - lengths, lengths,
                            torch.from_numpy(np.concatenate(lists)) if lists else torch.empty(0, dtype=torch.int64))  # fmt: skip
        visitors.user_codes = {n: torch.zeros(len(liked), dtype=torch.int64) for n in self.user_codes}
        return visitors

    def build(self, rows: SplitRows, index: torch.Tensor, leave_one_out: bool = False, negatives: torch.Tensor | None = None,
              generator: torch.Generator | None = None) -> Batch:  # fmt: skip
        """The batch of `rows[index]`, followed by `negatives` (len(index) x k movie ids) if given.

        Args:
            leave_one_out: subtract each (positive) row's own rating from its user's and movie's training sums,
                so that on the training split a row's dense features never contain its own label.
            generator: the training step's own seed, for builders that draw something per batch (the two-tower
                builder's history dropout); this one draws nothing.
        """
        user, movie, rating = rows.user[index].long(), rows.movie[index].long(), rows.rating[index]
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
        new = self._seen_as_new(user, movie, positives if leave_one_out else 0)
        return MovieBatch(dense_features=self._dense(user, movie, own, seen, new),
                          sparse_features=self._sparse(user, movie, seen, new), labels=labels, movies=movie)  # fmt: skip

    def _seen_as_new(self, user: torch.Tensor, movie: torch.Tensor, training_rows: int) -> torch.Tensor | None:
        """A bool per row: the model sees this movie as new (model.movie_id_dropout), or None when it is off.

        Movies without training ratings always are; of the first `training_rows` rows (training positives), a
        fixed pseudo-random `movie_id_dropout` share of the (user, movie) pairs is too, so that the model learns to
        rate a movie from its genres, year and content alone.
        """
        if not self.movie_id_dropout:
            return None
        new = self.movie_count[movie] == 0
        if training_rows:
            pair = user[:training_rows] * 0x9E3779B97F4A7C15 + movie[:training_rows] * 0xBF58476D1CE4E5B9  # wraps
            pair = (pair ^ (pair >> 31)) * 0x94D049BB133111EB
            uniform = ((pair ^ (pair >> 29)) & ((1 << 53) - 1)).double() / float(1 << 53)
            new[:training_rows] |= uniform < self.movie_id_dropout
        return new

    def _sparse(self, user: torch.Tensor, movie: torch.Tensor, seen: torch.Tensor, new: torch.Tensor | None) -> KeyedJaggedTensor:
        one = torch.ones(len(user), dtype=torch.int64)
        genre_position, _ = segments(self.genre_start[movie], self.genre_length[movie])
        genre_length = self.genre_length[movie]
        movie_key = movie if new is None else torch.where(new, self.unknown_movie, movie)
        values = [user, movie_key, self.genre_values[genre_position], self.year_bucket[movie]]
        lengths = [one, one, genre_length, one]
        if not self.user_id:  # no user table: a user is what they watched (history) and their side features
            values, lengths = values[1:], lengths[1:]
        if self.history is not None:
            start, length, history = self.history
            position, row = segments(start[user], length[user])
            kept = history[position]
            keep = kept != movie[row]  # the candidate is never part of its own history
            values.append(kept[keep])
            lengths.append(torch.bincount(row[keep], minlength=len(user)))
        for name in self.extra:
            values.append(self._extra(name, user, movie, seen, new))
            lengths.append(one)
        return KeyedJaggedTensor(keys=self.keys, values=torch.cat(values), lengths=torch.cat(lengths))

    def _extra(self, name: str, user: torch.Tensor, movie: torch.Tensor, seen: torch.Tensor, new: torch.Tensor | None) -> torch.Tensor:
        """One optional single-valued feature: a count bucket (leaving the row's own rating out) or a user code."""
        if name in COUNT_FEATURES:
            count = (self.user_count[user] if name == "user_activity" else self.movie_count[movie]) - seen
            if name == "movie_popularity" and new is not None:
                count = torch.where(new, 0.0, count)
            return torch.log2(1 + count.clamp(min=0)).long().clamp(max=COUNT_BUCKETS - 1)
        return self.user_codes[name][user]

    def _dense(self, user: torch.Tensor, movie: torch.Tensor, own: torch.Tensor, seen: torch.Tensor,
               new: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
        movie_count, movie_sum = self.movie_count[movie] - seen, self.movie_sum[movie] - own
        if new is not None:  # a movie seen as new has no ratings to describe it
            movie_count, movie_sum = torch.where(new, 0.0, movie_count), torch.where(new, 0.0, movie_sum)
        return torch.stack(
            [
                torch.log1p(self.user_count[user] - seen) / 8.0,
                self._deviation(self.user_sum[user] - own, self.user_count[user] - seen),
                torch.log1p(movie_count) / 8.0,
                self._deviation(movie_sum, movie_count),
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
    """Each user's `length` most recent movies (ties in time by movie id) as CSR: offsets (num_users + 1), values.

    From whole columns in memory; training reads the same lists by row group (`Prepared.history`).
    """
    order = np.lexsort((movie, -timestamp.astype(np.int64), user))
    sorted_users = user[order]
    counts = np.bincount(sorted_users, minlength=num_users)
    start = np.r_[0, np.cumsum(counts)[:-1]]
    keep = np.arange(len(order)) - start[sorted_users] < length
    offsets = np.r_[0, np.cumsum(np.minimum(counts, length))].astype(np.int64)
    return offsets, movie[order][keep].astype(np.int64)


VIRTUAL_SHARDS = 8
"""Training batches are drawn from this many equal ranges of the split (for 1, 2, 4 or 8 processes)."""


def virtual_shards(world_size: int, global_batch: int) -> int:
    """How many ranges of the split a global batch draws from: a multiple of the world size, VIRTUAL_SHARDS where
    the world size divides it, and never more than the batch's rows."""
    shards = world_size * max(1, VIRTUAL_SHARDS // world_size)
    return shards if shards <= global_batch else world_size


class BatchLoader:
    """Iterates over one split in batches; each rank reads only its own part of the split.

    The split is cut into V equal ranges of positions (`virtual_shards`: V = 8 for 1, 2, 4 or 8 processes) and
    each rank owns V / world_size consecutive ones: exactly the rows `SplitRows.from_prepared` read for it. With
    `shuffle`, each range is permuted every epoch by a generator seeded with (seed, epoch, range), and step s
    takes the next batch_size / V rows of every range; a rank's batch is its ranges' shares, the global batch all
    ranks' together. So the global batches, and the negatives drawn per range, are the same for every world size
    with the same V (1, 2, 4, 8; 3 and 6; ...): a run resumed with another such world size goes on with the same
    data. Every rank yields the same number of steps, set by the smallest range; the rows a range has beyond
    them (at most batch_size / V, other rows each epoch) wait for another epoch. Without `shuffle`
    (evaluation), each rank yields its part in order, every row once; ranks with fewer rows end with a smaller
    or empty batch. With a `negatives` sampler each row is a positive followed by its sampled negatives (see
    `BatchBuilder.build`).
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
        self.builder, self.rows = builder, rows.part_for(rank, world_size)
        self.local_batch = batch_size // world_size
        self.shuffle, self.seed, self.rank, self.world_size = shuffle, seed, rank, world_size
        self.leave_one_out = leave_one_out
        self.negatives = negatives
        self.epoch = 0
        global_batch = self.local_batch * world_size
        shards = virtual_shards(world_size, global_batch) if shuffle else world_size
        total = self.rows.rows_in_split
        edges = [total * v // shards for v in range(shards + 1)]
        self._own = range(rank * shards // world_size, (rank + 1) * shards // world_size)
        local = self.rows.bounds_of(edges)
        self._ranges = [(local[v], local[v + 1]) for v in self._own]
        sizes = _range_sizes(self.rows, local, edges, self._own)
        self.rows_in_split = int(sizes.sum())
        """Rows of the whole split this loader's ranks share (after any `SplitRows.where`)."""
        if shuffle:
            self._take = [global_batch * (v + 1) // shards - global_batch * v // shards for v in range(shards)]
            self._steps = min(int(size) // take for size, take in zip(sizes, self._take))
        else:
            self._steps = max(math.ceil(int(size) / self.local_batch) for size in sizes)

    def set_epoch(self, epoch: int) -> None:
        """Use the permutations of `epoch` (drawn from the shared seed: the same whatever the world size)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self._steps

    def __iter__(self) -> Iterator[Batch]:
        return self.batches()

    def batches(self, start: int = 0) -> Iterator[Batch]:
        """This rank's batches from step `start` of the epoch on (a resumed epoch skips the steps it has done)."""
        if not self.shuffle:
            n, size = len(self.rows), self.local_batch
            for step in range(start, self._steps):
                yield self.builder.build(self.rows, torch.arange(min(step * size, n), min((step + 1) * size, n)), self.leave_one_out)
            return
        # int32 permutations: 4 bytes a row of this rank's part (rows beyond 2**31 in one range would need int64)
        orders = [torch.randperm(hi - lo, generator=_generator(self.seed, self.epoch, v), dtype=torch.int32)
                  for v, (lo, hi) in zip(self._own, self._ranges)]  # fmt: skip
        for step in range(start, self._steps):
            shares = [order[step * self._take[v] : (step + 1) * self._take[v]].long() + lo
                      for v, order, (lo, _) in zip(self._own, orders, self._ranges)]  # fmt: skip
            negatives = None
            if self.negatives is not None:  # drawn per range: the same whatever the world size
                negatives = torch.cat([self.negatives.sample(self.rows.user[share], _generator(self.seed, self.epoch, v, step))
                                       for v, share in zip(self._own, shares)])  # fmt: skip
            yield self.builder.build(self.rows, torch.cat(shares), self.leave_one_out, negatives,
                                     generator=_generator(self.seed, self.epoch, len(self._take), step))


def _generator(*parts: int) -> torch.Generator:
    """A generator seeded by a tuple of small ints (seed, epoch, range[, step])."""
    value = 0
    for part in parts:
        value = (value * 1_000_003 + part) % (1 << 63)
    return torch.Generator().manual_seed(value)


def _range_sizes(rows: SplitRows, local: list[int], edges: list[int], own: range) -> np.ndarray:
    """Rows in each range of the split (all ranks'): from the edges alone, or (rows filtered by `where` in a
    part of the split) summed over the ranks."""
    if rows.position is None:
        return np.diff(edges)
    if rows.part[1] == 1:
        return np.diff(local)
    sizes = np.zeros(len(edges) - 1, dtype=np.int64)
    sizes[list(own)] = np.diff(local)[list(own)]
    return _sum_over_ranks(sizes)


def _sum_over_ranks(values: np.ndarray) -> np.ndarray:
    """`values` summed over the ranks of the default process group.

    Raises:
        RuntimeError: no process group (filtered parts of a split need one to agree on their steps).
    """
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError("rows filtered within one rank's part of a split: the ranks need a process group to agree "
                           "on how many batches they yield; initialise it first (distributed.env.init_distributed)")  # fmt: skip
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    total = torch.from_numpy(values).to(device)
    dist.all_reduce(total)
    return total.cpu().numpy()
