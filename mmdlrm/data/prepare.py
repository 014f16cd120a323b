"""Turning a MovieLens release into the Parquet dataset the model reads: id maps, genres, splits, manifest.

A prepared folder holds `train/val/test.parquet` (user, movie, rating, timestamp with contiguous ids),
`users.parquet` and `movies.parquet` (original ids, titles, years, genre ids, and train-split sums and counts for
the dense features), and `manifest.json` (counts, split, seed, source checksums). Preparing the same release with
the same settings twice gives byte-identical files. Everything is computed on whole columns; no per-row Python.

`prepare` never deletes what it did not write. It refuses an output folder that is, or is inside, the release
(or holds it), an output path that is a file, and a non-empty folder that is not a prepared dataset (one whose
manifest.json has a `format_version`). It writes into a new temporary sibling folder, removed if preparing fails;
a prepared dataset already at the output is replaced by renaming it aside, renaming the new one into place and
only then removing the old one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mmdlrm.config import SYNTHETIC, DataConfig
from mmdlrm.data.movielens import Release, parse_years, read_fold, read_release
from mmdlrm.data.synthetic import generate
from mmdlrm.data.tables import DataError

log = logging.getLogger(__name__)

FORMAT_VERSION = 2
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


def prepare(
    release: Release, out_dir: str | Path, split: str, val_fraction: float, test_fraction: float, seed: int, fold: str = "u1"
) -> Path:
    """Write the prepared dataset for `release` into `out_dir` (atomically: a tmp sibling swapped in at the end).

    Raises:
        DataError: `out_dir` is the release folder (or inside it), a file, or a non-empty folder that is not a
            prepared dataset; a movie listed twice; a split with no ratings.
    """
    out = Path(out_dir)
    target = _check_out_dir(release.folder, out)
    movies, user_ids, users, items = _contiguous_ids(release)
    timestamp = release.ratings["timestamp"].to_numpy()
    split_info: dict = {"kind": split, "val_fraction": val_fraction, "test_fraction": test_fraction, "seed": seed}
    if split == "files":
        assignment = fold_assignment(release, fold, val_fraction, seed)
        split_info |= {"fold": fold, **_cold_in_test(users, items, assignment)}
    else:
        assignment = split_rows(users, timestamp, items, split, val_fraction, test_fraction, seed)
    counts = dict(zip(SPLITS, np.bincount(assignment, minlength=len(SPLITS)).tolist()))
    _check_split_sizes(release, counts, split, val_fraction, test_fraction)

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        manifest = _write_dataset(tmp, release, movies, user_ids, users, items, assignment)
        manifest["split"] = split_info
        manifest["counts"].update(counts)
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        _swap_in(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # only the folder this call made
        raise
    sizes = ", ".join(f"{k} {v:,}" for k, v in manifest["counts"].items() if isinstance(v, int))
    log.info("prepared %s -> %s (%s)", release.folder, out, sizes)
    return out


def _contiguous_ids(release: Release) -> tuple[pa.Table, np.ndarray, np.ndarray, np.ndarray]:
    """(movies sorted by id, sorted user ids, each rating's user index, each rating's movie index)."""
    movie_ids = release.movies["movie_id"].to_numpy()
    order = np.argsort(movie_ids, kind="stable")
    if np.any(np.diff(movie_ids[order]) == 0):
        dup = movie_ids[order][np.flatnonzero(np.diff(movie_ids[order]) == 0)[0]]
        raise DataError(f"{release.files[1]}: movie id {dup} appears twice; each movie must be listed once")
    user_ids = np.unique(release.ratings["user_id"].to_numpy())
    users = np.searchsorted(user_ids, release.ratings["user_id"].to_numpy()).astype(np.int32)
    items = np.searchsorted(movie_ids[order], release.ratings["movie_id"].to_numpy()).astype(np.int32)
    return release.movies.take(order), user_ids, users, items


def _write_dataset(
    folder: Path, release: Release, movies: pa.Table, user_ids: np.ndarray, users: np.ndarray, items: np.ndarray,
    assignment: np.ndarray,
) -> dict:  # fmt: skip
    """Write the splits, users.parquet and movies.parquet into `folder`; returns the manifest, split settings aside."""
    rating = release.ratings["rating"].to_numpy().astype(np.float32)
    timestamp = release.ratings["timestamp"].to_numpy()
    for index, name in enumerate(SPLITS):
        rows = np.flatnonzero(assignment == index)
        table = pa.table({"user": users[rows], "movie": items[rows], "rating": rating[rows], "timestamp": timestamp[rows]})
        pq.write_table(table, folder / f"{name}.parquet", compression="zstd")
    train = assignment == 0
    genre_names = sorted(set(pc.list_flatten(movies["genres"]).to_pylist()))
    user_features = _write_users(folder / "users.parquet", user_ids, users[train], rating[train], release.users)
    _write_movies(folder / "movies.parquet", movies, genre_names, items[train], rating[train])
    return {
        "format_version": FORMAT_VERSION,
        "source": {
            "folder": str(release.folder),
            "kind": release.kind,
            "files": {f.name: {"sha256": _sha256(f), "bytes": f.stat().st_size} for f in release.files},
            "bad_rows_skipped": release.bad_rows.counts,
        },
        "split": {},
        "counts": {"users": len(user_ids), "movies": movies.num_rows, "genres": len(genre_names), "ratings": len(rating),
                   "user_features": user_features},  # fmt: skip
        "train_mean_rating": float(rating[train].astype(np.float64).mean()),
        "genres": genre_names,
    }


def _check_out_dir(release_folder: Path, out: Path) -> Path:
    """The real path to write the dataset to, after refusing any `out` whose contents prepare would destroy."""
    target = out.resolve()
    source = release_folder.resolve()
    elsewhere = f"write the prepared dataset to a folder of its own (`--out data/prepared/{source.name}`)"
    if target == source or source in target.parents:
        where = "the release folder" if target == source else "inside the release folder"
        raise DataError(f"{out}: output folder is {where} {release_folder}; {elsewhere}")
    if target in source.parents:
        raise DataError(f"{out}: output folder holds the release folder {release_folder}, and prepare replaces it; {elsewhere}")
    if target.exists() and not target.is_dir():
        raise DataError(f"{out}: output path is a file, not a folder; pass a new folder or one made by `mmdlrm prepare`")
    if target.is_dir() and any(target.iterdir()) and not is_prepared(target):
        raise DataError(
            f"{out}: output folder is not empty and is not a dataset made by `mmdlrm prepare` (no manifest.json "
            "with a format_version), so it is left alone; empty the folder or pass another output folder"
        )
    return target


def is_prepared(folder: str | Path) -> bool:
    """True when `folder` holds a manifest.json written by `prepare` (any format version)."""
    path = Path(folder) / "manifest.json"
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(manifest, dict) and "format_version" in manifest


def _swap_in(tmp: Path, target: Path) -> None:
    """Put the finished `tmp` at `target`; an earlier prepared dataset there is removed only after the swap."""
    if not target.exists():
        tmp.rename(target)
        return
    if not any(target.iterdir()):
        target.rmdir()  # an empty folder: nothing to keep
        tmp.rename(target)
        return
    old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
    target.rename(old)
    try:
        tmp.rename(target)
    except BaseException:
        old.rename(target)
        raise
    shutil.rmtree(old)


def _check_split_sizes(release: Release, counts: dict[str, int], split: str, val: float, test: float) -> None:
    """Refuse a split that leaves train, validation or test without ratings."""
    sizes = f"{sum(counts.values()):,} ratings split {split} into train {counts['train']:,}, val {counts['val']:,}, test {counts['test']:,}"
    if not counts["train"]:
        raise DataError(f"{release.folder}: {sizes}: no ratings left for training; lower data.val_fraction/test_fraction")
    empty = [name for name in ("val", "test") if not counts[name]]
    if empty:
        raise DataError(
            f"{release.folder}: {sizes}: the {' and '.join(empty)} split{'s are' if len(empty) > 1 else ' is'} empty; "
            f"use a release with more ratings (per user, for split=temporal), or raise data.val_fraction / "
            f"data.test_fraction (now {val} / {test})"
        )


def split_rows(
    users: np.ndarray, timestamp: np.ndarray, movies: np.ndarray, split: str, val_fraction: float,
    test_fraction: float, seed: int,
) -> np.ndarray:  # fmt: skip
    """Assign each rating to 0 = train, 1 = val, 2 = test.

    `random`: a seeded permutation; `temporal`: for each user, the latest `test_fraction` of their ratings go to
    test and the `val_fraction` before those to val (ties in time broken by movie, so the result is stable);
    `cold_movies`: a seeded `test_fraction` of the rated movies, and another `val_fraction`, are held out whole:
    every rating of such a movie goes to test (or val), so the model meets them only through their content.
    """
    n = len(users)
    out = np.zeros(n, dtype=np.int8)
    if split == "random":
        perm = np.random.default_rng(seed).permutation(n)
        n_test, n_val = int(round(n * test_fraction)), int(round(n * val_fraction))
        out[perm[:n_test]] = 2
        out[perm[n_test : n_test + n_val]] = 1
        return out
    if split == "cold_movies":
        rated = np.unique(movies)
        perm = np.random.default_rng(seed).permutation(rated)
        n_test, n_val = int(round(len(rated) * test_fraction)), int(round(len(rated) * val_fraction))
        held = np.zeros(int(movies.max()) + 1, dtype=np.int8)
        held[perm[:n_test]] = 2
        held[perm[n_test : n_test + n_val]] = 1
        return held[movies]
    if split != "temporal":
        raise ValueError(f"unknown split {split!r}; use random, temporal, cold_movies or files")
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


def fold_assignment(release: Release, fold: str, val_fraction: float, seed: int) -> np.ndarray:
    """0 / 1 / 2 per rating from ml-100k's `<fold>.base` / `<fold>.test`, validation carved from the base by seed.

    Raises:
        DataError: the fold files are missing, or they and the release's ratings are not the same ratings.
    """
    base, test = read_fold(release.folder, fold)
    ratings = release.ratings
    span = int(max(ratings["movie_id"].to_numpy().max(), base["movie_id"].to_numpy().max(), test["movie_id"].to_numpy().max())) + 1
    key = lambda t: t["user_id"].to_numpy() * span + t["movie_id"].to_numpy()  # noqa: E731
    rows, in_base, in_test = key(ratings), key(base), key(test)
    out = np.full(len(rows), -1, dtype=np.int8)
    out[np.isin(rows, in_test)] = 2
    base_rows = np.flatnonzero(np.isin(rows, in_base) & (out < 0))
    out[base_rows] = 0
    out[np.random.default_rng(seed).permutation(base_rows)[: int(round(len(base_rows) * val_fraction))]] = 1
    unmatched = int((out < 0).sum()) + int((~np.isin(in_base, rows)).sum()) + int((~np.isin(in_test, rows)).sum())
    if unmatched:
        raise DataError(
            f"{release.folder}: {fold}.base and {fold}.test do not hold the same ratings as {release.files[0].name} "
            f"({unmatched:,} ratings are in one and not the other); are they from this release?"
        )
    return out


def _cold_in_test(users: np.ndarray, items: np.ndarray, assignment: np.ndarray) -> dict:
    """How many test ratings have a user or a movie the training part never saw (logged; they stay in test)."""
    train = assignment == 0
    test = assignment == 2
    new_user = ~np.isin(users[test], np.unique(users[train]))
    new_movie = ~np.isin(items[test], np.unique(items[train]))
    if new_user.any() or new_movie.any():
        log.warning(
            "%d test ratings have a user and %d a movie absent from the training part; they are scored with ids "
            "the model never trained (biases fall back to the mean)", int(new_user.sum()), int(new_movie.sum()),
        )  # fmt: skip
    return {"test_ratings_of_unseen_users": int(new_user.sum()), "test_ratings_of_unseen_movies": int(new_movie.sum())}


AGE_BOUNDS = np.array([18, 25, 35, 45, 50, 56])
"""ml-1m's age ranges (under 18, 18-24, ..., 56+); ml-100k's ages in years are bucketed the same way."""
ZIP_PREFIX = 2
"""Zip codes are kept to their first characters (a region): full codes are nearly one per user."""


def user_feature_codes(user_ids: np.ndarray, demographics: pa.Table | None) -> dict[str, np.ndarray]:
    """Per user (in `user_ids` order) a code for age, gender, occupation and zip region; 0 where unknown."""
    if demographics is None:
        return {}
    position = np.searchsorted(user_ids, demographics["user_id"].to_numpy())
    found = (position < len(user_ids)) & (user_ids[position.clip(max=len(user_ids) - 1)] == demographics["user_id"].to_numpy())
    codes = {}
    age = pc.cast(pc.utf8_trim_whitespace(demographics["age"]), pa.int64(), safe=False).to_numpy(zero_copy_only=False)
    codes["age"] = np.searchsorted(AGE_BOUNDS, age, side="right") + 1
    gender = pc.utf8_upper(pc.utf8_trim_whitespace(demographics["gender"])).to_numpy(zero_copy_only=False)
    codes["gender"] = np.select([gender == "M", gender == "F"], [1, 2], 0)
    for name, values in (("occupation", demographics["occupation"]), ("zip", pc.utf8_slice_codeunits(demographics["zip"], 0, ZIP_PREFIX))):
        text = pc.utf8_lower(pc.utf8_trim_whitespace(values)).to_numpy(zero_copy_only=False)
        vocabulary, index = np.unique(text, return_inverse=True)
        codes[name] = index + 1
    out = {}
    for name, values in codes.items():
        column = np.zeros(len(user_ids), dtype=np.int32)
        column[position[found]] = values[found]
        out[name] = column
    return out


def _write_users(path: Path, user_ids: np.ndarray, users: np.ndarray, rating: np.ndarray, demographics: pa.Table | None) -> dict:
    """users.parquet: ids, training counts and sums, and demographic codes; returns each code's table size."""
    n = len(user_ids)
    codes = user_feature_codes(user_ids, demographics)
    table = pa.table(
        {
            "user_id": user_ids,
            "train_count": np.bincount(users, minlength=n).astype(np.int32),
            "train_sum": np.bincount(users, weights=rating, minlength=n).astype(np.float32),
            **codes,
        }
    )
    pq.write_table(table, path, compression="zstd")
    return {name: int(column.max()) + 1 for name, column in codes.items()}


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
    if cfg.split == "files":
        settings["fold"] = cfg.fold
    out = cache / "prepared" / f"{source.name}-{_settings_key(settings)}"
    if _is_current(out, source):
        log.info("using prepared dataset %s", out)
        return out
    release = read_release(source, cfg.on_bad_rows)
    return prepare(release, out, cfg.split, cfg.val_fraction, cfg.test_fraction, cfg.seed, cfg.fold)


def _is_current(out: Path, source: Path) -> bool:
    manifest_path = out / "manifest.json"
    if not manifest_path.is_file():
        return False
    files = json.loads(manifest_path.read_text())["source"]["files"]
    return all((source / name).is_file() and (source / name).stat().st_size == meta["bytes"] for name, meta in files.items())


def _settings_key(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:10]
