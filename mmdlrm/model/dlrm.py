"""The recommender: TorchRec's DLRM (dot interaction) over the embedding tables and the dense features."""

from __future__ import annotations

import torch
from torch import nn
from torchrec.models.dlrm import DLRM, InteractionArch, OverArch
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from mmdlrm.config import ModelConfig
from mmdlrm.model.content import MovieContent
from mmdlrm.model.tables import Vocab, build_tables


class MovieDLRM(nn.Module):
    """DLRM with F sparse features of width D and `dense_in` dense features, giving one logit per rating.

    The dense arch maps B x dense_in to B x D; the interaction arch takes pairwise dot products of the F + 1
    vectors, giving B x (D + F + F choose 2) for the over arch, whose last layer has one unit: output size B.
    Content vectors (posters, summaries, genome) enter either with the dense features (`fusion="dense"`), or as M
    more D-wide vectors in the dot-product interaction (`fusion="interaction"`: F + M vectors), where they meet
    the user and history embeddings directly.
    """

    def __init__(
        self,
        cfg: ModelConfig,
        vocab: Vocab,
        dense_in: int,
        device: torch.device | None = None,
        sparse_device: torch.device | None = None,
        content_dims: dict[str, int] | None = None,
        projection_dim: int = 16,
        fusion: str = "dense",
        content_dropout: float = 0.0,
    ) -> None:
        """Tables are allocated on `sparse_device` (meta: left to DistributedModelParallel), the rest on `device`.

        With `content_dims` (modality -> vector size), each movie's content vectors, projected, join the dense
        features before the dense arch; `content_dropout` drops their components in training (`MovieContent`).
        """
        super().__init__()
        ebc = EmbeddingBagCollection(tables=build_tables(cfg, vocab), device=sparse_device)
        self.fused = bool(content_dims) and fusion == "interaction"
        width = cfg.embedding_dim if self.fused else projection_dim
        self.content = MovieContent(content_dims, vocab.movies, width, device, content_dropout) if content_dims else None
        self.dlrm = DLRM(
            embedding_bag_collection=ebc,
            dense_in_features=dense_in + (self.content.out_features if self.content and not self.fused else 0),
            dense_arch_layer_sizes=[*cfg.dense_arch, cfg.embedding_dim],
            over_arch_layer_sizes=[*cfg.over_arch, 1],
            dense_device=device,
        )
        if self.fused:  # M more vectors in the interaction: a wider interaction and over arch
            vectors = len(self.dlrm.sparse_arch.sparse_feature_names) + len(self.content.modalities)
            self.dlrm.inter_arch = InteractionArch(num_sparse_features=vectors)
            width_in = cfg.embedding_dim + vectors + vectors * (vectors - 1) // 2
            self.dlrm.over_arch = OverArch(in_features=width_in, layer_sizes=[*cfg.over_arch, 1], device=device)
        if cfg.dropout:  # after each hidden layer of the over arch; the output layer stays last
            hidden, output = self.dlrm.over_arch.model
            layers = [m for layer in hidden._mlp for m in (layer, nn.Dropout(cfg.dropout))]
            self.dlrm.over_arch.model = nn.Sequential(*layers, output)

    @property
    def output_layer(self) -> nn.Linear:
        """The over arch's last (single-unit) layer."""
        return self.dlrm.over_arch.model[-1]

    def forward(
        self, dense_features: torch.Tensor, sparse_features: KeyedJaggedTensor, movies: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Logits of size B; `movies` (B movie ids) is needed when the model reads content vectors."""
        return self.score(dense_features, sparse_features, movies)[0]

    def score(
        self, dense_features: torch.Tensor, sparse_features: KeyedJaggedTensor, movies: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits of size B, and the batch mean of the squared norms of the looked-up (pooled) embeddings.

        The second is the embedding L2 penalty's base: its gradient reaches only the rows the batch looked up.
        The steps are TorchRec's DLRM.forward, spelt out to keep the pooled embeddings.
        """
        if self.content is not None and not self.fused:
            dense_features = torch.cat([dense_features, self.content(movies)], dim=1)
        embedded_dense = self.dlrm.dense_arch(dense_features)
        embedded_sparse = self.dlrm.sparse_arch(sparse_features)  # B x F x D
        squares = embedded_sparse.pow(2).sum(dim=(1, 2)).mean().nan_to_num(0.0)  # 0 for an empty batch; no len(): fx-traceable
        if self.fused:
            content = self.content(movies).unflatten(1, (len(self.content.modalities), -1))  # B x M x D
            embedded_sparse = torch.cat([embedded_sparse, content], dim=1)
        interactions = self.dlrm.inter_arch(dense_features=embedded_dense, sparse_features=embedded_sparse)
        logits = self.dlrm.over_arch(interactions).squeeze(-1)
        return logits, squares
