"""Negative sampling for the ranking task: movies a user did not choose, drawn vectorised per batch.

Draws are seeded per (seed, epoch, step), so a resumed run draws what an uninterrupted one would. The whole
global batch is drawn at once and each rank keeps its rows, so the negatives do not depend on the world size.

Known positives are skipped cheaply: every (user, movie) pair of the training split is one int64 key
`user * num_movies + movie` in a sorted array; a drawn negative is looked up with `searchsorted` and the
collisions are drawn again, up to `retries` rounds. What still collides after that is kept (the chance is
about (share of the catalogue the user has seen) ** (retries + 1): for a user who rated half of all movies,
3 % after 4 rounds) and counted in `collisions` (of `drawn`), which the ranking task reports once a run.
"""

from __future__ import annotations

import numpy as np
import torch


class NegativeSampler:
    """Draws `k` negatives per positive, uniformly or by popularity ** alpha.

    Args:
        popularity: training interactions per movie (its length is the catalogue size).
        distribution: `uniform` or `popularity`.
        alpha: exponent of the popularity law.
        known: sorted `user * num_movies + movie` keys to redraw (see `known_pairs`), or None to keep every draw.
    """

    def __init__(
        self,
        popularity: np.ndarray,
        k: int,
        distribution: str = "uniform",
        alpha: float = 0.75,
        known: np.ndarray | None = None,
        retries: int = 4,
    ) -> None:
        self.k, self.num_movies, self.retries = k, len(popularity), retries
        if distribution == "popularity":
            weights = popularity.astype(np.float64) ** alpha
            if weights.sum() == 0:
                weights = np.ones(self.num_movies)
        elif distribution == "uniform":
            weights = np.ones(self.num_movies)
        else:
            raise ValueError(f"unknown negative distribution {distribution!r}; use uniform or popularity")
        self.probability = torch.from_numpy(weights / weights.sum())
        """Probability of drawing each movie (before redraws): the Q of the sampled-softmax correction."""
        self._cdf = torch.cumsum(self.probability, 0)
        self._cdf[-1] = 1.0
        self._uniform = distribution == "uniform"
        self.known = known
        self.collisions = 0
        """Negatives kept although known, after every redraw round (see the module docstring)."""
        self.drawn = 0
        """Negatives drawn (each counted once, however often it was redrawn), beside `collisions`."""

    def sample(self, users: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """len(users) x k movie ids, known positives redrawn (see the module docstring)."""
        users = users.to(torch.int64)
        out = self._draw(len(users) * self.k, generator).view(len(users), self.k)
        self.drawn += out.numel()
        if self.known is None or len(self.known) == 0:
            return out
        owners = users.unsqueeze(1).expand_as(out)
        for round_ in range(self.retries + 1):
            clash = self._is_known(owners, out)
            if not clash.any():
                break
            if round_ == self.retries:
                self.collisions += int(clash.sum())
                break
            out[clash] = self._draw(int(clash.sum()), generator)
        return out

    def _draw(self, n: int, generator: torch.Generator) -> torch.Tensor:
        if self._uniform:
            return torch.randint(self.num_movies, (n,), generator=generator)
        u = torch.rand(n, generator=generator, dtype=torch.float64)
        return torch.searchsorted(self._cdf, u, right=True).clamp_(max=self.num_movies - 1)

    def _is_known(self, users: torch.Tensor, movies: torch.Tensor) -> torch.Tensor:
        keys = (users * self.num_movies + movies).numpy()
        position = np.searchsorted(self.known, keys).clip(max=len(self.known) - 1)
        return torch.from_numpy(self.known[position] == keys)


def known_pairs(users: np.ndarray, movies: np.ndarray, num_movies: int) -> np.ndarray:
    """The sorted, distinct `user * num_movies + movie` keys of the (user, movie) pairs given."""
    return np.unique(users.astype(np.int64) * num_movies + movies.astype(np.int64))
