"""Turning a MovieLens release into the Parquet dataset the model reads: id maps, genres, splits, manifest.

A prepared folder holds `train/val/test.parquet` (user, movie, rating, timestamp with contiguous ids),
`users.parquet` and `movies.parquet` (original ids, titles, years, genre ids, and train-split sums and counts for
the dense features), and `manifest.json` (counts, split, seed, source checksums). Preparing the same release with
the same settings twice gives byte-identical files. Everything is computed on whole columns; no per-row Python.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mmdlrm.config import SYNTHETIC, DataConfig
from mmdlrm.data.movielens import Release, parse_years, read_release
from mmdlrm.data.synthetic import generate
from mmdlrm.data.tables import DataError

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
SPLITS = ("train", "val", "test")


@dataclass
class Prepared:
    """A prepared dataset in memory, as numpy columns. Ids are contiguous indices into `users` / `movies`."""

    folder: Path
    manifest: dict
    splits: dict[str, dict[str, np.ndarray]]
    """split -> {"user": int32, "movie": int32, "rating": float32, "timestamp": int64}."""
    users: dict[str, np.ndarray]
    """user_id, train_count, train_sum."""
    movies: dict[str, np.ndarray]
    """movie_id, year, train_count, train_sum, genre_offsets (num_movies + 1), genre_values."""
    titles: list[str]
    genres: list[str]

    @property
    def num_users(self) -> int:
        return len(self.users["user_id"])

    @property
    def num_movies(self) -> int:
        return len(self.movies["movie_id"])

    @property
    def mean_rating(self) -> float:
        """Mean training rating (the global-mean baseline)."""
        return float(self.manifest["train_mean_rating"])


def prepare(release: Release, out_dir: str | Path, split: str, val_fraction: float, test_fraction: float, seed: int) -> Path:
    """Write the prepared dataset for `release` into `out_dir` (atomically: a tmp folder renamed at the end)."""
    out = Path(out_dir)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    ratings = release.ratings
    user_ids = np.unique(ratings["user_id"].to_numpy())
    movie_ids = release.movies["movie_id"].to_numpy()
    order = np.argsort(movie_ids, kind="stable")
    if np.any(np.diff(movie_ids[order]) == 0):
        dup = movie_ids[order][np.flatnonzero(np.diff(movie_ids[order]) == 0)[0]]
        raise DataError(f"{release.files[1]}: movie id {dup} appears twice; each movie must be listed once")
    movies = release.movies.take(order)
    movie_ids = movie_ids[order]
    users = np.searchsorted(user_ids, ratings["user_id"].to_numpy()).astype(np.int32)
    items = np.searchsorted(movie_ids, ratings["movie_id"].to_numpy()).astype(np.int32)
    rating = ratings["rating"].to_numpy().astype(np.float32)
    timestamp = ratings["timestamp"].to_numpy()
    assignment = split_rows(users, timestamp, items, split, val_fraction, test_fraction, seed)

    counts: dict[str, int] = {}
    for index, name in enumerate(SPLITS):
        rows = np.flatnonzero(assignment == index)
        counts[name] = int(rows.size)
        table = pa.table(
            {"user": users[rows], "movie": items[rows], "rating": rating[rows], "timestamp": timestamp[rows]}
        )
        pq.write_table(table, tmp / f"{name}.parquet", compression="zstd")
    train = assignment == 0
    if not train.any():
        raise DataError(f"{release.folder}: no ratings left for training; lower data.val_fraction/test_fraction")
    genre_names = sorted(set(pc.list_flatten(movies["genres"]).to_pylist()))
    _write_users(tmp / "users.parquet", user_ids, users[train], rating[train])
    _write_movies(tmp / "movies.parquet", movies, genre_names, items[train], rating[train])
    manifest = {
        "format_version": FORMAT_VERSION,
        "source": {
            "folder": str(release.folder),
            "kind": release.kind,
            "files": {f.name: {"sha256": _sha256(f), "bytes": f.stat().st_size} for f in release.files},
            "bad_rows_skipped": release.bad_rows.counts,
        },
        "split": {"kind": split, "val_fraction": val_fraction, "test_fraction": test_fraction, "seed": seed},
        "counts": {"users": len(user_ids), "movies": len(movie_ids), "genres": len(genre_names), "ratings": len(rating), **counts},
        "train_mean_rating": float(rating[train].astype(np.float64).mean()),
        "genres": genre_names,
    }
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    log.info("prepared %s -> %s (%s)", release.folder, out, ", ".join(f"{k} {v:,}" for k, v in manifest["counts"].items()))
    return out


def split_rows(
    users: np.ndarray, timestamp: np.ndarray, movies: np.ndarray, split: str, val_fraction: float,
    test_fraction: float, seed: int,
) -> np.ndarray:  # fmt: skip
    """Assign each rating to 0 = train, 1 = val, 2 = test.

    `random`: a seeded permutation; `temporal`: for each user, the latest `test_fraction` of their ratings go to
    test and the `val_fraction` before those to val (ties in time broken by movie, so the result is stable).
    """
    n = len(users)
    out = np.zeros(n, dtype=np.int8)
    if split == "random":
        perm = np.random.default_rng(seed).permutation(n)
        n_test, n_val = int(round(n * test_fraction)), int(round(n * val_fraction))
        out[perm[:n_test]] = 2
        out[perm[n_test : n_test + n_val]] = 1
        return out
    if split != "temporal":
        raise ValueError(f"unknown split {split!r}; use random or temporal")
    order = np.lexsort((movies, timestamp, users))
    sorted_users = users[order]
    per_user = np.bincount(users)
    start = np.r_[0, np.cumsum(per_user)[:-1]]
    rank = np.arange(n) - start[sorted_users]
    size = per_user[sorted_users]
    n_test = np.floor(size * test_fraction).astype(np.int64)
    n_val = np.floor(size * val_fraction).astype(np.int64)
    out[order[rank >= size - n_test]] = 2
    out[order[(rank >= size - n_test - n_val) & (rank < size - n_test)]] = 1
    return out


def _write_users(path: Path, user_ids: np.ndarray, users: np.ndarray, rating: np.ndarray) -> None:
    n = len(user_ids)
    table = pa.table(
        {
            "user_id": user_ids,
            "train_count": np.bincount(users, minlength=n).astype(np.int32),
            "train_sum": np.bincount(users, weights=rating, minlength=n).astype(np.float32),
        }
    )
    pq.write_table(table, path, compression="zstd")


def _write_movies(path: Path, movies: pa.Table, genre_names: list[str], items: np.ndarray, rating: np.ndarray) -> None:
    n = movies.num_rows
    lists = movies["genres"].combine_chunks()
    genre_ids = pc.index_in(lists.flatten(), value_set=pa.array(genre_names, pa.string())).cast(pa.int32())
    offsets = np.r_[0, pc.list_value_length(lists).to_numpy().cumsum()].astype(np.int32)
    genre_lists = pa.ListArray.from_arrays(pa.array(offsets), genre_ids)
    table = pa.table(
        {
            "movie_id": movies["movie_id"],
            "title": movies["title"],
            "year": parse_years(movies["title"]),
            "genres": genre_lists,
            "train_count": np.bincount(items, minlength=n).astype(np.int32),
            "train_sum": np.bincount(items, weights=rating, minlength=n).astype(np.float32),
        }
    )
    pq.write_table(table, path, compression="zstd")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def load_prepared(folder: str | Path) -> Prepared:
    """Load a prepared dataset into numpy columns.

    Raises:
        DataError: the folder is missing, incomplete, or from another format version.
    """
    folder = Path(folder)
    manifest_path = folder / "manifest.json"
    if not manifest_path.is_file():
        raise DataError(f"{folder}: no manifest.json; run `mmdlrm prepare <release> --out {folder}` first")
    manifest = json.loads(manifest_path.read_text())
    if manifest.get("format_version") != FORMAT_VERSION:
        raise DataError(f"{folder}: prepared with format {manifest.get('format_version')}, need {FORMAT_VERSION}; prepare it again")
    for name in (*SPLITS, "users", "movies"):
        if not (folder / f"{name}.parquet").is_file():
            raise DataError(f"{folder}: {name}.parquet is missing; prepare the dataset again")
    splits = {name: _numpy_columns(pq.read_table(folder / f"{name}.parquet")) for name in SPLITS}
    users = _numpy_columns(pq.read_table(folder / "users.parquet"))
    movie_table = pq.read_table(folder / "movies.parquet")
    genres = movie_table["genres"].combine_chunks()
    movies = _numpy_columns(movie_table.drop_columns(["title", "genres"]))
    movies["genre_offsets"] = genres.offsets.to_numpy().astype(np.int64) - int(genres.offsets[0].as_py())
    movies["genre_values"] = genres.flatten().to_numpy().astype(np.int64)
    return Prepared(folder, manifest, splits, users, movies, movie_table["title"].to_pylist(), manifest["genres"])


def _numpy_columns(table: pa.Table) -> dict[str, np.ndarray]:
    return {name: table[name].to_numpy() for name in table.column_names}


def ensure_prepared(cfg: DataConfig) -> Path:
    """The prepared folder for `cfg`, generating the synthetic release and preparing it first if needed.

    Results are cached under `cfg.cache_dir`, keyed by the settings that change them, and reused when the
    source files still have the sizes recorded in the manifest.
    """
    cache = Path(cfg.cache_dir)
    if cfg.source == SYNTHETIC:
        key = _settings_key(cfg.synthetic.__dict__)
        source = cache / f"synthetic-{key}"
        if not (source / "truth.npz").is_file():
            generate(cfg.synthetic, source)
    else:
        source = Path(cfg.source)
    settings = {"source": str(source.resolve()), "split": cfg.split, "val": cfg.val_fraction, "test": cfg.test_fraction,
                "seed": cfg.seed, "on_bad_rows": cfg.on_bad_rows, "format": FORMAT_VERSION}  # fmt: skip
    out = cache / "prepared" / f"{source.name}-{_settings_key(settings)}"
    if _is_current(out, source):
        log.info("using prepared dataset %s", out)
        return out
    release = read_release(source, cfg.on_bad_rows)
    return prepare(release, out, cfg.split, cfg.val_fraction, cfg.test_fraction, cfg.seed)


def _is_current(out: Path, source: Path) -> bool:
    manifest_path = out / "manifest.json"
    if not manifest_path.is_file():
        return False
    files = json.loads(manifest_path.read_text())["source"]["files"]
    return all((source / name).is_file() and (source / name).stat().st_size == meta["bytes"] for name, meta in files.items())


def _settings_key(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:10]
