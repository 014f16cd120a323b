"""The two-tower retrieval model: a query tower (the user) and a candidate tower (the movie) over TorchRec tables.

Each tower pools its sparse features through an `EmbeddingBagCollection` (sharded by DistributedModelParallel
like the DLRM's tables), concatenates the pooled vectors with its dense features (and, for movies, the projected
content vectors), and maps them through an MLP to a vector of `model.retrieval.dim` (unit length with
`model.retrieval.normalize`). A (user, movie) pair scores the dot product over the temperature, plus the movie's
learnt offset with `model.retrieval.movie_bias`. Both are folded into the vectors the towers give
(`encode_queries`: [query / temperature, 1]; `encode_candidates`: [movie, offset]), so a score is exactly the
inner product of the two: the movie vectors can be searched by inner product in a FAISS index, and the query
tower runs once per user.
"""

from __future__ import annotations

import torch
from torch import nn
from torchrec.modules.embedding_configs import EmbeddingBagConfig
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from mmdlrm.config import ModelConfig
from mmdlrm.model.content import MovieContent
from mmdlrm.model.tables import Vocab, bag_configs, tower_features

QUERY_DENSE = 2
"""Dense inputs of the query tower: the user's log rating count and shrunk mean deviation."""
CANDIDATE_DENSE = 3
"""Dense inputs of the candidate tower: the movie's log rating count, shrunk mean deviation, centred year."""


class Tower(nn.Module):
    """Sparse features (F tables of width D) and `dense_in` dense features -> B x `out` vectors.

    The EmbeddingBagCollection pools each feature to B x D; with the dense features (and `extra`, e.g. content
    vectors, B x E) that is B x (F * D + dense_in + E) into an MLP of `arch` hidden ReLU layers (none: a linear
    map) and a linear layer of `out` units.
    """

    def __init__(
        self,
        tables: list[EmbeddingBagConfig],
        dense_in: int,
        arch: list[int],
        out: int,
        device: torch.device | None = None,
        sparse_device: torch.device | None = None,
        extra_in: int = 0,
    ) -> None:
        super().__init__()
        self.ebc = EmbeddingBagCollection(tables=tables, device=sparse_device)
        self.keys = [name for t in tables for name in t.feature_names]
        width = sum(t.embedding_dim * len(t.feature_names) for t in tables) + dense_in + extra_in
        layers: list[nn.Module] = []
        for size in arch:
            layers += [nn.Linear(width, size, device=device), nn.ReLU()]
            width = size
        layers.append(nn.Linear(width, out, device=device))
        self.mlp = nn.Sequential(*layers)

    def forward(self, dense: torch.Tensor, sparse: KeyedJaggedTensor, extra: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The vectors (B x out) and the batch mean of the squared norms of the pooled embeddings (for the L2)."""
        by_key = self.ebc(sparse).to_dict()  # a sharded collection may return its keys in another order
        pooled = torch.cat([by_key[k] for k in self.keys], dim=1)
        squares = pooled.pow(2).sum(dim=1).mean().nan_to_num(0.0)  # 0 for an empty batch
        parts = [pooled, dense] if extra is None else [pooled, dense, extra]
        return self.mlp(torch.cat(parts, dim=1)), squares


class TwoTower(nn.Module):
    """Query and candidate towers; `score` gives the B x C logits of B queries against C candidates.

    Content vectors (posters, summaries, genome), where the run reads them, enter the candidate tower projected
    to `projection_dim` each (`MovieContent`), once per distinct movie.
    """

    def __init__(
        self,
        cfg: ModelConfig,
        vocab: Vocab,
        device: torch.device | None = None,
        sparse_device: torch.device | None = None,
        content_dims: dict[str, int] | None = None,
        projection_dim: int = 16,
        content_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        settings = cfg.retrieval
        query, candidate = tower_features(cfg, vocab)
        self.query_keys = [f.name for f in query]
        self.candidate_keys = [f.name for f in candidate]
        self.temperature, self.normalize, self.dim = settings.temperature, settings.normalize, settings.dim
        self.movie_bias = settings.movie_bias
        self.content = MovieContent(content_dims, vocab.movies, projection_dim, device, content_dropout) if content_dims else None
        self.query = Tower(bag_configs(query, cfg.embedding_dim), QUERY_DENSE, settings.tower_arch, settings.dim, device, sparse_device)
        self.candidate = Tower(bag_configs(candidate, cfg.embedding_dim), CANDIDATE_DENSE, settings.tower_arch,
                               settings.dim + int(self.movie_bias), device, sparse_device,
                               self.content.out_features if self.content else 0)  # fmt: skip

    @property
    def vector_dim(self) -> int:
        """Width of the vectors `encode_*` give (and the index holds): `dim`, plus one for the movie offset."""
        return self.dim + int(self.movie_bias)

    def encode_queries(self, dense: torch.Tensor, sparse: KeyedJaggedTensor) -> tuple[torch.Tensor, torch.Tensor]:
        """B users' vectors ([tower output / temperature, 1 if movie_bias]) and their pooled embeddings' mean
        squared norm."""
        vectors, squares = self.query(dense, sparse)
        if self.normalize:
            vectors = nn.functional.normalize(vectors, dim=1)
        vectors = vectors / self.temperature
        if self.movie_bias:
            vectors = torch.cat([vectors, torch.ones_like(vectors[:, :1])], dim=1)
        return vectors, squares

    def encode_candidates(self, dense: torch.Tensor, sparse: KeyedJaggedTensor, movies: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """C movies' vectors ([tower output, offset if movie_bias]; `movies`: their ids, for the content vectors)
        and their pooled embeddings' mean squared norm."""
        extra = self.content(movies) if self.content is not None else None
        vectors, squares = self.candidate(dense, sparse, extra)
        if self.normalize:
            direction = nn.functional.normalize(vectors[:, : self.dim], dim=1)
            vectors = torch.cat([direction, vectors[:, self.dim :]], dim=1) if self.movie_bias else direction
        return vectors, squares

    def score(self, queries: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """B x C logits: the inner products of the encoded vectors."""
        return queries @ candidates.T

    def directions(self, candidates: torch.Tensor) -> torch.Tensor:
        """Movies' unit directions (their encoded vectors without the offset), for movie-to-movie cosine."""
        return nn.functional.normalize(candidates[:, : self.dim], dim=1)
