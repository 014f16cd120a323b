"""Negative sampling: seeded, known positives redrawn, the popularity law, world-size independent batches."""

import numpy as np
import pytest
import torch

from mmdlrm.data.negatives import NegativeSampler, known_pairs


def test_same_seed_same_draws_other_seed_other_draws():
    sampler = NegativeSampler(np.ones(50), k=4)
    users = torch.arange(30)
    a = sampler.sample(users, torch.Generator().manual_seed(1))
    b = sampler.sample(users, torch.Generator().manual_seed(1))
    c = sampler.sample(users, torch.Generator().manual_seed(2))
    assert a.shape == (30, 4) and torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= 0 and a.max() < 50


def test_known_positives_are_redrawn():
    num_movies = 20
    rng = np.random.default_rng(0)
    users = np.repeat(np.arange(10), 15)  # each user has seen 15 of the 20 movies
    movies = np.concatenate([rng.choice(num_movies, 15, replace=False) for _ in range(10)])
    known = known_pairs(users, movies, num_movies)
    sampler = NegativeSampler(np.ones(num_movies), k=8, known=known, retries=30)
    drawn = sampler.sample(torch.arange(10).repeat_interleave(5), torch.Generator().manual_seed(0))
    seen = {(u, m) for u, m in zip(users.tolist(), movies.tolist())}
    owners = torch.arange(10).repeat_interleave(5).tolist()
    assert not any((u, m) in seen for u, row in zip(owners, drawn.tolist()) for m in row)
    assert sampler.collisions == 0
    # Without exclusion, three quarters of the draws would have been seen movies.
    plain = NegativeSampler(np.ones(num_movies), k=8).sample(torch.arange(10).repeat_interleave(5), torch.Generator().manual_seed(0))
    hits = sum((u, m) in seen for u, row in zip(owners, plain.tolist()) for m in row)
    assert hits > 0.5 * plain.numel()


def test_collisions_left_after_the_last_round_are_counted():
    known = known_pairs(np.zeros(3, np.int64), np.arange(3), 4)  # user 0 has seen 3 of 4 movies
    sampler = NegativeSampler(np.ones(4), k=50, known=known, retries=0)
    drawn = sampler.sample(torch.zeros(2, dtype=torch.long), torch.Generator().manual_seed(0))
    assert sampler.collisions == int((drawn < 3).sum()) > 0


def test_popularity_law_roughly_holds():
    counts = np.array([1, 4, 16, 64, 256, 0])
    alpha = 0.5
    sampler = NegativeSampler(counts, k=1000, distribution="popularity", alpha=alpha)
    drawn = sampler.sample(torch.arange(200), torch.Generator().manual_seed(0)).flatten()
    observed = torch.bincount(drawn, minlength=len(counts)).double() / drawn.numel()
    expected = counts**alpha / (counts**alpha).sum()
    np.testing.assert_allclose(observed.numpy(), expected, atol=0.005)
    assert observed[5] == 0  # never interacted with: never drawn as a popularity negative
    torch.testing.assert_close(sampler.probability, torch.from_numpy(expected))


def test_unknown_distribution_is_refused():
    with pytest.raises(ValueError, match="unknown negative distribution 'zipf'"):
        NegativeSampler(np.ones(3), k=1, distribution="zipf")
