"""Embedding tables: which sparse features a model reads, and one TorchRec `EmbeddingBagConfig` per table.

Every feature looks up one table; the user-history feature may share the movie table (`model.history_table`),
so that a movie's vector is the same whether it is the candidate or in a user's history.
"""

from __future__ import annotations

from dataclasses import dataclass

from torchrec.modules.embedding_configs import EmbeddingBagConfig, PoolingType

from mmdlrm.config import ModelConfig
from mmdlrm.schema import QUERY_FEATURES, SPARSE_FEATURES, num_year_buckets


@dataclass(frozen=True)
class Vocab:
    """Number of ids of each sparse feature (rows of its table).

    `extra` holds the optional per-user or per-movie categorical features a dataset carries (demographics, count
    buckets), as (feature, rows) pairs in key order.
    """

    users: int
    movies: int
    genres: int
    year_buckets: int
    extra: tuple[tuple[str, int], ...] = ()

    def sizes(self) -> dict[str, int]:
        """Base feature name -> table rows, in the order of the KeyedJaggedTensor keys."""
        return {"user": self.users, "movie": self.movies, "genre": self.genres, "year": self.year_buckets}


def vocab_of(cfg: ModelConfig, counts: dict) -> Vocab:
    """Table sizes of a model built from `cfg` on a prepared dataset with these `counts` (its manifest's)."""
    return Vocab(counts["users"], counts["movies"], counts["genres"], num_year_buckets(cfg.year_bucket_years),
                 tuple(cfg.extra_features(counts)))  # fmt: skip


@dataclass(frozen=True)
class SparseFeature:
    """One key of the KeyedJaggedTensor and the table it looks up."""

    name: str
    table: str
    rows: int
    multi_valued: bool
    """Several ids per row (genres, history): mean-pooled, so the vector does not grow with the count."""


def table_name(feature: str) -> str:
    """Name of the table behind `feature` when it has its own (as in sharding plans and state dicts)."""
    return f"t_{feature}"


def sparse_features(cfg: ModelConfig, vocab: Vocab) -> list[SparseFeature]:
    """The model's sparse features in key order: the base four, the user history if on, then `vocab.extra`."""
    sizes = vocab.sizes()
    base = [f for f in SPARSE_FEATURES if cfg.user_id or f != "user"]
    sizes["movie"] += 1 if cfg.movie_id_dropout else 0  # + the "unknown movie" row new movies look up
    out = [SparseFeature(f, table_name(f), max(sizes[f], 1), f == "genre") for f in base]
    if cfg.history_length:
        table = table_name("movie") if cfg.history_table == "shared" else table_name("history")
        out.append(SparseFeature("history", table, max(sizes["movie"], 1), True))
    out += [SparseFeature(name, table_name(name), max(rows, 1), False) for name, rows in vocab.extra]
    return out


def feature_names(cfg: ModelConfig, vocab: Vocab) -> list[str]:
    """The KeyedJaggedTensor keys a model built from `cfg` and `vocab` reads, in order."""
    return [f.name for f in sparse_features(cfg, vocab)]


def table_names(cfg: ModelConfig, vocab: Vocab) -> list[str]:
    """The distinct tables, in the order of their first feature."""
    return list(dict.fromkeys(f.table for f in sparse_features(cfg, vocab)))


def build_tables(cfg: ModelConfig, vocab: Vocab) -> list[EmbeddingBagConfig]:
    """One table per distinct `table`, all `cfg.embedding_dim` wide (DLRM's dot interaction needs one width).

    A table any of whose features is multi-valued pools by the mean; single-valued features pool a single row,
    so sum and mean agree for them.
    """
    return bag_configs(sparse_features(cfg, vocab), cfg.embedding_dim)


def tower_features(cfg: ModelConfig, vocab: Vocab) -> tuple[list[SparseFeature], list[SparseFeature]]:
    """The model's sparse features split into the query tower's and the candidate tower's, each in key order.

    The towers hold separate EmbeddingBagCollections, so the history feature always has a table of its own here
    (`t_history`), whatever `model.history_table` says.
    """
    query, candidate = [], []
    for feature in sparse_features(cfg, vocab):
        if feature.name == "history":
            feature = SparseFeature(feature.name, table_name("history"), feature.rows, True)
        (query if feature.name in QUERY_FEATURES else candidate).append(feature)
    return query, candidate


def bag_configs(features: list[SparseFeature], dim: int) -> list[EmbeddingBagConfig]:
    """One `dim`-wide table per distinct table of `features`; mean pooling where a feature is multi-valued."""
    tables: dict[str, list[SparseFeature]] = {}
    for feature in features:
        tables.setdefault(feature.table, []).append(feature)
    return [
        EmbeddingBagConfig(
            name=name,
            embedding_dim=dim,
            num_embeddings=features[0].rows,
            feature_names=[f.name for f in features],
            pooling=PoolingType.MEAN if any(f.multi_valued for f in features) else PoolingType.SUM,
        )
        for name, features in tables.items()
    ]
