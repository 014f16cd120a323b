"""Movie content (CLIP / text-encoder vectors of posters and summaries) as dense inputs to the DLRM."""

from __future__ import annotations

import torch
from torch import nn


class MovieContent(nn.Module):
    """Projects each modality's vector of a movie to `projection_dim` dense inputs.

    The vectors of every movie sit in non-trainable buffers (num_movies x dim, float16, not saved in checkpoints:
    they come from the feature store) and are gathered by movie id. Projection depends on the movie only, so it
    runs once per distinct movie in a batch and is then spread to the rows. A movie whose poster or summary is
    missing gets a learnt stand-in vector for that modality instead of a projection of zeros.

    Args:
        dims: modality -> vector size, e.g. {"text": 384, "image": 512}.
        num_movies: rows of each vector table.
    """

    def __init__(
        self, dims: dict[str, int], num_movies: int, projection_dim: int, device: torch.device | None = None, dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.modalities = sorted(dims)
        for m in self.modalities:
            self.register_buffer(f"{m}_vectors", torch.zeros(num_movies, dims[m], dtype=torch.float16, device=device), persistent=False)
            self.register_buffer(f"{m}_missing", torch.ones(num_movies, dtype=torch.bool, device=device), persistent=False)
        self.projections = nn.ModuleDict({m: nn.Linear(dims[m], projection_dim, device=device) for m in self.modalities})
        self.stand_ins = nn.ParameterDict({m: nn.Parameter(torch.zeros(projection_dim, device=device)) for m in self.modalities})
        self.dropout = nn.Dropout(dropout)
        self.out_features = projection_dim * len(self.modalities)

    def set_vectors(self, modality: str, vectors: torch.Tensor, missing: torch.Tensor) -> None:
        """Fill a modality's table (num_movies x dim) and its missing flags."""
        getattr(self, f"{modality}_vectors").copy_(vectors)
        getattr(self, f"{modality}_missing").copy_(missing)

    def forward(self, movies: torch.Tensor) -> torch.Tensor:
        """B movie ids -> B x out_features."""
        distinct, rows = torch.unique(movies, return_inverse=True)
        parts = []
        for m in self.modalities:
            projected = self.projections[m](self.dropout(getattr(self, f"{m}_vectors")[distinct].float()))
            missing = getattr(self, f"{m}_missing")[distinct].unsqueeze(1)
            parts.append(torch.where(missing, self.stand_ins[m].expand_as(projected), projected))
        return torch.cat(parts, dim=1)[rows]
