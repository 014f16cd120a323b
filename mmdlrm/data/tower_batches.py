"""Batches for the two-tower retrieval model: each row's query, the candidates it is contrasted with, what to mask.

A training batch of B (user, movie) rows holds:
- the query side (B rows): KeyedJaggedTensor of the user's features (`user` if the model has a user table, the
  `history` of their most recent training movies without the row's own movie, demographics and activity bucket
  where the model reads them) and the user's dense statistics (leave-one-out, as the DLRM's batches);
- the candidate side (C rows): the movies every row's softmax runs over: the B positives (`in_batch`), those plus
  drawn negatives (`sampled`), or the whole catalogue (`catalogue`); their KeyedJaggedTensor (`movie`, `genre`,
  `year`, popularity bucket) and dense statistics;
- labels: the position of each row's positive among the candidates;
- mask pairs (row, candidate position) left out of the row's softmax: other copies of the row's own movie
  (accidental hits) and, with `model.retrieval.mask_seen`, every other movie the user rated in training.
Evaluation and inference build the two sides apart (`queries`, `candidates`): a user's query is their whole
recent history; every movie is a candidate.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor
from torchrec.streamable import Pipelineable

from mmdlrm.config import ModelConfig
from mmdlrm.data.batches import BatchBuilder, SplitRows, segments
from mmdlrm.data.prepare import Prepared
from mmdlrm.schema import COUNT_BUCKETS, QUERY_FEATURES


@dataclass
class TowerBatch(Pipelineable):
    """B query rows against C candidates (see the module docstring)."""

    query_dense: torch.Tensor
    query_sparse: KeyedJaggedTensor
    candidate_dense: torch.Tensor
    candidate_sparse: KeyedJaggedTensor
    movies: torch.Tensor
    """C candidate movie ids."""
    labels: torch.Tensor
    """B positions into the candidates (int64)."""
    mask_rows: torch.Tensor
    mask_cols: torch.Tensor

    def to(self, device: torch.device, non_blocking: bool = False) -> TowerBatch:
        move = lambda t: t.to(device=device, non_blocking=non_blocking)  # noqa: E731
        return TowerBatch(move(self.query_dense), move(self.query_sparse), move(self.candidate_dense),
                          move(self.candidate_sparse), move(self.movies), move(self.labels), move(self.mask_rows),
                          move(self.mask_cols))  # fmt: skip

    def record_stream(self, stream: torch.Stream) -> None:
        for t in (self.query_dense, self.candidate_dense, self.movies, self.labels, self.mask_rows, self.mask_cols):
            t.record_stream(stream)
        self.query_sparse.record_stream(stream)
        self.candidate_sparse.record_stream(stream)

    def pin_memory(self) -> TowerBatch:
        return TowerBatch(self.query_dense.pin_memory(), self.query_sparse.pin_memory(), self.candidate_dense.pin_memory(),
                          self.candidate_sparse.pin_memory(), self.movies.pin_memory(), self.labels.pin_memory(),
                          self.mask_rows.pin_memory(), self.mask_cols.pin_memory())  # fmt: skip


class TowerBatchBuilder:
    """Builds `TowerBatch`es (a drop-in builder for `BatchLoader`) and the two sides apart for inference.

    Per-user and per-movie tables are those of the DLRM's `BatchBuilder` (gathered, never looped).

    Args:
        negatives: `catalogue`, `in_batch` or `sampled` (resolved from `model.retrieval.negatives`).
        seen: every user's training movies as CSR (offsets, values), for `mask_seen`; read from the data if None.
    """

    def __init__(self, data: Prepared, cfg: ModelConfig, negatives: str = "catalogue",
                 seen: tuple[np.ndarray, np.ndarray] | None = None) -> None:  # fmt: skip
        self.base = BatchBuilder(data, cfg)
        self.cfg, self.negatives = cfg, negatives
        self.num_movies = data.num_movies
        self.query_keys = [k for k in self.base.keys if k in QUERY_FEATURES]
        self.candidate_keys = [k for k in self.base.keys if k not in self.query_keys]
        self.dropout = cfg.retrieval.history_dropout
        self.seen: tuple[torch.Tensor, torch.Tensor] | None = None
        if cfg.retrieval.mask_seen:
            offsets, values = seen if seen is not None else data.history(np.iinfo(np.int32).max)
            self.seen = (torch.from_numpy(offsets), torch.from_numpy(values))
        self._catalogue: tuple[torch.Tensor, KeyedJaggedTensor, torch.Tensor] | None = None

    def visitor_problem(self) -> str | None:
        """Why the query tower cannot describe a visitor by the movies they like, or None if it can."""
        return self.base.visitor_problem()

    def for_visitors(self, liked: list[np.ndarray]) -> TowerBatchBuilder:
        """A copy of this builder whose users 0..V-1 are visitors described by the movies they like (see
        `BatchBuilder.for_visitors`); for `queries` only (no training batches: nothing to mask).

        Raises:
            ConfigError: the model cannot describe a visitor (`visitor_problem`).
        """
        visitors = copy.copy(self)
        visitors.base, visitors.seen = self.base.for_visitors(liked), None
        return visitors

    # -- the two sides
    def queries(self, users: torch.Tensor, leave_out: torch.Tensor | None = None, own: torch.Tensor | None = None,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, KeyedJaggedTensor]:  # fmt: skip
        """Query dense features (U x 2) and KeyedJaggedTensor for `users`.

        Args:
            leave_out: per user, a movie left out of the history and out of the statistics (the training row's
                own movie, whose rating is `own`); None at inference.
            generator: with it and `model.retrieval.history_dropout`, history movies are dropped at random.
        """
        base, users = self.base, users.long()
        seen = torch.full((len(users),), float(leave_out is not None))
        own = own if own is not None else torch.zeros(len(users))
        dense = torch.stack([torch.log1p(base.user_count[users] - seen) / 8.0,
                             base._deviation(base.user_sum[users] - own, base.user_count[users] - seen)], dim=1)  # fmt: skip
        one = torch.ones(len(users), dtype=torch.int64)
        values, lengths = [], []
        for key in self.query_keys:
            if key == "user":
                values.append(users), lengths.append(one)
            elif key == "history":
                start, length, history = base.history
                position, row = segments(start[users], length[users])
                kept = history[position]
                keep = torch.ones(len(kept), dtype=torch.bool) if leave_out is None else kept != leave_out[row]
                if generator is not None and self.dropout:
                    keep &= torch.rand(len(kept), generator=generator) >= self.dropout
                values.append(kept[keep]), lengths.append(torch.bincount(row[keep], minlength=len(users)))
            else:
                values.append(base._extra(key, users, torch.zeros_like(users), seen, None)), lengths.append(one)
        return dense, KeyedJaggedTensor(keys=self.query_keys, values=torch.cat(values), lengths=torch.cat(lengths))

    def candidates(self, movies: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, KeyedJaggedTensor, torch.Tensor]:
        """Candidate dense features (C x 3), KeyedJaggedTensor and ids of `movies` (full training statistics).

        A movie without training ratings is seen as new (the unknown-movie row) when `model.movie_id_dropout` is
        on; in training (`generator` given) a seeded `movie_id_dropout` share of the candidates is too.
        """
        base, movies = self.base, movies.long()
        new = None
        if base.movie_id_dropout:
            new = base.movie_count[movies] == 0
            if generator is not None:
                new |= torch.rand(len(movies), generator=generator) < base.movie_id_dropout
        count, total = base.movie_count[movies], base.movie_sum[movies]
        if new is not None:
            count, total = torch.where(new, 0.0, count), torch.where(new, 0.0, total)
        dense = torch.stack([torch.log1p(count) / 8.0, base._deviation(total, count), base.year_centred[movies]], dim=1)
        one = torch.ones(len(movies), dtype=torch.int64)
        genre_position, _ = segments(base.genre_start[movies], base.genre_length[movies])
        parts = {"movie": (movies if new is None else torch.where(new, base.unknown_movie, movies), one),
                 "genre": (base.genre_values[genre_position], base.genre_length[movies]),
                 "year": (base.year_bucket[movies], one)}  # fmt: skip
        if "movie_popularity" in self.candidate_keys:
            bucket = torch.log2(1 + count.clamp(min=0)).long().clamp(max=COUNT_BUCKETS - 1)
            parts["movie_popularity"] = (bucket, one)
        values = torch.cat([parts[k][0] for k in self.candidate_keys])
        lengths = torch.cat([parts[k][1] for k in self.candidate_keys])
        return dense, KeyedJaggedTensor(keys=self.candidate_keys, values=values, lengths=lengths), movies

    def catalogue(self) -> tuple[torch.Tensor, KeyedJaggedTensor, torch.Tensor]:
        """Every movie as a candidate (made once; the unknown-movie row for movies without training ratings)."""
        if self._catalogue is None:
            self._catalogue = self.candidates(torch.arange(self.num_movies))
        return self._catalogue

    # -- training batches
    def build(self, rows: SplitRows, index: torch.Tensor, leave_one_out: bool = False, negatives: torch.Tensor | None = None,
              generator: torch.Generator | None = None) -> TowerBatch:  # fmt: skip
        """The batch of `rows[index]` against its candidates (plus `negatives`, any shape, for `sampled`)."""
        user, movie, rating = rows.user[index].long(), rows.movie[index].long(), rows.rating[index]
        query_dense, query_sparse = self.queries(user, movie, rating if leave_one_out else None, generator)
        if self.negatives == "catalogue":
            if generator is not None and self.base.movie_id_dropout:
                candidate_dense, candidate_sparse, movies = self.candidates(torch.arange(self.num_movies), generator)
            else:
                candidate_dense, candidate_sparse, movies = self.catalogue()
            labels = movie
        else:
            pool = movie if negatives is None else torch.cat([movie, negatives.reshape(-1).long()])
            candidate_dense, candidate_sparse, movies = self.candidates(pool, generator)
            labels = torch.arange(len(movie))
        mask_rows, mask_cols = self._masked(user, movie, labels, movies)
        return TowerBatch(query_dense, query_sparse, candidate_dense, candidate_sparse, movies, labels, mask_rows, mask_cols)

    def _masked(self, user: torch.Tensor, movie: torch.Tensor, labels: torch.Tensor, candidates: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(row, candidate position) pairs left out of each row's softmax: copies of the row's own movie, and with
        `mask_seen` every movie of the user's training ratings, never the row's label itself."""
        if self.seen is not None:
            offsets, values = self.seen
            position, row = segments(offsets[user], offsets[user + 1] - offsets[user])
            movies = values[position]
        else:
            row, movies = torch.arange(len(movie)), movie
        order = torch.argsort(candidates, stable=True)
        ranked = candidates[order]
        lo, hi = torch.searchsorted(ranked, movies), torch.searchsorted(ranked, movies, right=True)
        position, pair = segments(lo, hi - lo)  # every candidate position holding each (row, movie)'s movie
        rows, cols = row[pair], order[position]
        keep = cols != labels[rows]
        return rows[keep], cols[keep]
