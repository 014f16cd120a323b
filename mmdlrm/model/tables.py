"""Embedding table definitions: one TorchRec `EmbeddingBagConfig` per sparse feature."""

from __future__ import annotations

from dataclasses import dataclass

from torchrec.modules.embedding_configs import EmbeddingBagConfig, PoolingType

from mmdlrm.config import ModelConfig


@dataclass(frozen=True)
class Vocab:
    """Number of ids of each sparse feature (rows of its table)."""

    users: int
    movies: int
    genres: int
    year_buckets: int

    def sizes(self) -> dict[str, int]:
        """Feature name -> table rows, in the order of the KeyedJaggedTensor keys."""
        return {"user": self.users, "movie": self.movies, "genre": self.genres, "year": self.year_buckets}


def table_name(feature: str) -> str:
    """Name of the table behind `feature` (as it appears in sharding plans and state dicts)."""
    return f"t_{feature}"


def build_tables(cfg: ModelConfig, vocab: Vocab) -> list[EmbeddingBagConfig]:
    """One table per feature, all `cfg.embedding_dim` wide (DLRM's dot interaction needs one width).

    Genres are multi-valued and pooled by their mean, so a movie's genre vector does not grow with its genre
    count; single-valued features pool a single row either way.
    """
    return [
        EmbeddingBagConfig(
            name=table_name(feature),
            embedding_dim=cfg.embedding_dim,
            num_embeddings=max(rows, 1),
            feature_names=[feature],
            pooling=PoolingType.MEAN if feature == "genre" else PoolingType.SUM,
        )
        for feature, rows in vocab.sizes().items()
    ]
