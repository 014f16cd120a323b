"""Readers for the MovieLens releases people actually have, with validation of what they read.

| release                          | files                                   | layout                         |
| -------------------------------- | --------------------------------------- | ------------------------------ |
| ml-20m, ml-25m, ml-32m, latest   | ratings.csv movies.csv [links tags].csv | CSV with header                |
| ml-1m, ml-10m                    | ratings.dat movies.dat [tags.dat]       | `::`-separated, no header      |
| ml-100k                          | u.data u.item [u.genre]                 | tab / pipe-separated, latin-1  |

Every reader returns a `Release` with the same column names and types, so nothing downstream knows which one it was.
`read_catalogue` gives a release's movies and tags alone, through the same readers (content features need no ratings).

Encodings: the CSV releases are UTF-8 (a byte-order mark is dropped); a CSV file that is not valid UTF-8 is read as
Latin-1 with a warning naming the file and line (see `tables`). The `.dat` files and ml-100k's u.item are Latin-1.

Validation of ratings, in this order; with `on_bad_rows="error"` the first problem stops the read with file, line
and column, with `"skip"` the offending rows are dropped and counted in `Release.bad_rows`:
- user and movie ids must be whole numbers >= 0;
- ratings must be in `RATING_RANGE` (a NaN is refused as not a number while reading);
- the movie must be in the movies file;
- one rating per (user, movie). Under "skip" the latest rating of a repeated pair is kept: the largest timestamp,
  and on equal timestamps the later line of the file. Found with one vectorised pass (MovieLens files are sorted by
  user and movie) or one sort of a combined (user, movie) key; only the repeated rows are lexsorted.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mmdlrm.data.tables import BadRows, DataError, OnBadRows, TextFormat, file_lines, first_line, read_header, read_table
from mmdlrm.schema import RATING_RANGE

log = logging.getLogger(__name__)

ReleaseKind = Literal["csv", "dat", "100k"]

NO_GENRES = "(no genres listed)"
# ml-100k's u.genre and ml-1m's movies.dat spell some genres the old way; later releases are the reference.
_GENRE_ALIASES = {"Children's": "Children", "unknown": NO_GENRES}
# The 19 genre flags of ml-100k's u.item, in column order (u.genre lists the same).
ML100K_GENRES = [
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
]  # fmt: skip

_CSV = TextFormat()
_DAT = TextFormat(delimiter="\x1f", header=False, encoding="latin-1", multi_char_delimiter="::", quoting=False)
_U_DATA = TextFormat(delimiter="\t", header=False, quoting=False)
_U_ITEM = TextFormat(delimiter="|", header=False, encoding="latin-1", quoting=False)
_RATINGS_FORMAT: dict[str, TextFormat] = {"csv": _CSV, "dat": _DAT, "100k": _U_DATA}
_RATINGS_NAMES = ["user_id", "movie_id", "rating", "timestamp"]
"""The ratings columns, in file order where the file has no header (.dat, u.data)."""
_CSV_NAMES = {"user_id": "userId", "movie_id": "movieId", "rating": "rating", "timestamp": "timestamp"}
# The file that marks each layout; a folder must hold exactly one of them.
_MARKERS = {"ratings.csv": "csv", "ratings.dat": "dat", "u.data": "100k"}


@dataclass
class Release:
    """One MovieLens release, read and checked.

    `ratings`: user_id int64, movie_id int64, rating float32 (stars), timestamp int64 (Unix seconds).
    `movies`: movie_id int64, title string, genres list<string> (empty list for no genres).
    `tags` (user_id, movie_id, tag, timestamp) and `links` (movie_id, imdb_id, tmdb_id) where the release has them.
    `users` (user_id, age, gender, occupation, zip; strings but the id) where it has demographics (ml-100k's
    u.user, ml-1m's users.dat).
    """

    kind: ReleaseKind
    folder: Path
    ratings: pa.Table
    movies: pa.Table
    tags: pa.Table | None = None
    links: pa.Table | None = None
    users: pa.Table | None = None
    files: list[Path] = field(default_factory=list)
    bad_rows: BadRows = field(default_factory=BadRows)


def detect_release(folder: str | Path) -> ReleaseKind:
    """Tell the release layout from the files in `folder`.

    Raises:
        DataError: the folder is missing, holds no ratings file of a known release, or holds more than one.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: not a folder; point data.source at an unpacked MovieLens release")
    found = [name for name in _MARKERS if (folder / name).is_file()]
    if len(found) > 1:
        raise DataError(
            f"{folder}: holds more than one MovieLens release ({', '.join(found)}); point data.source at a folder "
            "with one release"
        )
    if found:
        return _MARKERS[found[0]]  # type: ignore[return-value]
    raise DataError(
        f"{folder}: no ratings.csv (ml-20m/25m/32m/latest), ratings.dat (ml-1m/10m) or u.data (ml-100k) here; "
        "point data.source at the unpacked release folder"
    )


def read_release(folder: str | Path, on_bad_rows: OnBadRows = "error") -> Release:
    """Read and validate the MovieLens release in `folder` (layout detected from its files).

    Raises:
        DataError: any bad input, naming file, line and column (unless on_bad_rows='skip' drops the row).
    """
    folder = Path(folder)
    kind = detect_release(folder)
    bad = BadRows()
    reader = {"csv": _read_csv_release, "dat": _read_dat_release, "100k": _read_100k_release}[kind]
    release = reader(folder, on_bad_rows, bad)
    release.bad_rows = bad
    release.users = read_users(folder, kind, on_bad_rows, bad)
    if release.users is not None:
        release.files.append(folder / USER_FILES[kind])
    release.ratings = _validate_ratings(release, on_bad_rows)
    release.files = [f for f in release.files if f.is_file()]
    log.info(
        "read %s release %s: %d ratings, %d movies%s",
        kind, folder, release.ratings.num_rows, release.movies.num_rows,
        f", {bad.total} bad rows skipped" if bad.total else "",
    )  # fmt: skip
    return release


MOVIES_FILES: dict[ReleaseKind, str] = {"csv": "movies.csv", "dat": "movies.dat", "100k": "u.item"}
TAGS_FILES: dict[ReleaseKind, str] = {"csv": "tags.csv", "dat": "tags.dat"}
"""The catalogue files of each layout: its movies, and its tags where the layout has them (ml-100k has none)."""


def read_catalogue(
    folder: str | Path, on_bad_rows: OnBadRows = "error", bad_rows: BadRows | None = None
) -> tuple[pa.Table, pa.Table | None]:
    """A release's (movies, tags or None), as `read_release` gives them in `Release.movies` and `Release.tags`.

    For what needs only titles, genres and tags (content features), without reading the ratings (most of a minute
    for ml-25m). The same readers and the same checks of the movies file; tags rows that do not parse are skipped
    and counted in `bad_rows`.

    `folder` may also hold only a catalogue (a movies file, maybe tags, no ratings).

    Raises:
        DataError: no release or catalogue in `folder`, or a bad movies file (naming file, line and column).
    """
    folder = Path(folder)
    kind = _catalogue_kind(folder)
    bad = bad_rows if bad_rows is not None else BadRows()
    return _read_movies(folder, kind, on_bad_rows, bad), _read_tags(folder, kind, bad)


def catalogue_files(folder: str | Path) -> list[Path]:
    """The movies file and (where the layout has one, present or not) the tags file of the release in `folder`.

    Raises:
        DataError: no release or catalogue in `folder`.
    """
    folder = Path(folder)
    kind = _catalogue_kind(folder)
    return [folder / MOVIES_FILES[kind], *([folder / TAGS_FILES[kind]] if kind in TAGS_FILES else [])]


def _catalogue_kind(folder: Path) -> ReleaseKind:
    """The layout of a release's catalogue files.

    From the ratings file, as `detect_release` tells it; in a folder that holds only a catalogue (no ratings file,
    e.g. a copy of ml-1m's movies.dat and users.dat), from its one movies file.
    """
    movies = [kind for kind, name in MOVIES_FILES.items() if (folder / name).is_file()]
    if len(movies) == 1 and not any((folder / name).is_file() for name in _MARKERS):
        return movies[0]
    return detect_release(folder)


def read_links(path: str | Path, bad_rows: BadRows | None = None) -> pa.Table:
    """A MovieLens links.csv: movie_id int64, imdb_id string, tmdb_id int64 (null where TMDB has no entry).

    Rows that do not parse are skipped and counted in `bad_rows`.

    Raises:
        DataError: a missing, empty or compressed file, or one without the movieId, imdbId and tmdbId columns.
    """
    links = read_table(
        Path(path),
        {"movieId": pa.int64(), "imdbId": pa.string(), "tmdbId": pa.string()},
        _CSV,
        rename={"movieId": "movie_id", "imdbId": "imdb_id", "tmdbId": "tmdb_id"},
        on_bad_rows="skip",
        bad_rows=bad_rows,
    )
    tmdb = pc.if_else(pc.equal(links["tmdb_id"], ""), None, links["tmdb_id"])
    return links.set_column(2, "tmdb_id", pc.cast(tmdb, pa.int64()))


def _read_movies(folder: Path, kind: ReleaseKind, on_bad_rows: OnBadRows, bad: BadRows) -> pa.Table:
    """movie_id, title, genres (list) from the layout's movies file."""
    path = folder / MOVIES_FILES[kind]
    if kind == "100k":
        return _read_u_item(path, on_bad_rows, bad)
    if kind == "csv":
        columns = {"movieId": pa.int64(), "title": pa.string(), "genres": pa.string()}
        movies = read_table(path, columns, _CSV, rename={"movieId": "movie_id"}, on_bad_rows=on_bad_rows, bad_rows=bad)
    else:
        columns = {"movie_id": pa.int64(), "title": pa.string(), "genres": pa.string()}
        movies = read_table(path, columns, _DAT, names=list(columns), on_bad_rows=on_bad_rows, bad_rows=bad)
    return _split_genres(movies)


def _read_u_item(path: Path, on_bad_rows: OnBadRows, bad: BadRows) -> pa.Table:
    """ml-100k's u.item: id|title|dates|IMDb URL|19 genre flags, turned into genre lists."""
    flags = [f"g{i}" for i in range(len(ML100K_GENRES))]
    names = ["movie_id", "title", "release_date", "video_release_date", "imdb_url", *flags]
    items = read_table(
        path,
        {"movie_id": pa.int64(), "title": pa.string(), **{f: pa.int8() for f in flags}},
        _U_ITEM,
        names=names,
        on_bad_rows=on_bad_rows,
        bad_rows=bad,
    )
    flag_matrix = np.stack([items.column(f).to_numpy() for f in flags], axis=1).astype(bool)
    genre_names = np.array([_GENRE_ALIASES.get(g, g) for g in ML100K_GENRES], dtype=object)
    genres = pa.array([[g for g in genre_names[row] if g != NO_GENRES] for row in flag_matrix], pa.list_(pa.string()))
    return pa.table({"movie_id": items["movie_id"], "title": items["title"], "genres": genres})


def _read_tags(folder: Path, kind: ReleaseKind, bad: BadRows) -> pa.Table | None:
    """user_id, movie_id, tag, timestamp from the layout's tags file, or None where there is none."""
    path = folder / TAGS_FILES[kind] if kind in TAGS_FILES else None
    if path is None or not path.is_file():
        return None
    if kind == "csv":
        columns = {"userId": pa.int64(), "movieId": pa.int64(), "tag": pa.string(), "timestamp": pa.int64()}
        rename = {"userId": "user_id", "movieId": "movie_id"}
        return read_table(path, columns, _CSV, rename=rename, on_bad_rows="skip", bad_rows=bad)
    columns = {"user_id": pa.int64(), "movie_id": pa.int64(), "tag": pa.string(), "timestamp": pa.int64()}
    return read_table(path, columns, _DAT, names=list(columns), on_bad_rows="skip", bad_rows=bad)


def _read_csv_release(folder: Path, on_bad_rows: OnBadRows, bad: BadRows) -> Release:
    ratings = read_table(
        folder / "ratings.csv",
        {"userId": pa.int64(), "movieId": pa.int64(), "rating": pa.float32(), "timestamp": pa.int64()},
        _CSV,
        rename={"userId": "user_id", "movieId": "movie_id"},
        on_bad_rows=on_bad_rows,
        bad_rows=bad,
    )
    movies = _read_movies(folder, "csv", on_bad_rows, bad)
    release = Release("csv", folder, ratings, movies, files=[folder / "ratings.csv", folder / "movies.csv"])
    release.tags = _read_tags(folder, "csv", bad)
    if release.tags is not None:
        release.files.append(folder / "tags.csv")
    if (folder / "links.csv").is_file():
        release.links = read_links(folder / "links.csv", bad)
        release.files.append(folder / "links.csv")
    return release


def _read_dat_release(folder: Path, on_bad_rows: OnBadRows, bad: BadRows) -> Release:
    ratings = read_table(
        folder / "ratings.dat",
        {"user_id": pa.int64(), "movie_id": pa.int64(), "rating": pa.float32(), "timestamp": pa.int64()},
        _DAT,
        names=_RATINGS_NAMES,
        on_bad_rows=on_bad_rows,
        bad_rows=bad,
    )
    movies = _read_movies(folder, "dat", on_bad_rows, bad)
    release = Release("dat", folder, ratings, movies, files=[folder / "ratings.dat", folder / "movies.dat"])
    release.tags = _read_tags(folder, "dat", bad)  # ml-10m
    if release.tags is not None:
        release.files.append(folder / "tags.dat")
    return release


def _read_100k_release(folder: Path, on_bad_rows: OnBadRows, bad: BadRows) -> Release:
    ratings = read_table(
        folder / "u.data",
        {"user_id": pa.int64(), "movie_id": pa.int64(), "rating": pa.float32(), "timestamp": pa.int64()},
        _U_DATA,
        names=_RATINGS_NAMES,
        on_bad_rows=on_bad_rows,
        bad_rows=bad,
    )
    movies = _read_movies(folder, "100k", on_bad_rows, bad)
    return Release("100k", folder, ratings, movies, files=[folder / "u.data", folder / "u.item"])


USER_FILES = {"100k": "u.user", "dat": "users.dat"}
"""The demographics file of each layout that has one."""
USER_COLUMNS = ["user_id", "age", "gender", "occupation", "zip"]


def read_users(
    folder: str | Path, kind: ReleaseKind, on_bad_rows: OnBadRows = "error", bad_rows: BadRows | None = None
) -> pa.Table | None:
    """Demographics by user id, or None where the release has none (the CSV releases).

    ml-100k `u.user`: `id|age|gender|occupation|zip`, age in years, occupation a word (Latin-1).
    ml-1m `users.dat`: `UserID::Gender::Age::Occupation::Zip-code`, age a range code (1, 18, 25, ...),
    occupation a number. Columns come back as user_id (int64) and strings, in USER_COLUMNS order.

    Raises:
        DataError: a line that does not parse or an age that is not a whole number, naming file, line and column
            (with on_bad_rows='skip' the line is dropped and counted in `bad_rows`: that user's demographics are
            unknown).
    """
    name = USER_FILES.get(kind)
    path = Path(folder) / name if name else None
    if path is None or not path.is_file():
        return None
    columns = {"user_id": pa.int64(), **{c: pa.string() for c in USER_COLUMNS[1:]}, "age": pa.int64()}
    if kind == "100k":
        fmt, names = TextFormat(delimiter="|", header=False, encoding="latin-1", quoting=False), USER_COLUMNS
    else:
        fmt, names = _DAT, ["user_id", "gender", "age", "occupation", "zip"]
    table = read_table(path, columns, fmt, names=names, on_bad_rows=on_bad_rows, bad_rows=bad_rows)
    table = table.set_column(table.column_names.index("age"), "age", pc.cast(table["age"], pa.string()))
    return table.select(USER_COLUMNS)


FOLDS = ("u1", "u2", "u3", "u4", "u5", "ua", "ub")
"""ml-100k's predefined splits: u1..u5 are five disjoint 80/20 folds, ua/ub hold out 10 ratings per user."""


def read_fold(folder: str | Path, fold: str) -> tuple[pa.Table, pa.Table]:
    """The (base, test) ratings of one of ml-100k's predefined splits, `<fold>.base` and `<fold>.test`.

    Raises:
        DataError: an unknown fold name, or a fold file missing (the message lists the folds present).
    """
    folder = Path(folder)
    if fold not in FOLDS:
        raise DataError(f"data.fold={fold!r}: ml-100k's predefined splits are {', '.join(FOLDS)}")
    present = [f for f in FOLDS if (folder / f"{f}.base").is_file() and (folder / f"{f}.test").is_file()]
    out = []
    for part in ("base", "test"):
        path = folder / f"{fold}.{part}"
        if not path.is_file():
            found = f"folds here: {', '.join(present)}" if present else "no fold files here (they come with ml-100k)"
            raise DataError(f"{path}: no such file ({found}); pick another data.fold, or data.split=random")
        columns = {"user_id": pa.int64(), "movie_id": pa.int64(), "rating": pa.float32(), "timestamp": pa.int64()}
        out.append(read_table(path, columns, _U_DATA, names=_RATINGS_NAMES))
    return out[0], out[1]


GENOME_FILE = "genome-scores.csv"


def read_genome(folder: str | Path) -> tuple[np.ndarray, np.ndarray] | None:
    """The tag genome (ml-20m/25m/32m `genome-scores.csv`: movieId, tagId, relevance), or None where absent.

    Returns:
        (movie ids, sorted; their relevance vectors, movies x tags float32), tags in tagId order.

    Raises:
        DataError: a movie without a score for every tag (the genome is dense by construction).
    """
    path = Path(folder) / GENOME_FILE
    if not path.is_file():
        return None
    table = read_table(path, {"movieId": pa.int64(), "tagId": pa.int64(), "relevance": pa.float32()}, _CSV)
    movie, tag = table["movieId"].to_numpy(), table["tagId"].to_numpy()
    movie_ids, movie_row = np.unique(movie, return_inverse=True)
    tag_ids, tag_column = np.unique(tag, return_inverse=True)
    if len(movie) != len(movie_ids) * len(tag_ids):
        raise DataError(
            f"{path}: {len(movie):,} scores for {len(movie_ids):,} movies x {len(tag_ids):,} tags; every movie needs "
            "a score for every tag (is the file complete?)"
        )
    matrix = np.zeros((len(movie_ids), len(tag_ids)), np.float32)
    matrix[movie_row, tag_column] = table["relevance"].to_numpy()
    return movie_ids, matrix


def _split_genres(movies: pa.Table) -> pa.Table:
    """Turn the `A|B|C` genre strings into lists, with old spellings mapped to the current ones."""
    genres = pc.split_pattern(movies["genres"], "|")
    flat = pc.list_flatten(genres).to_numpy(zero_copy_only=False)
    flat = np.array([_GENRE_ALIASES.get(g, g) for g in flat], dtype=object) if len(flat) else flat
    keep = flat != NO_GENRES
    lengths = pc.fill_null(pc.list_value_length(genres), 0).to_numpy()
    rows = np.repeat(np.arange(len(lengths)), lengths)
    kept_lengths = np.bincount(rows[keep], minlength=len(lengths))
    offsets = np.r_[0, np.cumsum(kept_lengths)].astype(np.int32)
    lists = pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat[keep].tolist(), pa.string()))
    return movies.set_column(movies.column_names.index("genres"), "genres", lists)


def rating_checks(user: np.ndarray, movie: np.ndarray, rating: np.ndarray, unknown: np.ndarray) -> list[tuple]:
    """The checks every rating passes, as (bad-row mask, reason, fix, column, values); `unknown` marks movie ids
    missing from the catalogue. Shared by the in-memory reader and the streamed one (`ratings_stream`)."""
    out_of_range = ~((rating >= RATING_RANGE[0]) & (rating <= RATING_RANGE[1]))
    ids = "ids are whole numbers from 0 up; fix the id"
    return [
        (user < 0, "user id is negative", ids, "user_id", user),
        (movie < 0, "movie id is negative", ids, "movie_id", movie),
        (out_of_range, "rating outside 0.5..5.0", "ratings are stars from 0.5 to 5.0", "rating", rating),
        (unknown, "movie id not in the movies file", "add the movie to the movies file or drop the rating", "movie_id", movie),
    ]  # fmt: skip


def _validate_ratings(release: Release, on_bad_rows: OnBadRows) -> pa.Table:
    """Check ratings (ids, range, catalogue, one per user and movie); drop or report offenders."""
    ratings = release.ratings
    path = release.files[0]
    user = ratings["user_id"].to_numpy()
    movie = ratings["movie_id"].to_numpy()
    rating = ratings["rating"].to_numpy()
    unknown = ~pc.is_in(ratings["movie_id"], value_set=release.movies["movie_id"]).to_numpy(zero_copy_only=False)
    keep = np.ones(len(rating), dtype=bool)
    for mask, reason, fix, name, values in rating_checks(user, movie, rating, unknown):
        if not mask.any():
            continue
        if on_bad_rows == "skip":
            release.bad_rows.add(path, reason, int((mask & keep).sum()))
            keep &= ~mask
            continue
        value = values[int(np.flatnonzero(mask)[0])]
        raise DataError(
            f"{path} line {first_line(path, mask, _RATINGS_FORMAT[release.kind])}, column {_column(release, name)}: "
            f"{reason} ({value}); {fix}, or pass data.on_bad_rows=skip"
        )
    keep = _drop_repeated_pairs(release, keep, on_bad_rows)
    return ratings.filter(pa.array(keep)) if not keep.all() else ratings


def _drop_repeated_pairs(release: Release, keep: np.ndarray, on_bad_rows: OnBadRows) -> np.ndarray:
    """`keep` without the ratings that a later rating of the same (user, movie) replaces (or raise under "error")."""
    path = release.files[0]
    kept = None if keep.all() else np.flatnonzero(keep)
    columns = [release.ratings[c].to_numpy() for c in ("user_id", "movie_id", "timestamp")]
    user, movie, timestamp = columns if kept is None else [c[kept] for c in columns]
    rows, keys = _repeated_pairs(user, movie)
    if not len(rows):
        return keep
    if on_bad_rows == "error":
        second = rows[1:][keys[1:] == keys[0]][0]  # rows are in file order: rows[0] is the first repeated pair
        first, again = file_lines(path, _RATINGS_FORMAT[release.kind], np.array([rows[0], second]))
        raise DataError(
            f"{path} lines {first} and {again}: user {user[rows[0]]} rated movie {movie[rows[0]]} twice (one rating "
            "per user and movie); delete one of the lines, or pass data.on_bad_rows=skip to keep the latest rating "
            "of each pair"
        )
    by_pair = np.lexsort((timestamp[rows], keys))  # stable: equal timestamps stay in file order
    pairs = keys[by_pair]
    replaced = rows[by_pair[:-1][pairs[1:] == pairs[:-1]]]  # all but the last, latest rating of each pair
    release.bad_rows.add(path, "duplicate (user, movie): kept the latest", len(replaced))
    keep = keep.copy()
    keep[replaced if kept is None else kept[replaced]] = False
    return keep


def _repeated_pairs(user: np.ndarray, movie: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows whose (user, movie) occurs more than once, in file order, and their pair keys (ids must be >= 0)."""
    none = np.zeros(0, np.int64)
    if len(user) < 2:
        return none, none
    same_user = user[1:] == user[:-1]
    if np.all((user[1:] > user[:-1]) | (same_user & (movie[1:] > movie[:-1]))):
        return none, none  # sorted by user, then movie, as MovieLens writes them: no pair can repeat
    key = _pair_key(user, movie)
    ordered = np.sort(key)
    repeated = np.unique(ordered[1:][ordered[1:] == ordered[:-1]])
    if not len(repeated):
        return none, none
    rows = np.flatnonzero(np.isin(key, repeated))
    return rows, key[rows]


def _pair_key(user: np.ndarray, movie: np.ndarray) -> np.ndarray:
    """One int64 per (user, movie), equal only for equal pairs."""
    span = int(movie.max()) + 1
    if (int(user.max()) + 1) * span < 2**63:
        return user.astype(np.int64) * span + movie
    _, user_index = np.unique(user, return_inverse=True)  # ids too large to combine: use their ranks
    _, movie_index = np.unique(movie, return_inverse=True)
    return user_index.astype(np.int64) * (int(movie_index.max()) + 1) + movie_index


def _column(release: Release, name: str) -> int:
    """1-based column of the ratings column `name` in the ratings file."""
    if release.kind == "csv":
        return read_header(release.files[0], _CSV).index(_CSV_NAMES[name]) + 1
    return _RATINGS_NAMES.index(name) + 1


def parse_years(titles: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """Release year from titles like `Toy Story (1995)`; 0 where the title carries none."""
    found = pc.extract_regex(titles, r"\((?P<year>\d{4})(?:[-–]\d{0,4})?\)\s*$")
    years = pc.struct_field(found, "year")
    return pc.fill_null(pc.cast(years, pa.int32()), 0).to_numpy(zero_copy_only=False)
