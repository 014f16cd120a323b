"""What the encoders read: posters (movieId -> image file) and summaries (movieId -> text).

Inputs take the shapes of the reference notebook: a folder of `<movieId>.jpg` images or a `posters.csv`
(movieId, path), and a `summaries.csv` (movieId, summary). Small adapters turn public sources into that CSV:
TMDB's `overview` (joined through MovieLens `links.csv` tmdbId), MeLU's ml-1m plots, DBpedia abstracts.
Movies without a summary get one built from MovieLens itself: title, genres and the most frequent tags.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from mmdlrm.features.encoders import FeatureError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
PATH_COLUMNS = ("path", "poster", "file", "filename", "poster_path")
TEXT_COLUMNS = ("summary", "overview", "plot", "text")


def read_posters(source: str | Path) -> dict[int, Path]:
    """movieId -> image file, from a folder of `<movieId>.<ext>` files or a CSV (movieId, path)."""
    source = Path(source)
    if source.is_dir():
        return {int(p.stem): p for p in sorted(source.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES and p.stem.isdigit()}
    table = _read_csv(source)
    column = _pick(source, table, PATH_COLUMNS)
    paths = table[column].to_pylist()
    return {int(m): (source.parent / p) for m, p in zip(table["movieId"].to_pylist(), paths) if p}


def read_summaries(source: str | Path) -> dict[int, str]:
    """movieId -> summary text, from a CSV with movieId and summary (or overview / plot / text)."""
    source = Path(source)
    table = _read_csv(source)
    column = _pick(source, table, TEXT_COLUMNS)
    return {int(m): t.strip() for m, t in zip(table["movieId"].to_pylist(), table[column].to_pylist()) if t and t.strip()}


def write_summaries(summaries: dict[int, str], path: str | Path) -> Path:
    """Write movieId, summary rows (sorted by movieId) as the CSV `read_summaries` reads."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["movieId", "summary"])
        writer.writerows(sorted(summaries.items()))
    tmp.replace(path)
    return path


def tmdb_overviews(tmdb_csv: str | Path, links_csv: str | Path) -> dict[int, str]:
    """movieId -> TMDB `overview`, joining TMDB's `id` to the tmdbId of MovieLens links.csv."""
    tmdb = _read_csv(Path(tmdb_csv), {"id": pa.int64(), "overview": pa.string()}, ["id", "overview"])
    links = _read_csv(Path(links_csv), {"movieId": pa.int64(), "tmdbId": pa.int64()}, ["movieId", "tmdbId"])
    joined = links.join(tmdb, keys="tmdbId", right_keys="id", join_type="inner")
    return {int(m): t.strip() for m, t in zip(joined["movieId"].to_pylist(), joined["overview"].to_pylist()) if t and t.strip()}


def melu_plots(dat: str | Path) -> dict[int, str]:
    """movieId -> plot from MeLU's ml-1m `movies_extrainfos.dat` ('::'-separated; plot is the 10th field)."""
    out = {}
    with open(dat, encoding="utf-8") as f:
        for line_number, line in enumerate(f, 1):
            fields = line.rstrip("\r\n").split("::")
            if len(fields) < 10 or not fields[0].isdigit():
                raise FeatureError(f"{dat} line {line_number}: expected 11 '::'-separated fields with a movie id first")
            plot = fields[9].strip()
            if plot and plot != "N/A":
                out[int(fields[0])] = plot
    return out


def dbpedia_abstracts(path: str | Path) -> dict[int, str]:
    """movieId -> abstract from a JSON object {MovieID: abstract}."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise FeatureError(f"{path} line {err.lineno}, column {err.colno}: not valid JSON ({err.msg})") from None
    return {int(k): v.strip() for k, v in data.items() if isinstance(v, str) and v.strip()}


def catalogue_texts(release: str | Path, top_tags: int = 5) -> dict[int, str]:
    """movieId -> "Title (year). Genres: a, b. Tags: x, y." from a release's movies.csv and tags.csv."""
    release = Path(release)
    movies = _read_csv(release / "movies.csv", {"movieId": pa.int64(), "title": pa.string(), "genres": pa.string()})
    tags: dict[int, list[str]] = {}
    if (release / "tags.csv").is_file():
        table = _read_csv(release / "tags.csv", {"movieId": pa.int64(), "tag": pa.string()}, ["movieId", "tag"])
        table = table.filter(pc.is_valid(table["tag"]))
        counts = table.group_by(["movieId", "tag"]).aggregate([([], "count_all")])
        counts = counts.sort_by([("movieId", "ascending"), ("count_all", "descending"), ("tag", "ascending")])
        for movie, tag in zip(counts["movieId"].to_pylist(), counts["tag"].to_pylist()):
            kept = tags.setdefault(movie, [])
            if len(kept) < top_tags:
                kept.append(tag)
    out = {}
    for movie, title, genres in zip(*(movies[c].to_pylist() for c in ("movieId", "title", "genres"))):
        text = f"{title}."
        listed = [g for g in (genres or "").split("|") if g and g != "(no genres listed)"]
        if listed:
            text += f" Genres: {', '.join(listed)}."
        if movie in tags:
            text += f" Tags: {', '.join(tags[movie])}."
        out[movie] = text
    return out


def _read_csv(path: Path, types: dict | None = None, columns: list[str] | None = None) -> pa.Table:
    if not path.is_file():
        raise FeatureError(f"{path}: no such file")
    try:
        return pacsv.read_csv(
            path,
            parse_options=pacsv.ParseOptions(newlines_in_values=True),
            convert_options=pacsv.ConvertOptions(column_types=types or {"movieId": pa.int64()}, include_columns=columns),
        )
    except (pa.ArrowInvalid, KeyError) as err:
        raise FeatureError(f"{path}: cannot read it as CSV with a movieId column ({err})") from None


def _pick(path: Path, table: pa.Table, candidates: tuple[str, ...]) -> str:
    for name in candidates:
        if name in table.column_names:
            return name
    raise FeatureError(
        f"{path} line 1: no {' / '.join(candidates)} column (header is {','.join(table.column_names)}); "
        f"name the column {candidates[0]}"
    )
