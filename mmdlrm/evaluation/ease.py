"""EASE (Steck 2019, "Embarrassingly Shallow Autoencoders"): a closed-form item-item top-k baseline.

With X the users x items matrix of training interactions and G = X^T X, EASE's item weights are
B = I - P diag(1 / diag P), P = (G + lambda I)^-1, which makes diag(B) = 0; a user's scores are x_u B.
It needs an items x items matrix: beyond `max_items` movies only the most-interacted-with ones are scored (the
others are never recommended), which keeps ml-25m's 62,000 movies to a few GiB. `lambda` is picked on the
validation split by the caller (see `fit_ease`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch

from mmdlrm.evaluation.ranking import Scorer

log = logging.getLogger("mmdlrm")


@dataclass
class Ease:
    """Fitted EASE weights over `items` (contiguous movie ids), and the training rows to score users with."""

    items: np.ndarray
    weights: torch.Tensor
    """len(items) x len(items), zero diagonal."""
    interactions: sp.csr_matrix
    """users x len(items), binary."""
    num_movies: int
    regularisation: float

    def scorer(self) -> Scorer:
        """Scores of every movie (-inf for movies outside `items`)."""
        items = torch.from_numpy(self.items)

        def score(users: torch.Tensor) -> torch.Tensor:
            rows = torch.from_numpy(self.interactions[users.numpy()].toarray().astype(np.float32))
            out = torch.full((len(users), self.num_movies), -math.inf)
            out[:, items] = rows @ self.weights
            return out

        return score


def interactions(users: np.ndarray, movies: np.ndarray, num_users: int, num_movies: int, max_items: int) -> tuple[np.ndarray, sp.csr_matrix]:
    """The items EASE keeps (the `max_items` most interacted-with, sorted) and the binary users x items matrix."""
    counts = np.bincount(movies, minlength=num_movies)
    items = np.flatnonzero(counts)
    if len(items) > max_items:
        items = np.sort(np.argsort(-counts, kind="stable")[:max_items])
    column = np.full(num_movies, -1)
    column[items] = np.arange(len(items))
    keep = column[movies] >= 0
    matrix = sp.csr_matrix((np.ones(int(keep.sum()), np.float32), (users[keep], column[movies[keep]])), shape=(num_users, len(items)))
    matrix.sum_duplicates()
    matrix.data[:] = 1.0  # a pair listed twice is still one interaction
    return items, matrix


def ease_weights(gram: torch.Tensor, regularisation: float) -> torch.Tensor:
    """B = I - P diag(1/diag P), P = (G + lambda I)^-1, by a Cholesky factorisation."""
    regularised = gram.clone()
    regularised.diagonal().add_(regularisation)
    inverse = torch.cholesky_inverse(torch.linalg.cholesky(regularised))
    weights = -inverse / inverse.diagonal().unsqueeze(0)
    weights.diagonal().zero_()
    return weights


def fit_ease(
    users: np.ndarray,
    movies: np.ndarray,
    num_users: int,
    num_movies: int,
    regularisations: tuple[float, ...],
    validate: Callable[[Scorer], float],
    max_items: int,
) -> tuple[Ease, dict[float, float]]:
    """Fit EASE for each regularisation, keep the one `validate` (a higher-is-better score) likes best.

    Returns:
        the chosen model and the validation score of every regularisation tried.
    """
    items, matrix = interactions(users, movies, num_users, num_movies, max_items)
    if len(items) < num_movies and len(items) == max_items:
        log.info("EASE: %d of %d movies (eval.ease_max_items); the others are not scored", len(items), num_movies)
    gram = torch.from_numpy((matrix.T @ matrix).toarray().astype(np.float32))
    best, scores = None, {}
    for regularisation in regularisations:
        model = Ease(items, ease_weights(gram, regularisation), matrix, num_movies, regularisation)
        scores[regularisation] = validate(model.scorer())
        if best is None or scores[regularisation] > scores[best.regularisation]:
            best = model
        else:
            del model
    assert best is not None
    return best, scores
