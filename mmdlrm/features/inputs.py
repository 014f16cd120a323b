"""What the encoders read: posters (movieId -> image file) and summaries (movieId -> text).

Inputs take the shapes of the reference notebook: a folder of `<movieId>.jpg` images or a `posters.csv`
(movieId, path), and a `summaries.csv` (movieId, summary). Small adapters turn public sources into that CSV:
TMDB's `overview`, tagline and keywords (joined through MovieLens `links.csv` tmdbId), MeLU's ml-1m plots and
credits, DBpedia abstracts. A summaries CSV may also have a `source` column and several rows per movie, one per
source: `read_passages` keeps each source's text apart, so that each is encoded on its own (see
`mmdlrm.features.extract`). Movies without a summary get one built from MovieLens itself: title, genres and the most
frequent tags, from the release readers of `mmdlrm.data.movielens` (one reader per MovieLens file, every layout).

CSV inputs are UTF-8 with a header line (a byte-order mark is fine); as for the releases (`mmdlrm.data.tables`), a
file that is not valid UTF-8 is read as Latin-1 with a warning naming the file and line. Their header is checked
before pyarrow reads them, so a missing column is named with the header found; a value pyarrow cannot read is
found again with Python's csv module (this path only), so the error names the file line even where a quoted
summary spans lines.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from mmdlrm.data.movielens import read_catalogue, read_links
from mmdlrm.data.tables import OnBadRows
from mmdlrm.features.encoders import FeatureError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
PATH_COLUMNS = ("path", "poster", "file", "filename", "poster_path")
TEXT_COLUMNS = ("summary", "overview", "plot", "text")


def read_posters(source: str | Path) -> dict[int, Path]:
    """movieId -> image file, from a folder of `<movieId>.<ext>` files or a CSV (movieId, path)."""
    source = Path(source)
    if source.is_dir():
        return {int(p.stem): p for p in sorted(source.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES and p.stem.isdigit()}
    column = _pick(source, PATH_COLUMNS, "movieId,path")
    table = _read_csv(source, {"movieId": pa.int64(), column: pa.string()}, ["movieId", column])
    paths = table[column].to_pylist()
    return {int(m): (source.parent / p) for m, p in zip(table["movieId"].to_pylist(), paths) if p}


def read_summaries(source: str | Path) -> dict[int, str]:
    """movieId -> summary text, from a CSV with movieId and summary (or overview / plot / text)."""
    source = Path(source)
    column = _pick(source, TEXT_COLUMNS, "movieId,summary")
    table = _read_csv(source, {"movieId": pa.int64(), column: pa.string()}, ["movieId", column])
    return {int(m): t.strip() for m, t in zip(table["movieId"].to_pylist(), table[column].to_pylist()) if t and t.strip()}


def read_passages(source: str | Path) -> dict[str, dict[int, str]]:
    """source name -> movieId -> text, from a CSV with movieId, source and summary columns (several rows per movie,
    one per source); a CSV without a `source` column is one source, `summary` (`read_summaries`).

    Raises:
        FeatureError: a missing column or a bad row (named by its file line), as `read_summaries`; a movie listed twice
            for one source.
    """
    source = Path(source)
    if "source" not in _header(source)[1]:
        return {"summary": read_summaries(source)}
    column = _pick(source, TEXT_COLUMNS, "movieId,source,summary")
    table = _read_csv(source, {"movieId": pa.int64(), "source": pa.string(), column: pa.string()}, ["movieId", "source", column])
    out: dict[str, dict[int, str]] = {}
    for movie, name, text in zip(*(table[c].to_pylist() for c in ("movieId", "source", column))):
        name = (name or "").strip()
        if not name or not text or not text.strip():
            continue
        texts = out.setdefault(name, {})
        if movie in texts:
            lines = " and ".join(map(str, _rows_of(source, movie, name)[:2]))
            raise FeatureError(f"{source} lines {lines}: movie {movie} has two {name!r} rows; keep one row per movie and source")
        texts[int(movie)] = text.strip()
    return dict(sorted(out.items()))


def _rows_of(path: Path, movie: int, name: str) -> list[int]:
    """The first file lines of the rows of `movie` and source `name` (slow; errors only)."""
    data = _utf8(path, path.read_bytes()).decode("utf-8-sig")
    reader = csv.reader(io.StringIO(data, newline=""))
    header = next(reader)
    columns = header.index("movieId"), header.index("source")
    found, end = [], reader.line_num
    for row in reader:
        line, end = end + 1, reader.line_num
        if len(row) == len(header) and row[columns[0]].strip() == str(movie) and row[columns[1]].strip() == name:
            found.append(line)
    return found


def write_passages(passages: dict[str, dict[int, str]], path: str | Path) -> Path:
    """Write movieId, source, summary rows (by movieId, then source) as the CSV `read_passages` reads."""
    rows = sorted((movie, name, text) for name, texts in passages.items() for movie, text in texts.items())
    return _write_rows(["movieId", "source", "summary"], rows, path)


def write_summaries(summaries: dict[int, str], path: str | Path) -> Path:
    """Write movieId, summary rows (sorted by movieId) as the CSV `read_summaries` reads."""
    return _write_rows(["movieId", "summary"], sorted(summaries.items()), path)


def _write_rows(header: list[str], rows: list[tuple], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
    tmp.replace(path)
    return path


def tmdb_overviews(tmdb_csv: str | Path, links_csv: str | Path) -> dict[int, str]:
    """movieId -> TMDB `overview`, joining TMDB's `id` to the tmdbId of MovieLens links.csv (read by `read_links`)."""
    joined = _tmdb_joined(Path(tmdb_csv), links_csv, ["overview"])
    movies, texts = joined["movie_id"].to_pylist(), joined["overview"].to_pylist()
    return {int(m): t.strip() for m, t in zip(movies, texts) if t and t.strip()}


def _tmdb_joined(tmdb_csv: Path, links_csv: str | Path, columns: list[str]) -> pa.Table:
    """TMDB's `columns` (strings) beside the movie_id that links.csv gives each TMDB `id`."""
    tmdb = _read_csv(tmdb_csv, {"id": pa.int64(), **dict.fromkeys(columns, pa.string())}, ["id", *columns])
    links = read_links(links_csv).select(["movie_id", "tmdb_id"])
    return links.filter(pc.is_valid(links["tmdb_id"])).join(tmdb, keys="tmdb_id", right_keys="id", join_type="inner")


def tmdb_keywords(tmdb_csv: str | Path, links_csv: str | Path) -> dict[int, str]:
    """movieId -> "<tagline> Keywords: a, b, c." from TMDB's `tagline` and `keywords` (a JSON list of {"name": ...});
    empty where the file has neither column (the Kaggle TMDB 5000 file has both)."""
    path = Path(tmdb_csv)
    columns = [c for c in ("tagline", "keywords") if c in _header(path)[1]]
    if not columns:
        return {}
    joined = _tmdb_joined(path, links_csv, columns)
    taglines = joined["tagline"].to_pylist() if "tagline" in columns else [None] * joined.num_rows
    keywords = joined["keywords"].to_pylist() if "keywords" in columns else [None] * joined.num_rows
    out = {}
    for movie, tagline, listed in zip(joined["movie_id"].to_pylist(), taglines, keywords):
        try:
            names = [k["name"] for k in json.loads(listed or "[]") if isinstance(k, dict) and k.get("name")]
        except json.JSONDecodeError:
            names = []
        text = " ".join(part for part in ((tagline or "").strip(), f"Keywords: {', '.join(names)}." if names else "") if part)
        if text:
            out[int(movie)] = text
    return out


def melu_credits(dat: str | Path) -> dict[int, str]:
    """movieId -> "Directed by D. Starring A, B. Rated R." from MeLU's ml-1m `movies_extrainfos.dat` (writers are left
    out: their long credit lines would crowd the cast out of a text encoder's 128 word pieces)."""
    out = {}
    for movie, fields in _melu_rows(dat):
        parts = [(f"Directed by {fields[6]}." if _given(fields[6]) else ""), (f"Starring {fields[8]}." if _given(fields[8]) else ""),
                 (f"Rated {fields[3]}." if _given(fields[3]) else "")]  # fmt: skip
        text = " ".join(p for p in parts if p)
        if text:
            out[movie] = text
    return out


def _given(value: str) -> bool:
    return bool(value.strip()) and value.strip() != "N/A"


def _melu_rows(dat: str | Path):
    """(movieId, fields) of each line of MeLU's '::'-separated file (11 fields, movie id first); text that is not
    UTF-8 is read as Latin-1 with a warning, as the CSV inputs are."""
    path = Path(dat)
    _check_text(path, "MeLU's movies_extrainfos.dat: text lines of 11 '::'-separated fields, the movie id first")
    text = io.StringIO(_utf8(path, path.read_bytes()).decode("utf-8"), newline=None)  # \n, \r\n or \r end lines
    for line_number, line in enumerate(text, 1):
        fields = line.rstrip("\r\n").split("::")
        if len(fields) < 10 or not fields[0].isdigit():
            raise FeatureError(f"{dat} line {line_number}: expected 11 '::'-separated fields with a movie id first")
        yield int(fields[0]), [field.strip() for field in fields]


def melu_plots(dat: str | Path) -> dict[int, str]:
    """movieId -> plot from MeLU's ml-1m `movies_extrainfos.dat` ('::'-separated; plot is the 10th field)."""
    return {movie: fields[9] for movie, fields in _melu_rows(dat) if _given(fields[9])}


DBPEDIA_SHAPE = 'a JSON object mapping each movieId to its abstract, like {"1": "Toy Story is a 1995 film ..."}'


def dbpedia_abstracts(path: str | Path) -> dict[int, str]:
    """movieId -> abstract from a JSON object {MovieID: abstract}; a null abstract is none.

    Raises:
        FeatureError: not a UTF-8 JSON object, a key that is not a movie id, an abstract that is not text.
    """
    path = Path(path)
    _check_text(path, DBPEDIA_SHAPE)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise FeatureError(f"{path}: not UTF-8 text (byte 0x{err.object[err.start]:02X}), which JSON is; expected "
                           f"{DBPEDIA_SHAPE}") from None  # fmt: skip
    except json.JSONDecodeError as err:
        raise FeatureError(f"{path} line {err.lineno}, column {err.colno}: not valid JSON ({err.msg})") from None
    if not isinstance(data, dict):
        raise FeatureError(f"{path}: the JSON is {_json_kind(data)}; expected {DBPEDIA_SHAPE}")
    out = {}
    for key, value in data.items():
        if not key.strip().isdigit():
            raise FeatureError(f"{path}: key {key!r} is not a movieId (a whole number); expected {DBPEDIA_SHAPE}")
        if value is not None and not isinstance(value, str):
            raise FeatureError(
                f"{path}: the abstract of movie {key} is {_json_kind(value)}, not text; expected {DBPEDIA_SHAPE}"
            )
        if value and value.strip():
            out[int(key)] = value.strip()
    return out


def _json_kind(value: object) -> str:
    """What a JSON value is, in words."""
    kinds = ((bool, "true or false"), (int, "a number"), (float, "a number"), (str, "a string"), (list, "a list"),
             (dict, "an object"))  # fmt: skip
    return next((name for kind, name in kinds if isinstance(value, kind)), "null")


def _check_text(path: Path, expected: str) -> None:
    """Refuse a missing, empty or binary (NUL bytes, compressed) file, saying what was `expected`."""
    if not path.is_file():
        found = "a folder, not a file" if path.is_dir() else "no such file"
        raise FeatureError(f"{path}: {found}; expected {expected}")
    with open(path, "rb") as f:
        head = f.read(8192)
    if not head.strip():
        raise FeatureError(f"{path}: the file is empty; expected {expected}")
    if b"\x00" in head or head.startswith((b"\x1f\x8b", b"PK\x03\x04")):
        raise FeatureError(f"{path}: holds binary data, not text (compressed, or the wrong file?); expected {expected}")


def catalogue_texts(release: str | Path, top_tags: int = 5, on_bad_rows: OnBadRows = "error") -> dict[int, str]:
    """movieId -> "Title (year). Genres: a, b. Tags: x, y." for every movie of the release in `release`.

    Movies and tags come from the release readers (`mmdlrm.data.movielens.read_catalogue`), so every layout they
    read works: CSV (movies.csv, tags.csv), ml-1m / ml-10m (movies.dat, tags.dat), ml-100k (u.item, no tags).
    Tags: the `top_tags` most frequent per movie, ties by tag name; blank tags are left out.

    Raises:
        DataError: no release or catalogue in `release`, or a bad movies file (unless on_bad_rows='skip').
    """
    movies, tags = read_catalogue(release, on_bad_rows)
    top: dict[int, list[str]] = {}
    if tags is not None:
        tags = tags.select(["movie_id", "tag"]).filter(pc.not_equal(pc.utf8_trim_whitespace(tags["tag"]), ""))
        counts = tags.group_by(["movie_id", "tag"]).aggregate([([], "count_all")])
        counts = counts.sort_by([("movie_id", "ascending"), ("count_all", "descending"), ("tag", "ascending")])
        for movie, tag in zip(counts["movie_id"].to_pylist(), counts["tag"].to_pylist()):
            kept = top.setdefault(movie, [])
            if len(kept) < top_tags:
                kept.append(tag)
    out = {}
    for movie, title, genres in zip(*(movies[c].to_pylist() for c in ("movie_id", "title", "genres"))):
        text = f"{title}."
        if genres:  # the readers drop "(no genres listed)" and ml-100k's "unknown"
            text += f" Genres: {', '.join(genres)}."
        if top.get(movie):
            text += f" Tags: {', '.join(top[movie])}."
        out[movie] = text
    return out


def _read_csv(path: Path, types: dict[str, pa.DataType] | None = None, columns: list[str] | None = None) -> pa.Table:
    """Read `columns` (all, if None) of a CSV with a header, `types` fixing some of their types."""
    types = types or {"movieId": pa.int64()}
    line, header = _header(path)
    missing = [c for c in dict.fromkeys([*types, *(columns or [])]) if c not in header]
    if missing:
        raise FeatureError(
            f"{path} line {line}: no {', '.join(missing)} column (header is {','.join(header)}); the first line "
            f"must name the columns, {', '.join(missing)} among them"
        )
    data = _utf8(path, path.read_bytes())
    try:
        return pacsv.read_csv(
            pa.BufferReader(data),
            parse_options=pacsv.ParseOptions(newlines_in_values=True),
            convert_options=pacsv.ConvertOptions(column_types=types, include_columns=columns),
        )
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowKeyError) as err:
        raise FeatureError(_first_bad_line(path, data, header, types) or f"{path}: cannot read it as CSV ({err})") from None


def _utf8(path: Path, data: bytes) -> bytes:
    """`data` if it is UTF-8, else read as Latin-1 and re-encoded, with a warning naming the first bad line."""
    try:
        data.decode("utf-8")
        return data
    except UnicodeDecodeError as err:
        log.warning(
            "%s line %d: not valid UTF-8 (byte 0x%02X); reading the file as Latin-1. If its text looks wrong, save "
            "it again as UTF-8", path, data.count(b"\n", 0, err.start) + 1, data[err.start],
        )  # fmt: skip
        return data.decode("latin-1").encode("utf-8")


def _header(path: Path) -> tuple[int, list[str]]:
    """(1-based line, column names) of the first non-blank line of a CSV file."""
    if not path.is_file():
        raise FeatureError(f"{path}: no such file")
    with open(path, "rb") as f:
        start = f.read(8192)
    for magic, kind in ((b"\x1f\x8b", "gzip"), (b"PK\x03\x04", "zip")):
        if start.startswith(magic):
            raise FeatureError(f"{path}: this is a {kind}-compressed file, not CSV text; decompress it first")
    if b"\x00" in start:
        raise FeatureError(f"{path}: holds binary data, not CSV text (is it the right file?); expected a CSV file "
                           "whose first line names its columns")  # fmt: skip
    with open(path, encoding="utf-8-sig", errors="replace", newline="") as f:
        reader = csv.reader(f)
        for row in reader:
            if row:
                return reader.line_num, row  # as pyarrow reads it: quotes removed, spaces kept
    raise FeatureError(f"{path}: the file is empty; it needs a header line naming its columns, then one row per movie")


def _first_bad_line(path: Path, data: bytes, header: list[str], types: dict[str, pa.DataType]) -> str | None:
    """What is wrong with the first row pyarrow could not read, as `<file> line <n>: ...` (slow; errors only)."""
    integers = [(header.index(name), name) for name, dtype in types.items() if pa.types.is_integer(dtype)]
    reader = csv.reader(io.StringIO(data.decode("utf-8-sig"), newline=""))
    seen_header, end = False, 0
    for row in reader:
        line, end = end + 1, reader.line_num  # a quoted value may span lines: report the row's first one
        if not row or not seen_header:
            seen_header = seen_header or bool(row)
            continue
        if len(row) != len(header):
            return f"{path} line {line}: expected {len(header)} fields, got {len(row)}; fix or delete the line"
        for index, name in integers:
            value = row[index].strip()
            if not value.lstrip("+-").isdigit():
                return f"{path} line {line}, column {index + 1} ({name}): {value!r} is not an integer; fix or delete the line"
    return None


def _pick(path: Path, candidates: tuple[str, ...], example: str) -> str:
    """The first of `candidates` that the CSV's header names."""
    line, header = _header(path)
    for name in candidates:
        if name in header:
            return name
    raise FeatureError(
        f"{path} line {line}: no {' / '.join(candidates)} column (header is {','.join(header)}); "
        f"name the column {candidates[0]} (a header like {example})"
    )
