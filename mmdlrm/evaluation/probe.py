"""How much a movie's content vectors say about its ratings, apart from any recommender: a content-only probe.

For a new movie the model knows no ratings, so what its content can add is the movie's offset: how much better or
worse it is rated than its users rate on average. The probe fits that offset on the training movies by weighted
ridge regression on each feature set (genres and year, poster vectors, text vectors, and their unions), on top of
the global mean and the users' biases, and predicts held-out movies' ratings as

    mu + b_user + x_movie . w

The fit is exactly least squares over the training ratings (a movie's mean residual weighted by its number of
ratings), the ridge penalty is chosen on validation RMSE, and test RMSE is read once. Two reference rows bound it:
the user biases alone (the bias baseline on a new movie) and an oracle that knows each held-out movie's true mean
offset (the most any movie-level feature could give).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mmdlrm.config import RunConfig
from mmdlrm.data.prepare import Prepared, ensure_prepared, load_prepared
from mmdlrm.evaluation.baselines import REGULARISATION_GRID, fit_bias
from mmdlrm.features.vectors import content_stores, load_content
from mmdlrm.schema import RATING_RANGE

PENALTIES = tuple(10.0**p for p in np.arange(0.0, 7.5, 0.5))
"""Ridge penalties tried (features are standardised; the data term is a sum over ~10^5 training ratings)."""
FEATURE_SETS = {
    "genres + year": ("genres",),
    "poster": ("image",),
    "text": ("text",),
    "genres + year + poster": ("genres", "image"),
    "genres + year + text": ("genres", "text"),
    "genres + year + poster + text": ("genres", "image", "text"),
}


@dataclass
class ProbeRow:
    """One feature set's fit: the chosen penalty and RMSE on the held-out movies' ratings."""

    features: str
    dim: int
    penalty: float | None
    val_rmse: float
    test_rmse: float
    test_rmse_with_poster: float | None
    """On the test ratings of held-out movies that have a poster (where the poster can say anything)."""


def run_probe(cfg: RunConfig, progress: bool = False) -> dict:
    """Fit and score every feature set on `cfg`'s data and split; returns the rows and what they were made from.

    The feature store is made first if needed (posters and summaries as `cfg.features` names them; both modalities,
    whatever `features.modalities` says).
    """
    prepared = ensure_prepared(cfg.data)
    data = load_prepared(prepared)
    release = Path(data.manifest["source"]["folder"])
    movie_ids = data.movies["movie_id"]
    features = dataclasses.replace(cfg.features, modalities="both", genome=False)
    stores = content_stores(features, cfg.data, release, movie_ids, make=True, device=torch.device("cpu"), progress=progress)
    content = load_content(stores, movie_ids)
    blocks = {"genres": _genres_and_year(data)}
    for modality, vectors in content.items():
        blocks[modality] = np.hstack([vectors.vectors.float().numpy(), vectors.missing.numpy()[:, None].astype(np.float32)])
    has_poster = ~content["image"].missing.numpy()
    rows = probe(data, blocks, has_poster)
    return {
        "config": cfg.name, "split": cfg.data.split, "seed": cfg.data.seed, "prepared": str(prepared),
        "encoders": {m: v.model for m, v in content.items()}, "stores": stores,
        "movies_with_poster": int(has_poster.sum()), "rows": [r.__dict__ for r in rows],
    }  # fmt: skip


def probe(data: Prepared, blocks: dict[str, np.ndarray], has_poster: np.ndarray) -> list[ProbeRow]:
    """The reference rows and one ridge fit per feature set of `FEATURE_SETS` whose blocks are all given.

    Args:
        blocks: name -> num_movies x d features ("genres", "image", "text").
        has_poster: num_movies bool.
    """
    splits = {s: {c: np.asarray(data.splits[s][c]) for c in ("user", "movie", "rating")} for s in ("train", "val", "test")}
    bias = _user_biases(splits, data.num_users, data.num_movies)
    residual = {s: cols["rating"] - bias.mu - bias.user_bias[cols["user"]] for s, cols in splits.items()}
    count = np.bincount(splits["train"]["movie"], minlength=data.num_movies).astype(np.float64)
    offset = _mean_by_movie(splits["train"]["movie"], residual["train"], data.num_movies)
    # The oracle: each held-out movie's own mean offset, read from its held-out ratings (val and test movies differ).
    truth = sum(_mean_by_movie(splits[s]["movie"], residual[s], data.num_movies) for s in ("val", "test"))
    held_out = {"val": splits["val"], "test": splits["test"]}
    with_poster = {c: v[has_poster[splits["test"]["movie"]]] for c, v in splits["test"].items()}

    def score(name: str, dim: int, penalty: float | None, movie_offset: np.ndarray) -> ProbeRow:
        rmse = lambda cols: _rmse(bias.mu + bias.user_bias[cols["user"]] + movie_offset[cols["movie"]], cols["rating"])  # noqa: E731
        return ProbeRow(name, dim, penalty, rmse(held_out["val"]), rmse(held_out["test"]),
                        rmse(with_poster) if len(with_poster["rating"]) else None)  # fmt: skip

    rows = [score("user biases alone (no movie offset)", 0, None, np.zeros(data.num_movies))]
    for name, parts in FEATURE_SETS.items():
        if all(p in blocks for p in parts):
            x = np.hstack([blocks[p] for p in parts]).astype(np.float64)
            fits = [score(name, x.shape[1], penalty, fitted) for penalty, fitted in _ridge_path(x, offset, count)]
            rows.append(min(fits, key=lambda r: r.val_rmse))
    rows.append(score("oracle: each held-out movie's true mean offset", 0, None, truth))
    return rows


def _mean_by_movie(movies: np.ndarray, values: np.ndarray, num_movies: int) -> np.ndarray:
    """Each movie's mean of `values` over its rows (0 for a movie without rows)."""
    return np.bincount(movies, values, num_movies) / np.maximum(np.bincount(movies, minlength=num_movies), 1)


def _user_biases(splits: dict, num_users: int, num_movies: int):
    """The bias baseline's fit (mu, user and movie biases; regularisation chosen on validation), as baselines.py."""
    train, val = splits["train"], splits["val"]
    args = (train["user"], train["movie"], train["rating"], num_users, num_movies)
    fits = [fit_bias(*args, regularisation=reg) for reg in REGULARISATION_GRID]
    return min(fits, key=lambda m: _rmse(m.predict(val["user"], val["movie"]), val["rating"]))


def _ridge_path(x: np.ndarray, offset: np.ndarray, count: np.ndarray):
    """(penalty, predicted offset of every movie) for each of PENALTIES: weighted ridge on the trained movies.

    Minimises sum_m count_m (offset_m - b - x_m . w)^2 + penalty |w|^2 over the movies with training ratings, with
    x standardised on them (weighted by count) and the intercept b unpenalised; one eigendecomposition serves every
    penalty.
    """
    trained = count > 0
    weights = count[trained]
    mean = np.average(x[trained], axis=0, weights=weights)
    scale = np.sqrt(np.average((x[trained] - mean) ** 2, axis=0, weights=weights))
    constant = scale <= 1e-12
    z = (x - mean) / np.where(constant, 1.0, scale)
    z[:, constant] = 0.0
    zt, y = z[trained], offset[trained]
    intercept = np.average(y, weights=weights)  # z is centred under these weights: the intercept separates
    eigenvalues, vectors = np.linalg.eigh((zt * weights[:, None]).T @ zt)
    projected = vectors.T @ (zt.T @ (weights * (y - intercept)))
    for penalty in PENALTIES:
        yield penalty, intercept + z @ (vectors @ (projected / (eigenvalues + penalty)))


def _genres_and_year(data: Prepared) -> np.ndarray:
    """Multi-hot genres, the year and a year-unknown flag: what any new movie has."""
    movies = data.movies
    offsets, values = movies["genre_offsets"], movies["genre_values"]
    genres = np.zeros((data.num_movies, len(data.genres)), np.float32)
    rows = np.repeat(np.arange(data.num_movies), np.diff(offsets))
    genres[rows, values] = 1.0
    year = movies["year"].astype(np.float32)
    known = year > 0
    filled = np.where(known, year, year[known].mean() if known.any() else 0.0)
    return np.hstack([genres, filled[:, None], (~known)[:, None].astype(np.float32)])


def _rmse(predicted: np.ndarray, ratings: np.ndarray) -> float:
    return float(np.sqrt(np.mean((np.clip(predicted, *RATING_RANGE) - ratings) ** 2)))


def table(result: dict) -> str:
    """The probe's rows as a Markdown table."""
    lines = [
        f"content-only probe, {result['config']} ({result['split']} split, seed {result['seed']}; "
        f"{result['movies_with_poster']:,} movies with a poster)",
        "| features | dim | ridge penalty | val RMSE | test RMSE | test RMSE, held-out movies with a poster |",
        "|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        penalty = "" if r["penalty"] is None else f"{r['penalty']:.0e}"
        poster = "" if r["test_rmse_with_poster"] is None else f"{r['test_rmse_with_poster']:.4f}"
        lines.append(f"| {r['features']} | {r['dim']} | {penalty} | {r['val_rmse']:.4f} | {r['test_rmse']:.4f} | {poster} |")
    return "\n".join(lines)


def write_probe(result: dict, out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    return out
