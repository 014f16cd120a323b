"""What the embedding tables learnt: genre similarities (heatmap, 2-D projection, nearest genres), nearest movies,
and, on synthetic data, how well the learnt genre similarity follows the planted one.

Tables come from an exported model (`mmdlrm export`), which holds them whole however they were sharded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from scipy.cluster.hierarchy import leaves_list, linkage  # noqa: E402
from scipy.spatial.distance import squareform  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402

from mmdlrm.data.synthetic import PlantedTruth  # noqa: E402
from mmdlrm.export import ExportedModel  # noqa: E402
from mmdlrm.model.tables import table_name  # noqa: E402

def table(model: ExportedModel, feature: str) -> torch.Tensor:
    """The whole embedding table of `feature` (rows = ids), wherever the model keeps it (DLRM or a tower)."""
    suffix = f".embedding_bags.{table_name(feature)}.weight"
    state = model.task.state_dict()
    return next(value for key, value in state.items() if key.endswith(suffix)).detach().float()


def cosine_similarity(vectors: torch.Tensor) -> np.ndarray:
    unit = torch.nn.functional.normalize(vectors, dim=1)
    return (unit @ unit.T).numpy()


@dataclass
class GenreReport:
    names: list[str]
    similarity: np.ndarray
    """G x G cosine similarity of the learnt genre vectors."""
    order: list[int]
    """Genres in hierarchical-clustering order (similar genres side by side)."""
    projection: np.ndarray
    """G x 2 principal-component coordinates."""
    planted_correlation: float | None = None
    """Spearman correlation of learnt and planted pairwise similarities (synthetic data only)."""

    def nearest(self, genre: str, k: int = 3) -> list[tuple[str, float]]:
        i = self.names.index(genre)
        order = [j for j in np.argsort(-self.similarity[i]) if j != i]
        return [(self.names[j], float(self.similarity[i, j])) for j in order[:k]]

    def table(self, k: int = 3) -> str:
        """Each genre's k nearest genres with their cosine similarity."""
        width = max(len(n) for n in self.names)
        rows = [f"{'genre':<{width}}  nearest genres (cosine)"]
        for name in self.names:
            rows.append(f"{name:<{width}}  " + ", ".join(f"{n} {s:.2f}" for n, s in self.nearest(name, k)))
        return "\n".join(rows)


def genre_report(model: ExportedModel, truth: PlantedTruth | None = None) -> GenreReport:
    """Similarities, clustered order and projection of the learnt genre vectors (and the planted comparison)."""
    vectors = table(model, "genre")[: len(model.genres)]
    similarity = cosine_similarity(vectors)
    distance = np.clip(1.0 - similarity, 0.0, None)
    np.fill_diagonal(distance, 0.0)
    order = leaves_list(linkage(squareform((distance + distance.T) / 2, checks=False), method="average")).tolist()
    centred = vectors - vectors.mean(0)
    _, _, v = torch.linalg.svd(centred, full_matrices=False)
    report = GenreReport(list(model.genres), similarity, order, (centred @ v[:2].T).numpy())
    if truth is not None:
        report.planted_correlation = planted_correlation(report, truth)
    return report


def planted_correlation(report: GenreReport, truth: PlantedTruth) -> float:
    """Spearman correlation over genre pairs of learnt vs planted similarity (genres matched by name)."""
    planted_names = [str(n) for n in truth.genre_names]
    shared = [n for n in report.names if n in planted_names]
    learnt_index = [report.names.index(n) for n in shared]
    planted_index = [planted_names.index(n) for n in shared]
    upper = np.triu_indices(len(shared), k=1)
    learnt = report.similarity[np.ix_(learnt_index, learnt_index)][upper]
    planted = truth.genre_similarity[np.ix_(planted_index, planted_index)][upper]
    return float(spearmanr(learnt, planted).statistic)


def nearest_movies(model: ExportedModel, movie_id: int, k: int = 10) -> list[tuple[int, str, float]]:
    """The k movies whose learnt vectors are nearest (cosine) to raw MovieLens `movie_id`'s."""
    index = _movie_index(model, movie_id)
    vectors = torch.nn.functional.normalize(table(model, "movie")[: len(model.movie_ids)], dim=1)  # no "unknown" row
    scores = vectors @ vectors[index]
    scores[index] = -2.0
    best = torch.topk(scores, min(k, len(scores) - 1))
    return [(int(model.movie_ids[i]), model.titles[i], float(s)) for s, i in zip(best.values, best.indices)]


def plot_genres(report: GenreReport, out_dir: str | Path) -> tuple[Path, Path]:
    """genre_similarity.png (clustered heatmap) and genre_projection.png (PCA with labels)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = [report.names[i] for i in report.order]
    ordered = report.similarity[np.ix_(report.order, report.order)]
    fig, ax = plt.subplots(figsize=(8, 7))
    image = ax.imshow(ordered, cmap="RdBu_r", vmin=-1, vmax=1)
    ax.set_xticks(range(len(names)), names, rotation=90)
    ax.set_yticks(range(len(names)), names)
    title = "Learnt genre similarity (cosine), clustered"
    if report.planted_correlation is not None:
        title += f"\nSpearman vs planted: {report.planted_correlation:.2f}"
    ax.set_title(title)
    fig.colorbar(image, ax=ax, shrink=0.8)
    fig.tight_layout()
    heatmap = out_dir / "genre_similarity.png"
    fig.savefig(heatmap, dpi=110)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(7, 6))
    ax.scatter(report.projection[:, 0], report.projection[:, 1], s=30)
    for (x, y), name in zip(report.projection, report.names):
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(4, 3), fontsize=9)
    ax.set_title("Genre embeddings, first two principal components")
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    fig.tight_layout()
    projection = out_dir / "genre_projection.png"
    fig.savefig(projection, dpi=110)
    plt.close(fig)
    return heatmap, projection


def _movie_index(model: ExportedModel, movie_id: int) -> int:
    matches = (model.movie_ids == movie_id).nonzero()
    if len(matches) == 0:
        raise KeyError(f"movie {movie_id} is not in this model's catalogue ({len(model.movie_ids)} movies)")
    return int(matches[0])
