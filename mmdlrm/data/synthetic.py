"""The built-in dataset: a synthetic release in exact ml-25m CSV format (or ml-1m's `.dat` layout), with planted
structure a model can learn.

Each rating is `mu + user_bias + movie_quality + alpha * <user_taste, movie_latent> + noise`, rounded to half stars
and clipped to 0.5..5.0. A movie's latent vector is the mean of its genres' vectors plus a movie-specific part, and
genre vectors are drawn around a few planted clusters (action, family, dark, serious). The planted genre
similarity matrix and every hidden parameter are saved in `truth.npz`, so tests can check what a model learnt.
With `media`, posters and summaries that show each movie's quality and traits are written too (synthetic_media).
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from mmdlrm.config import SyntheticConfig
from mmdlrm.data.synthetic_media import write_media

log = logging.getLogger(__name__)

GENRE_CLUSTERS: dict[str, int] = {
    **dict.fromkeys(["Action", "Adventure", "Sci-Fi", "War", "Western", "IMAX"], 0),
    **dict.fromkeys(["Animation", "Children", "Fantasy", "Musical", "Comedy"], 1),
    **dict.fromkeys(["Crime", "Film-Noir", "Horror", "Mystery", "Thriller"], 2),
    **dict.fromkeys(["Drama", "Documentary", "Romance"], 3),
}
CLUSTER_TAGS = [
    ["explosions", "epic", "space", "battle"],
    ["funny", "family", "cute", "magic"],
    ["dark", "suspense", "creepy", "murder"],
    ["moving", "true story", "love", "thoughtful"],
]
MEAN_RATING = 3.5
_STARS = pa.array([f"{h / 2:.1f}" for h in range(11)])  # "0.0", "0.5", ..., "5.0"
_WHOLE_STARS = pa.array([str(h // 2) for h in range(11)])  # by half-star count: "0", "0", "1", "1", ... "5"


@dataclass
class PlantedTruth:
    """The hidden parameters behind a synthetic release (saved as truth.npz beside its CSVs)."""

    genre_names: np.ndarray
    genre_vectors: np.ndarray
    """G x latent_dim, unit rows."""
    movie_genres: np.ndarray
    """num_movies x G multi-hot, rows in movieId order."""
    movie_ids: np.ndarray
    movie_quality: np.ndarray
    movie_latent: np.ndarray
    user_bias: np.ndarray
    user_taste: np.ndarray
    alpha: float
    noise: float

    @property
    def genre_similarity(self) -> np.ndarray:
        """G x G cosine similarity of the planted genre vectors."""
        return self.genre_vectors @ self.genre_vectors.T

    def save(self, path: Path) -> None:
        np.savez_compressed(path, **{k: np.asarray(v) for k, v in self.__dict__.items()})

    @classmethod
    def load(cls, path: str | Path) -> PlantedTruth:
        with np.load(path, allow_pickle=False) as data:
            values = {k: data[k] for k in data.files}
        values["alpha"] = float(values["alpha"])
        values["noise"] = float(values["noise"])
        return cls(**values)


BLOCK_RATINGS = 4_000_000
"""Ratings generated and written at a time (a block of users): what bounds the generator's memory."""


def generate(cfg: SyntheticConfig, out_dir: str | Path) -> Path:
    """Write ratings.csv, movies.csv, links.csv, tags.csv and truth.npz for `cfg` into `out_dir` (with
    layout=ml-1m: ratings.dat, movies.dat, users.dat and truth.npz).

    Vectorised throughout, and a block of users at a time (about BLOCK_RATINGS ratings): 25M ratings take about
    a minute on two cores, and memory does not grow with the release (a release of one block is drawn exactly
    as it was before blocks).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(cfg.seed)
    movie_ids, titles, genre_names, movie_genres = _catalogue(cfg, rng)
    truth = _plant(cfg, rng, genre_names, movie_genres, movie_ids)
    activity = rng.lognormal(0.0, 1.0, cfg.num_users)
    popularity = rng.lognormal(0.0, 1.3, truth.movie_ids.size) * np.exp(truth.movie_quality)
    popularity /= popularity.sum()
    blocks = np.array_split(np.arange(cfg.num_users), max(1, -(-cfg.num_ratings // BLOCK_RATINGS)))
    shares = np.array([activity[b].sum() for b in blocks]) / activity.sum()
    targets = [cfg.num_ratings] if len(blocks) == 1 else rng.multinomial(cfg.num_ratings, shares).tolist()
    first_seen = None
    dat = cfg.layout == "ml-1m"
    ratings_sink = _DatAppender(out / "ratings.dat") if dat else _CsvAppender(out / "ratings.csv", RATINGS_HEADER)
    tags_sink = _NoTags() if dat else _CsvAppender(out / "tags.csv", TAGS_HEADER)
    with ratings_sink as ratings, tags_sink as tags:
        for block, target in zip(blocks, targets):
            tilt = (truth.user_taste, truth.movie_latent, cfg.watch_taste) if cfg.watch_taste else None
            users, movies = _sample_pairs(rng, block, activity[block], popularity, target, tilt)
            score = (
                MEAN_RATING
                + truth.user_bias[users]
                + truth.movie_quality[movies]
                + truth.alpha * _rowwise_dot(truth.user_taste, users, truth.movie_latent, movies)
                + rng.normal(0.0, cfg.noise, len(users)).astype(np.float32)
            )
            half_stars = np.clip(np.rint(score * 2), 1, 10).astype(np.int8)
            if dat:  # ml-1m: whole stars 1..5
                half_stars = (2 * np.clip(np.rint(score), 1, 5)).astype(np.int8)
            if first_seen is None:  # drawn here, after the first block's noise, as before blocks
                first_seen = rng.integers(820_000_000, 1_560_000_000, cfg.num_users)  # 1996 .. 2019
            timestamps = first_seen[users] + rng.integers(0, 3 * 365 * 86_400, len(users))
            stars = pc.take(_WHOLE_STARS if dat else _STARS, pa.array(half_stars))
            ratings.write({"userId": pa.array(users + 1), "movieId": pa.array(movie_ids[movies]), "rating": stars,
                           "timestamp": pa.array(timestamps)})  # fmt: skip
            tags.write(_tags(rng, truth, users, movies, timestamps))
    genre_strings = [
        "|".join(genre_names[row]) if row.any() else "(no genres listed)" for row in movie_genres.astype(bool)
    ]
    if dat:
        _write_dat(out / "movies.dat", [movie_ids.tolist(), titles.to_pylist(), genre_strings])
        _write_dat(out / "users.dat", _users(cfg, rng))
    else:
        _write_csv(out / "movies.csv", {"movieId": pa.array(movie_ids), "title": titles, "genres": pa.array(genre_strings)})
        _write_csv(
            out / "links.csv",
            {
                "movieId": pa.array(movie_ids),
                "imdbId": pa.array([f"{9_000_000 + m:07d}" for m in movie_ids]),
                "tmdbId": pa.array(900_000 + movie_ids),
            },
        )
    if cfg.media:
        write_media(out, movie_ids, titles.to_pylist(), truth.movie_quality, truth.movie_latent)
    truth.save(out / "truth.npz")
    log.info("synthetic release: %d ratings, %d users, %d movies -> %s", cfg.num_ratings, cfg.num_users, len(movie_ids), out)
    return out


def _catalogue(cfg: SyntheticConfig, rng: np.random.Generator) -> tuple[np.ndarray, pa.Array, np.ndarray, np.ndarray]:
    """Movie ids, titles, genre vocabulary and the movies x genres multi-hot matrix."""
    if cfg.movies_csv is not None or cfg.catalogue is not None:
        return _borrowed_catalogue(Path(cfg.movies_csv or cfg.catalogue), cfg.num_movies, rng)
    genre_names = np.array(list(GENRE_CLUSTERS))
    num_genres = len(genre_names)
    # MovieLens ids are sparse (movieId up to ~3x the count): keep that, so id mapping is exercised.
    movie_ids = np.sort(rng.choice(np.arange(1, 3 * cfg.num_movies + 1), cfg.num_movies, replace=False))
    popularity = rng.dirichlet(np.full(num_genres, 0.7))
    cluster = np.array([GENRE_CLUSTERS[g] for g in genre_names])
    primary = rng.choice(num_genres, cfg.num_movies, p=popularity)
    multi_hot = np.zeros((cfg.num_movies, num_genres), dtype=np.int8)
    multi_hot[np.arange(cfg.num_movies), primary] = 1
    for _ in range(2):  # up to two more genres, mostly from the primary genre's cluster
        extra = rng.random(cfg.num_movies) < 0.45
        same = cluster[None, :] == cluster[primary][:, None]
        weights = np.where(same, 4.0, 1.0) * popularity[None, :]
        cumulative = np.cumsum(weights / weights.sum(1, keepdims=True), axis=1)
        pick = (rng.random((cfg.num_movies, 1)) > cumulative).sum(1).clip(0, num_genres - 1)
        multi_hot[np.flatnonzero(extra), pick[extra]] = 1
    years = np.clip(np.rint(2020 - rng.gamma(2.0, 9.0, cfg.num_movies)), 1920, 2020).astype(int)
    titles = pa.array([f"Synthetic Movie {m} ({y})" for m, y in zip(movie_ids, years)])
    return movie_ids, titles, genre_names, multi_hot


def _borrowed_catalogue(path: Path, num_movies: int, rng: np.random.Generator):
    """The catalogue of a movies.csv file, or of a release folder of any layout (its movies file)."""
    from mmdlrm.data.movielens import _CSV, _split_genres, read_catalogue
    from mmdlrm.data.tables import read_table

    if path.is_dir():
        movies = read_catalogue(path)[0].rename_columns(["movieId", "title", "genres"])
    else:
        movies = _split_genres(read_table(path, {"movieId": pa.int64(), "title": pa.string(), "genres": pa.string()}, _CSV))
    if num_movies < movies.num_rows:
        movies = movies.take(np.sort(rng.choice(movies.num_rows, num_movies, replace=False)))
    genre_lists = movies["genres"].to_pylist()
    genre_names = np.array(sorted({g for gs in genre_lists for g in gs}))
    index = {g: i for i, g in enumerate(genre_names)}
    multi_hot = np.zeros((movies.num_rows, len(genre_names)), dtype=np.int8)
    for row, gs in enumerate(genre_lists):
        multi_hot[row, [index[g] for g in gs]] = 1
    return movies["movieId"].to_numpy(), movies["title"].combine_chunks(), genre_names, multi_hot


def _plant(
    cfg: SyntheticConfig, rng: np.random.Generator, genre_names: np.ndarray, movie_genres: np.ndarray, movie_ids
) -> PlantedTruth:
    k = cfg.latent_dim
    centres = _unit(rng.normal(size=(len(CLUSTER_TAGS), k)))
    cluster = np.array([GENRE_CLUSTERS.get(g, int(rng.integers(len(CLUSTER_TAGS)))) for g in genre_names])
    genre_vectors = _unit(centres[cluster] + 0.45 * rng.normal(size=(len(genre_names), k)) / np.sqrt(k))
    counts = np.maximum(movie_genres.sum(1, keepdims=True), 1)
    genre_part = movie_genres @ genre_vectors / counts
    movie_latent = (genre_part + 0.35 * rng.normal(size=(len(movie_ids), k)) / np.sqrt(k)).astype(np.float32)
    user_taste = rng.normal(size=(cfg.num_users, k)).astype(np.float32)
    return PlantedTruth(
        genre_names=genre_names,
        genre_vectors=genre_vectors.astype(np.float32),
        movie_genres=movie_genres,
        movie_ids=movie_ids,
        movie_quality=rng.normal(0.0, 0.4, len(movie_ids)).astype(np.float32),
        movie_latent=movie_latent,
        user_bias=rng.normal(0.0, 0.35, cfg.num_users).astype(np.float32),
        user_taste=user_taste,
        alpha=0.6,
        noise=cfg.noise,
    )


def _sample_pairs(rng: np.random.Generator, users: np.ndarray, activity: np.ndarray, popularity: np.ndarray,
                  count: int, tilt: tuple[np.ndarray, np.ndarray, float] | None = None) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """`count` distinct (user, movie) index pairs of the block `users` (consecutive user indices), sorted by user
    then movie: heavy-tailed user activity and movie popularity, as in MovieLens. With `tilt` (tastes, movie
    latents, strength), a drawn pair is kept with probability sigmoid(strength * <taste, latent>) (rejection)."""
    n_movies = len(popularity)
    first = int(users[0])
    keys = np.empty(0, dtype=np.int64)
    while keys.size < count:
        want = int((count - keys.size) * 1.1) + 16
        per_user = rng.multinomial(want, activity / activity.sum())
        drawn = np.repeat(np.arange(first, first + len(users), dtype=np.int64), per_user)
        movies = rng.choice(n_movies, want, p=popularity)
        if tilt is not None:
            taste, latent, strength = tilt
            keep = rng.random(want) < 1.0 / (1.0 + np.exp(-strength * _rowwise_dot(taste, drawn, latent, movies)))
            drawn, movies = drawn[keep], movies[keep]
        keys = np.unique(np.concatenate([keys, drawn * n_movies + movies]))
    keys = np.sort(rng.choice(keys, count, replace=False))  # sorted by user, then movie
    return keys // n_movies, keys % n_movies


def _rowwise_dot(a: np.ndarray, ia: np.ndarray, b: np.ndarray, ib: np.ndarray, chunk: int = 4_000_000) -> np.ndarray:
    """<a[ia[i]], b[ib[i]]> for every i, in chunks so 25M rows never materialise two 25M x k gathers at once."""
    out = np.empty(len(ia), dtype=np.float32)
    for start in range(0, len(ia), chunk):
        stop = start + chunk
        out[start:stop] = np.einsum("ij,ij->i", a[ia[start:stop]], b[ib[start:stop]])
    return out


def _tags(rng: np.random.Generator, truth: PlantedTruth, users: np.ndarray, movies: np.ndarray, timestamps: np.ndarray) -> dict:
    """About one tag per 50 ratings, worded after the tagged movie's main genre cluster (tags.csv columns)."""
    n = max(1, len(users) // 50)
    rows = rng.choice(len(users), n, replace=False)
    rows.sort()
    genre_cluster = np.array([GENRE_CLUSTERS.get(g, 0) for g in truth.genre_names])
    main_genre = truth.movie_genres[movies[rows]].argmax(1)
    words = np.array([w for tags in CLUSTER_TAGS for w in tags])
    word = genre_cluster[main_genre] * len(CLUSTER_TAGS[0]) + rng.integers(0, len(CLUSTER_TAGS[0]), n)
    return {"userId": pa.array(users[rows] + 1), "movieId": pa.array(truth.movie_ids[movies[rows]]),
            "tag": pa.array(words[word]), "timestamp": pa.array(timestamps[rows] + 60)}  # fmt: skip


def _users(cfg: SyntheticConfig, rng: np.random.Generator) -> list[list]:
    """users.dat columns (UserID, Gender, Age code, Occupation, Zip-code) for users 1..num_users: the borrowed
    release's own users.dat rows where it has one (in order, reused round-robin beyond its count), else drawn."""
    from mmdlrm.data.movielens import read_users

    real = read_users(cfg.catalogue, "dat") if cfg.catalogue is not None else None
    ids = list(range(1, cfg.num_users + 1))
    if real is not None:
        rows = np.arange(cfg.num_users) % real.num_rows
        return [ids, *(real[c].take(rows).to_pylist() for c in ("gender", "age", "occupation", "zip"))]
    ages = np.array([1, 18, 25, 35, 45, 50, 56])
    return [ids, rng.choice(["M", "F"], cfg.num_users).tolist(), ages[rng.integers(0, 7, cfg.num_users)].tolist(),
            rng.integers(0, 21, cfg.num_users).tolist(), [f"{z:05d}" for z in rng.integers(0, 100_000, cfg.num_users)]]  # fmt: skip


RATINGS_HEADER = ["userId", "movieId", "rating", "timestamp"]
TAGS_HEADER = ["userId", "movieId", "tag", "timestamp"]


class _CsvAppender:
    """A CSV written a table at a time as GroupLens writes its big files (bare header, no quotes), into a .tmp
    file renamed into place when the `with` block ends without an error."""

    def __init__(self, path: Path, header: list[str]) -> None:
        self.path, self.tmp, self.header = path, path.with_suffix(".csv.tmp"), header

    def __enter__(self) -> _CsvAppender:
        self.sink = open(self.tmp, "wb")
        self.sink.write((",".join(self.header) + "\n").encode())
        return self

    def write(self, columns: dict[str, pa.Array]) -> None:
        pacsv.write_csv(pa.table(columns), self.sink, pacsv.WriteOptions(include_header=False, quoting_style="none"))

    def __exit__(self, kind, value, traceback) -> None:
        self.sink.close()
        if kind is None:
            self.tmp.replace(self.path)
        else:
            self.tmp.unlink(missing_ok=True)


class _DatAppender:
    """ratings.dat as ml-1m writes it (`UserID::MovieID::Rating::Timestamp`, no header), a table at a time, into a
    .tmp file renamed into place when the `with` block ends without an error."""

    def __init__(self, path: Path) -> None:
        self.path, self.tmp = path, path.with_suffix(".dat.tmp")

    def __enter__(self) -> _DatAppender:
        self.sink = open(self.tmp, "w", encoding="latin-1", newline="\n")
        return self

    def write(self, columns: dict[str, pa.Array]) -> None:
        values = [c.to_numpy(zero_copy_only=False) for c in columns.values()]
        self.sink.writelines(f"{u}::{m}::{r}::{t}\n" for u, m, r, t in zip(*values))

    def __exit__(self, kind, value, traceback) -> None:
        self.sink.close()
        if kind is None:
            self.tmp.replace(self.path)
        else:
            self.tmp.unlink(missing_ok=True)


class _NoTags:
    """The tags sink of a layout without tags (ml-1m)."""

    def __enter__(self) -> _NoTags:
        return self

    def write(self, columns: dict) -> None:
        pass

    def __exit__(self, *exc) -> None:
        pass


def _write_dat(path: Path, columns: list[list]) -> None:
    """A `::`-separated file as ml-1m writes it: no header, Latin-1 (UTF-8 where a title needs it)."""
    text = "".join("::".join(map(str, row)) + "\n" for row in zip(*columns))
    try:
        data = text.encode("latin-1")
    except UnicodeEncodeError:  # a borrowed title outside Latin-1 (e.g. from ml-25m): the readers take UTF-8 too
        data = text.encode("utf-8")
    tmp = path.with_suffix(".dat.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def _write_csv(path: Path, columns: dict[str, pa.Array]) -> None:
    """Write as GroupLens does: a bare header, and quotes only around text that holds a comma or a quote.

    pyarrow quotes every string (or none), so files with free text (titles) go through the csv module; they are
    catalogue-sized. The big files (ratings, tags) hold no such text and use pyarrow's writer.
    """
    table = pa.table(columns)
    tmp = path.with_suffix(".csv.tmp")
    free_text = [c for c in table.column_names if pa.types.is_string(table.schema.field(c).type)]
    if free_text and table.num_rows <= 1_000_000:
        with open(tmp, "w", newline="") as sink:
            writer = csv.writer(sink, lineterminator="\n")
            writer.writerow(table.column_names)
            writer.writerows(zip(*(table.column(c).to_pylist() for c in table.column_names)))
    else:
        with open(tmp, "wb") as sink:
            sink.write((",".join(columns) + "\n").encode())
            pacsv.write_csv(table, sink, pacsv.WriteOptions(include_header=False, quoting_style="none"))
    tmp.replace(path)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)
