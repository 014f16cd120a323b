"""Turning a MovieLens release into the Parquet dataset the model reads: id maps, genres, splits, manifest.

A prepared folder holds `train/val/test.parquet` (user, movie, rating, timestamp with contiguous ids; rows in a
seeded random order in row groups of ROW_GROUP_ROWS, so that any contiguous range is a random sample and each
rank reads only its own range), `train_by_user.parquet` (the training rows by user, newest first, each user in
one row group: the history feature reads it), `users.parquet` and `movies.parquet` (original ids, titles, years,
genre ids, and train-split sums and counts for the dense features), `seen_*.npy` (each user's movies per split,
by user: see `seen`), and `manifest.json` (counts, split, seed, source checksums, layout). Preparing the same
release with the same settings twice gives byte-identical files.

`prepare` streams (see `streaming`): from a release folder it reads the ratings file a block at a time, checks
each block as `read_release` checks the whole file (same messages, true line numbers), and regroups the ratings
through on-disk buckets, so its memory is bounded by `chunk_rows`, not by the release; the id maps and
statistics are exact. Only the catalogue (movies, tags, links, demographics) is read whole. Given a `Release`
already read in memory, or for split=files (ml-100k's folds, matched in memory), the split is decided by
`splits.split_rows` on the whole arrays and the same writer lays out the files.

`prepare` never deletes what it did not write. It refuses an output folder that is, or is inside, the release
(or holds it), an output path that is a file, and a non-empty folder that is not a prepared dataset (one whose
manifest.json has a `format_version`). It writes into a new temporary sibling folder, removed if preparing fails;
a prepared dataset already at the output is replaced by renaming it aside, renaming the new one into place and
only then removing the old one. One process at a time writes an output folder (an OS lock, see mmdlrm.folders):
a second `prepare` is refused, naming the first; runs that fill the shared data cache wait for each other instead.
What a killed prepare left beside the output (its temporary folder, an old dataset renamed aside) is cleared by
the next one. A full disk is said as such (`NoSpace`), with the temporary folder removed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mmdlrm.config import SYNTHETIC, DataConfig
from mmdlrm.data.chunks import BLOCK_BYTES
from mmdlrm.data.movielens import (
    USER_FILES,
    Release,
    catalogue_files,
    detect_release,
    parse_years,
    read_catalogue,
    read_links,
    read_release,
    read_users,
)
from mmdlrm.data.parts import SplitColumns, read_history
from mmdlrm.data.ratings_stream import RATINGS_FILES, FolderRatings, ReleaseRatings
from mmdlrm.data.seen import SeenMovies, UserMovies, load_seen, write_seen
from mmdlrm.data.splits import SPLITS, check_split_sizes, cold_in_test, fold_assignment, split_rows
from mmdlrm.data.streaming import CHUNK_ROWS, ROW_GROUP_ROWS, SplitRule, SplitStats, write_splits
from mmdlrm.data.synthetic import generate
from mmdlrm.data.tables import BadRows, DataError, OnBadRows
from mmdlrm.folders import FolderLock, as_no_space

log = logging.getLogger(__name__)

FORMAT_VERSION = 3
"""3: splits in a seeded random order with fixed row groups, train_by_user.parquet, the `random` split by hash."""
__all__ = ["FORMAT_VERSION", "SPLITS", "Prepared", "ensure_prepared", "load_prepared", "prepare", "split_rows"]


@dataclass
class Prepared:
    """A prepared dataset: manifest, per-user and per-movie tables in memory, the splits read on demand.

    Ids are contiguous indices into `users` / `movies`. `rank` / `world_size` say which part of each split
    `batches.SplitRows.from_prepared` reads for this process (the whole split in a world of one).
    """

    folder: Path
    manifest: dict
    splits: dict[str, SplitColumns]
    """split -> {"user": int32, "movie": int32, "rating": float32, "timestamp": int64}: each column of the whole
    split is read when first asked for (see parts.SplitColumns); a rank's training rows come from SplitRows."""
    users: dict[str, np.ndarray]
    """user_id, train_count, train_sum."""
    movies: dict[str, np.ndarray]
    """movie_id, year, train_count, train_sum, genre_offsets (num_movies + 1), genre_values."""
    titles: list[str]
    genres: list[str]
    rank: int = 0
    world_size: int = 1
    _seen: dict[str, UserMovies] = field(default_factory=dict, repr=False)

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

    def split_path(self, split: str) -> Path:
        """The Parquet file of `split` (train, val, test)."""
        return self.folder / f"{split}.parquet"

    def split_rows(self, split: str) -> int:
        """Rows of `split` (all ranks together)."""
        return int(self.manifest["counts"][split])

    def history(self, length: int) -> tuple[np.ndarray, np.ndarray]:
        """Each user's `length` most recent training movies as CSR (offsets, values), read by row group."""
        return read_history(self.folder / "train_by_user.parquet", self.users["train_count"], length)

    def seen(self, splits: Sequence[str] = SPLITS) -> SeenMovies:
        """The movies each user rated in `splits`, by user (data/seen.py): memory-mapped, no split column read.

        The folder's seen_*.npy index is opened on first use (and built there first if the folder predates it).

        Raises:
            ValueError: a name in `splits` is not a split.
        """
        unknown = [s for s in splits if s not in SPLITS]
        if unknown:
            raise ValueError(f"unknown split {unknown[0]!r}; the splits are {', '.join(SPLITS)}")
        missing = [s for s in splits if s not in self._seen]
        if missing:  # only the splits asked for are opened (a validation-only run never opens test's)
            self._seen |= load_seen(self.folder, self.num_users, missing)
        return SeenMovies({s: self._seen[s] for s in splits})


def prepare(
    source: Release | str | Path, out_dir: str | Path, split: str, val_fraction: float, test_fraction: float,
    seed: int, fold: str = "u1", *, on_bad_rows: OnBadRows = "error", chunk_rows: int = CHUNK_ROWS,
    block_bytes: int = BLOCK_BYTES, progress: bool | None = None,
) -> Path:  # fmt: skip
    """Write the prepared dataset for the release `source` (a folder, streamed; or a `Release` read in memory)
    into `out_dir`, atomically: a tmp sibling swapped in at the end.

    Args:
        on_bad_rows: for a folder: `error` stops at the first bad rating, `skip` drops bad ratings (a `Release`
            was read with its own setting).
        chunk_rows: ratings held at a time (what bounds memory); block_bytes: bytes of the ratings file read at
            a time. Neither changes the files written.
        progress: progress bars (None: where stderr is a terminal).

    Raises:
        DataError: `out_dir` is the release folder (or inside it), a file, or a non-empty folder that is not a
            prepared dataset; bad input in the release (file, line and column); a split with no ratings.
        FolderBusy: another process is writing `out_dir`.
        NoSpace: the disk filled up (nothing of this prepare is kept; what was at `out_dir` is as it was).
    """
    folder = source.folder if isinstance(source, Release) else Path(source)
    target = _check_out_dir(folder, Path(out_dir))
    target.parent.mkdir(parents=True, exist_ok=True)
    with FolderLock(target, "mmdlrm prepare", "pass another --out"):
        return _prepare_held(source, out_dir, split, val_fraction, test_fraction, seed, fold, on_bad_rows=on_bad_rows,
                             chunk_rows=chunk_rows, block_bytes=block_bytes, progress=progress)  # fmt: skip


def _prepare_held(
    source: Release | str | Path, out_dir: str | Path, split: str, val_fraction: float, test_fraction: float,
    seed: int, fold: str, *, on_bad_rows: OnBadRows, chunk_rows: int, block_bytes: int, progress: bool | None,
) -> Path:  # fmt: skip
    """`prepare`, with the output folder held by this process."""
    folder = source.folder if isinstance(source, Release) else Path(source)
    out = Path(out_dir)
    target = _check_out_dir(folder, out)  # again, now that no other prepare is writing it
    _remove_leftovers(target)
    if not isinstance(source, Release):
        kind = detect_release(folder)
        if split == "files":  # ml-100k's fold files are matched against the ratings in memory (100,000 of them)
            source = read_release(folder, on_bad_rows)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    split_info: dict = {"kind": split, "val_fraction": val_fraction, "test_fraction": test_fraction, "seed": seed}
    rule = SplitRule(split, val_fraction, test_fraction, seed)
    check = lambda counts: check_split_sizes(folder, counts, split, val_fraction, test_fraction)  # noqa: E731
    try:
        if isinstance(source, Release):
            catalogue = _Catalogue.of_release(source)
            ratings, extra = _in_memory(source, catalogue.movie_ids, split, val_fraction, test_fraction, seed, fold, chunk_rows)
            split_info |= extra
        else:
            catalogue = _Catalogue.read(folder, kind, on_bad_rows)
            ratings = FolderRatings(folder, kind, catalogue.movie_ids, on_bad_rows, catalogue.bad_rows, block_bytes)
        stats = write_splits(tmp, ratings, len(catalogue.movie_ids), rule, check, chunk_rows, progress)
        manifest = _write_tables(tmp, catalogue, stats)
        write_seen(tmp, len(stats.user_ids))
        manifest["split"] = split_info
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        _swap_in(tmp, target)
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)  # only the folder this call made
        full = as_no_space(err, out, lambda: _kept(target))
        if full is None:
            raise
        raise full from err
    sizes = ", ".join(f"{k} {v:,}" for k, v in manifest["counts"].items() if isinstance(v, int))
    log.info("prepared %s -> %s (%s)", folder, out, sizes)
    return out


def _remove_leftovers(target: Path) -> None:
    """Clear what killed prepares of `target` left beside it (call holding `target`): their temporary folders
    (`.<name>.<random>.tmp`) are removed; a dataset renamed aside for a swap (`.<name>.old-<hex>`) is put back
    where the swap did not finish (no dataset at `target`), else removed."""
    name = re.escape(target.name)
    tmp, old = re.compile(rf"\.{name}\.[a-z0-9_]{{8}}\.tmp"), re.compile(rf"\.{name}\.old-[0-9a-f]{{8}}")
    for path in sorted(target.parent.iterdir()):
        if not path.is_dir() or path.is_symlink() or not (tmp.fullmatch(path.name) or old.fullmatch(path.name)):
            continue
        if old.fullmatch(path.name) and not target.exists() and is_prepared(path):
            log.info("putting back %s, which a stopped prepare had moved aside, as %s", path, target)
            path.rename(target)
        else:
            log.info("removing %s, left by a prepare that was stopped", path)
            shutil.rmtree(path)


def _kept(target: Path) -> str:
    """What a prepare stopped by a full disk keeps, and what the same command then does."""
    before = " (the dataset that was there before is as it was)" if is_prepared(target) else ""
    return (f"nothing of this prepare was kept{before}. Free some space there, then run the same command again: it "
            "prepares the dataset from the start")


@dataclass
class _Catalogue:
    """What prepare reads whole: the movies (sorted by id), demographics, the source files and bad-row counts."""

    folder: Path
    kind: str
    movies: pa.Table
    users: pa.Table | None
    files: list[Path]
    bad_rows: BadRows

    @property
    def movie_ids(self) -> np.ndarray:
        return self.movies["movie_id"].to_numpy()

    @classmethod
    def of_release(cls, release: Release) -> _Catalogue:
        return cls(release.folder, release.kind, _sorted_movies(release.movies, release.files[1]), release.users,
                   release.files, release.bad_rows)  # fmt: skip

    @classmethod
    def read(cls, folder: Path, kind: str, on_bad_rows: OnBadRows) -> _Catalogue:
        """The release's catalogue files, read as `read_release` reads them (the ratings are streamed apart)."""
        bad = BadRows()
        movies, _ = read_catalogue(folder, on_bad_rows, bad)  # tags: read for their bad-row count and checksum
        files = [folder / RATINGS_FILES[kind], *catalogue_files(folder)]
        if kind == "csv" and (folder / "links.csv").is_file():
            read_links(folder / "links.csv", bad)
            files.append(folder / "links.csv")
        users = read_users(folder, kind, on_bad_rows, bad)
        if users is not None:
            files.append(folder / USER_FILES[kind])
        return cls(folder, kind, _sorted_movies(movies, files[1]), users, [f for f in files if f.is_file()], bad)


def _sorted_movies(movies: pa.Table, path: Path) -> pa.Table:
    """The catalogue sorted by movie id (movie index i is row i).

    Raises:
        DataError: a movie id listed twice.
    """
    movie_ids = movies["movie_id"].to_numpy()
    order = np.argsort(movie_ids, kind="stable")
    if np.any(np.diff(movie_ids[order]) == 0):
        dup = movie_ids[order][np.flatnonzero(np.diff(movie_ids[order]) == 0)[0]]
        raise DataError(f"{path}: movie id {dup} appears twice; each movie must be listed once")
    return movies.take(order)


def _in_memory(release: Release, movie_ids: np.ndarray, split: str, val: float, test: float, seed: int, fold: str,
               chunk_rows: int) -> tuple[ReleaseRatings, dict]:  # fmt: skip
    """The release's ratings with their split decided on the whole arrays, and what the split adds to the manifest."""
    ratings = release.ratings
    users = np.searchsorted(np.unique(ratings["user_id"].to_numpy()), ratings["user_id"].to_numpy())
    items = np.searchsorted(movie_ids, ratings["movie_id"].to_numpy())
    extra: dict = {}
    if split == "files":
        assignment = fold_assignment(release, fold, val, seed)
        extra = {"fold": fold, **cold_in_test(users, items, assignment)}
    else:
        assignment = split_rows(users, ratings["timestamp"].to_numpy(), items, split, val, test, seed)
    return ReleaseRatings(release, movie_ids, assignment, chunk_rows), extra


def _write_tables(folder: Path, catalogue: _Catalogue, stats: SplitStats) -> dict:
    """Write users.parquet and movies.parquet into `folder`; returns the manifest, split settings aside."""
    genre_names = sorted(set(pc.list_flatten(catalogue.movies["genres"]).to_pylist()))
    user_features = _write_users(folder / "users.parquet", stats.user_ids, stats.user_count, stats.user_sum, catalogue.users)
    _write_movies(folder / "movies.parquet", catalogue.movies, genre_names, stats.movie_count, stats.movie_sum)
    counts = {"users": len(stats.user_ids), "movies": catalogue.movies.num_rows, "genres": len(genre_names),
              "ratings": stats.ratings, "user_features": user_features}  # fmt: skip
    return {
        "format_version": FORMAT_VERSION,
        "source": {
            "folder": str(catalogue.folder),
            "kind": catalogue.kind,
            "files": {f.name: {"sha256": _sha256(f), "bytes": f.stat().st_size} for f in catalogue.files},
            "bad_rows_skipped": catalogue.bad_rows.counts,
        },
        "split": {},
        "counts": counts | stats.counts,
        "train_mean_rating": stats.train_sum / stats.counts["train"],
        "genres": genre_names,
        "layout": {"row_group_rows": ROW_GROUP_ROWS, "order": "seeded random: sorted by a keyed hash of each "
                   "rating's position", "by_user": "train_by_user.parquet: user, then newest first, then movie"},
    }  # fmt: skip


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


def _write_users(path: Path, user_ids: np.ndarray, count: np.ndarray, total: np.ndarray, demographics: pa.Table | None) -> dict:
    """users.parquet: ids, training counts and sums, and demographic codes; returns each code's table size."""
    codes = user_feature_codes(user_ids, demographics)
    table = pa.table({"user_id": user_ids, "train_count": count.astype(np.int32), "train_sum": total.astype(np.float32), **codes})
    pq.write_table(table, path, compression="zstd")
    return {name: int(column.max()) + 1 for name, column in codes.items()}


def _write_movies(path: Path, movies: pa.Table, genre_names: list[str], count: np.ndarray, total: np.ndarray) -> None:
    """movies.parquet: ids, titles, years, genre lists and training counts and sums, in movie-id order."""
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
            "train_count": count.astype(np.int32),
            "train_sum": total.astype(np.float32),
        }
    )
    pq.write_table(table, path, compression="zstd")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def load_prepared(folder: str | Path, rank: int = 0, world_size: int = 1) -> Prepared:
    """Open a prepared dataset: the manifest and the per-user and per-movie tables; the splits are read on demand.

    Args:
        rank, world_size: the part of each split this process reads for batches (see batches.SplitRows).

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
    for name in (*SPLITS, "train_by_user", "users", "movies"):
        if not (folder / f"{name}.parquet").is_file():
            raise DataError(f"{folder}: {name}.parquet is missing; prepare the dataset again")
    splits = {name: SplitColumns(folder / f"{name}.parquet") for name in SPLITS}
    users = _numpy_columns(pq.read_table(folder / "users.parquet"))
    movie_table = pq.read_table(folder / "movies.parquet")
    genres = movie_table["genres"].combine_chunks()
    movies = _numpy_columns(movie_table.drop_columns(["title", "genres"]))
    movies["genre_offsets"] = genres.offsets.to_numpy().astype(np.int64) - int(genres.offsets[0].as_py())
    movies["genre_values"] = genres.flatten().to_numpy().astype(np.int64)
    titles = movie_table["title"].to_pylist()
    return Prepared(folder, manifest, splits, users, movies, titles, manifest["genres"], rank, world_size)


def _numpy_columns(table: pa.Table) -> dict[str, np.ndarray]:
    return {name: table[name].to_numpy() for name in table.column_names}


def ensure_prepared(cfg: DataConfig, progress: bool | None = None) -> Path:
    """The prepared folder for `cfg`, generating the synthetic release and preparing it first if needed.

    Results are cached under `cfg.cache_dir`, keyed by the settings that change them, and reused when the
    source files still have the sizes recorded in the manifest.
    """
    cache = Path(cfg.cache_dir)
    if cfg.source == SYNTHETIC:
        key = _settings_key(cfg.synthetic.__dict__)
        source = cache / f"synthetic-{key}"
        if not (source / "truth.npz").is_file():
            cache.mkdir(parents=True, exist_ok=True)
            with _cache_lock(source):  # another run may be writing it: wait for it, then use what it wrote
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
    out.parent.mkdir(parents=True, exist_ok=True)
    with _cache_lock(out):
        if _is_current(out, source):  # prepared by the run we waited for
            return out
        return _prepare_held(source, out, cfg.split, cfg.val_fraction, cfg.test_fraction, cfg.seed, cfg.fold,
                             on_bad_rows=cfg.on_bad_rows, chunk_rows=CHUNK_ROWS, block_bytes=BLOCK_BYTES,
                             progress=progress)  # fmt: skip


@contextmanager
def _cache_lock(folder: Path) -> Iterator[None]:
    """Hold `folder` of the data cache, waiting for a process that holds it (runs share the cache)."""
    lock = FolderLock(folder, "mmdlrm, filling the data cache", "")
    lock.acquire(wait=True)
    try:
        yield
    finally:
        lock.release()


def _is_current(out: Path, source: Path) -> bool:
    manifest_path = out / "manifest.json"
    if not manifest_path.is_file():
        return False
    files = json.loads(manifest_path.read_text())["source"]["files"]
    return all((source / name).is_file() and (source / name).stat().st_size == meta["bytes"] for name, meta in files.items())


def _settings_key(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:10]
