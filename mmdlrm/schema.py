"""Names and ranges every layer shares: the rating range and the base sparse and dense features.

One home, imported by data (batches), model (tables), distributed (sharding constraints) and evaluation, so
that no layer has to import another only to learn a name.
"""

from __future__ import annotations

RATING_RANGE = (0.5, 5.0)
"""MovieLens stars: half-star steps from 0.5 to 5.0 (ml-100k / ml-1m use whole stars inside this range)."""

SPARSE_FEATURES = ("user", "movie", "genre", "year")
"""The sparse features every model has, in KeyedJaggedTensor key order; optional ones follow them."""

DENSE_FEATURES = ("user_log_count", "user_mean_dev", "movie_log_count", "movie_mean_dev", "year")
"""Dense features of a (user, movie) pair, in column order."""

HISTORY_FEATURE = "history"
"""The user's recent training movies: a multi-valued feature over movie ids (model.history_length)."""

EXTRA_FEATURES = ("user_activity", "movie_popularity", "age", "gender", "occupation", "zip")
"""Optional single-valued categorical features, in key order after the base ones: log-bucketed training counts
of the user and the movie, and the user demographics some releases carry (ml-100k u.user, ml-1m users.dat)."""

COUNT_FEATURES = ("user_activity", "movie_popularity")
"""floor(log2(1 + training ratings)) of the user and of the movie: COUNT_BUCKETS ids each."""
COUNT_BUCKETS = 32
DEMOGRAPHIC_FEATURES = ("age", "gender", "occupation", "zip")

QUERY_FEATURES = ("user", HISTORY_FEATURE, "user_activity", *DEMOGRAPHIC_FEATURES)
"""Features that describe the user: the two-tower model's query side (the others describe the movie)."""

TABLE_FEATURES = (*SPARSE_FEATURES, HISTORY_FEATURE, *EXTRA_FEATURES)
"""Every feature that can have a table of its own (the keys of sharding.tables)."""

FIRST_YEAR, LAST_YEAR = 1900, 2030
"""Release years inside [FIRST_YEAR, LAST_YEAR) get a bucket; others (or none) share bucket 0."""


def num_year_buckets(span: int) -> int:
    """Year buckets of `span` years from 1900 to 2030, plus bucket 0 for an unknown year."""
    return (LAST_YEAR - FIRST_YEAR) // span + 2
