"""What a user would otherwise write, measured beside mmdlrm in the same run.

(a) The reference notebook's approach: a pandas DataFrame of ratings, a `Dataset` returning one row at a time
    (`df.iloc[i]`), PyTorch's default `DataLoader` collation, and `nn.Embedding` tables + an MLP.
(b) The same DLRM as mmdlrm's in plain PyTorch, with the same features: one `nn.EmbeddingBag(sparse=True)` per
    table mmdlrm builds (`model.tables.sparse_features`: the user history, where the config has one, mean-pooled
    through the movie table or a table of its own, genres mean-pooled), fed by our batches, SparseAdam for the
    tables and (fused) Adam for the rest, as mmdlrm's dense optimiser, TorchRec's dense / interaction / over arches,
    the rating task's output (0.5 + 4.5 * sigmoid) and MSE loss.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchrec.models.dlrm import DenseArch, InteractionArch, OverArch

from mmdlrm.model.tables import SparseFeature
from mmdlrm.schema import DENSE_FEATURES, RATING_RANGE


class PlainDLRM(nn.Module):
    """(b): mmdlrm's DLRM with sparse-gradient `nn.EmbeddingBag`s instead of TorchRec tables, same features.

    `features` are mmdlrm's (`sparse_features(cfg.model, vocab)`): a feature reads the bag of its table, so the
    history shares the movie table's weights where mmdlrm's does. Every bag mean-pools (for one id per row, mean
    and sum agree; an empty history pools to zeros, as TorchRec's does).
    """

    def __init__(self, features: list[SparseFeature], dim: int, dense_arch: list[int], over_arch: list[int]) -> None:
        super().__init__()
        rows = {f.table: f.rows for f in features}
        self.tables = nn.ModuleDict({table: nn.EmbeddingBag(n, dim, mode="mean", sparse=True) for table, n in rows.items()})
        # Grouped by table in first-use order, as TorchRec's EmbeddingBagCollection orders its pooled outputs.
        self.features = [(f.name, f.table) for table in rows for f in features if f.table == table]
        self.dense_arch = DenseArch(len(DENSE_FEATURES), [*dense_arch, dim])
        self.interaction = InteractionArch(num_sparse_features=len(features))
        f = len(features)
        self.over_arch = OverArch(dim + f * (f + 1) // 2, [*over_arch, 1])  # D + F + (F choose 2)

    def forward(self, dense: torch.Tensor, sparse) -> torch.Tensor:
        jagged = sparse.to_dict()
        pooled = [self.tables[table](jagged[name].values(), jagged[name].offsets()[:-1]) for name, table in self.features]
        return self.over_arch(self.interaction(self.dense_arch(dense), torch.stack(pooled, dim=1))).squeeze(-1)

    def optimizers(self, sparse_lr: float, dense_lr: float) -> list[torch.optim.Optimizer]:
        dense = [p for n, p in self.named_parameters() if not n.startswith("tables.")]
        return [torch.optim.SparseAdam(list(self.tables.parameters()), lr=sparse_lr), torch.optim.Adam(dense, lr=dense_lr, fused=True)]


def plain_step(model: PlainDLRM, optimizers: list[torch.optim.Optimizer], batch) -> None:
    lo, hi = RATING_RANGE  # the rating task's output, as mmdlrm's
    stars = lo + (hi - lo) * torch.sigmoid(model(batch.dense_features, batch.sparse_features))
    loss = nn.functional.mse_loss(stars, batch.labels)
    for optimizer in optimizers:
        optimizer.zero_grad()
    loss.backward()
    for optimizer in optimizers:
        optimizer.step()


class NotebookDataset(Dataset):
    """(a): one rating per item, read from a pandas DataFrame with `iloc`, as the reference notebook does."""

    def __init__(self, frame) -> None:
        self.frame = frame

    def __len__(self) -> int:
        return len(self.frame)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        row = self.frame.iloc[i]
        return {
            "user": torch.tensor(row["user"], dtype=torch.long),
            "movie": torch.tensor(row["movie"], dtype=torch.long),
            "genre": torch.tensor(row["genre"], dtype=torch.long),
            "rating": torch.tensor(row["rating"], dtype=torch.float32),
        }


class NotebookModel(nn.Module):
    """(a): `nn.Embedding` for user, movie and first genre, concatenated into an MLP."""

    def __init__(self, users: int, movies: int, genres: int, dim: int, hidden: list[int]) -> None:
        super().__init__()
        self.user, self.movie, self.genre = nn.Embedding(users, dim), nn.Embedding(movies, dim), nn.Embedding(genres, dim)
        layers, width = [], 3 * dim
        for size in hidden:
            layers += [nn.Linear(width, size), nn.ReLU()]
            width = size
        self.mlp = nn.Sequential(*layers, nn.Linear(width, 1))

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        x = torch.cat([self.user(batch["user"]), self.movie(batch["movie"]), self.genre(batch["genre"])], dim=1)
        return self.mlp(x).squeeze(-1)


def notebook_loader(data, rows: int, batch_size: int, seed: int = 0) -> DataLoader:
    """(a)'s DataLoader over `rows` training ratings (a pandas frame with each movie's first genre)."""
    import pandas as pd

    train = data.splits["train"]
    pick = np.random.default_rng(seed).choice(len(train["rating"]), rows, replace=False)
    offsets, values = data.movies["genre_offsets"], data.movies["genre_values"]
    first_genre = np.where(offsets[1:] > offsets[:-1], values[np.minimum(offsets[:-1], len(values) - 1)], 0)
    frame = pd.DataFrame({"user": train["user"][pick], "movie": train["movie"][pick],
                          "genre": first_genre[train["movie"][pick]], "rating": train["rating"][pick]})  # fmt: skip
    return DataLoader(NotebookDataset(frame), batch_size=batch_size, shuffle=True)


def notebook_step(model: NotebookModel, optimizer: torch.optim.Optimizer, batch: dict[str, torch.Tensor]) -> None:
    loss = nn.functional.mse_loss(model(batch), batch["rating"])
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
