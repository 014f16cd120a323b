"""Tiny MovieLens releases in every layout the readers know, written as the real ones are, for the content path.

The same 12 movies, 30 users and ratings in each layout: ml-100k (u.data + u.item, Latin-1, 19 genre flags), ml-1m
(ratings.dat + movies.dat, `::`, Latin-1, old genre spellings), ml-10m (the ml-1m layout plus tags.dat, half stars)
and CSV (ratings, movies, tags, links .csv, UTF-8, quoted titles). Most (user, movie) pairs are rated, so a random
80/10/10 split leaves every split non-empty; two movies are rated by few users (cold-start movies).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

LAYOUTS = ("ml-100k", "ml-1m", "ml-10m", "csv")
NUM_USERS = 30

MOVIES = [
    (1, "Toy Story (1995)", ["Animation", "Children's", "Comedy"]),
    (2, "Cit\u00e9 des enfants perdus, La (City of Lost Children, The) (1995)", ["Adventure", "Sci-Fi"]),
    (3, "Am\u00e9lie (Fabuleux destin d'Am\u00e9lie Poulain, Le) (2001)", ["Comedy", "Romance"]),
    (5, "Heat (1995)", ["Action", "Crime", "Thriller"]),
    (7, "Y\u00f4jinb\u00f4 (Yojimbo) (1961)", ["Action", "Adventure"]),
    (10, "Seven (a.k.a. Se7en) (1995)", ["Mystery", "Thriller"]),
    (11, "Nothing Listed (1999)", []),
    (13, "Fargo (1996)", ["Comedy", "Crime", "Drama", "Thriller"]),
    (17, "Wallace & Gromit: The Wrong Trousers (1993)", ["Animation", "Children's", "Comedy"]),
    (20, "Crumb (1994)", ["Documentary"]),
    (25, "Nosferatu (Nosferatu, eine Symphonie des Grauens) (1922)", ["Horror"]),
    (32, "Twelve Monkeys (a.k.a. 12 Monkeys) (1995)", ["Mystery", "Sci-Fi", "Thriller"]),
]
MOVIE_IDS = [m for m, _, _ in MOVIES]
COLD = (25, 32)
"""Movies rated by only a few users."""

# (userId, movieId, tag): movie 1 has a tie between "funny" and "toys" (1 each) below "pixar" (2); movie 5 has six
# tags of one count each, so the top five are the first five by name.
TAGS = [
    (1, 1, "pixar"), (2, 1, "pixar"), (3, 1, "toys"), (4, 1, "funny"),
    (1, 5, "pacino"), (2, 5, "heist"), (3, 5, "de niro"), (4, 5, "tense"), (5, 5, "long"), (6, 5, "score"),
    (7, 3, "na\u00efve, charming"), (8, 3, "paris"), (9, 3, "na\u00efve, charming"),
]  # fmt: skip


def ratings(half_stars: bool, seed: int = 0) -> list[tuple[int, int, float, int]]:
    """(userId, movieId, rating, timestamp), sorted by user and movie as MovieLens writes them."""
    rng = np.random.default_rng(seed)
    taste = rng.normal(size=NUM_USERS + 1)
    quality = dict(zip(MOVIE_IDS, rng.normal(size=len(MOVIE_IDS))))
    out = []
    for user in range(1, NUM_USERS + 1):
        for movie in MOVIE_IDS:
            if rng.random() > (0.2 if movie in COLD else 0.9):
                continue
            stars = 3.0 + taste[user] * 0.6 + quality[movie] * 0.8 + rng.normal(scale=0.5)
            stars = np.clip(np.round(stars * 2) / 2 if half_stars else np.round(stars), 0.5 if half_stars else 1, 5)
            out.append((user, movie, float(stars), 978_300_000 + len(out) * 61))
    return out


def write_release(folder: Path, layout: str) -> Path:
    """Write the tiny release into `folder` in `layout` (one of LAYOUTS); returns the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    {"ml-100k": _write_100k, "ml-1m": _write_dat, "ml-10m": _write_dat, "csv": _write_csv}[layout](folder, layout)
    return folder


def _lines(rows: list[tuple], sep: str) -> str:
    return "".join(sep.join(str(v) for v in row) + "\n" for row in rows)


def _write_100k(folder: Path, layout: str) -> None:
    from mmdlrm.data.movielens import ML100K_GENRES

    rows = [(u, m, int(r), t) for u, m, r, t in ratings(half_stars=False)]
    (folder / "u.data").write_text(_lines(rows, "\t"))
    items = []
    for movie, title, genres in MOVIES:
        flags = ["1" if g in genres else "0" for g in ML100K_GENRES]
        flags[0] = "0" if genres else "1"  # ml-100k flags "unknown" where a movie has no genre
        items.append([str(movie), title, "01-Jan-1995", "", f"http://us.imdb.com/M/title-exact?{movie}", *flags])
    (folder / "u.item").write_bytes("".join("|".join(i) + "\n" for i in items).encode("latin-1"))


def _write_dat(folder: Path, layout: str) -> None:
    half = layout == "ml-10m"
    rows = [(u, m, r if half else int(r), t) for u, m, r, t in ratings(half_stars=half)]
    (folder / "ratings.dat").write_text(_lines(rows, "::"))
    movies = [(m, title, "|".join(genres) or "(no genres listed)") for m, title, genres in MOVIES]
    (folder / "movies.dat").write_bytes(_lines(movies, "::").encode("latin-1"))
    if half:  # ml-10m: UserID::MovieID::Tag::Timestamp
        tags = [(u, m, tag, 1_138_000_000 + i) for i, (u, m, tag) in enumerate(TAGS)]
        (folder / "tags.dat").write_bytes(_lines(tags, "::").encode("latin-1"))


def _write_csv(folder: Path, layout: str) -> None:
    def quoted(text: str) -> str:
        return f'"{text}"' if "," in text else text

    rows = [(u, m, r, t) for u, m, r, t in ratings(half_stars=True)]
    (folder / "ratings.csv").write_text("userId,movieId,rating,timestamp\n" + _lines(rows, ","))
    movies = [(m, quoted(title), "|".join(g.replace("Children's", "Children") for g in genres) or "(no genres listed)")
              for m, title, genres in MOVIES]  # fmt: skip
    (folder / "movies.csv").write_text("movieId,title,genres\n" + _lines(movies, ","), encoding="utf-8")
    tags = [(u, m, quoted(tag), 1_138_000_000 + i) for i, (u, m, tag) in enumerate(TAGS)]
    (folder / "tags.csv").write_text("userId,movieId,tag,timestamp\n" + _lines(tags, ","), encoding="utf-8")
    links = [(m, f"{114_700 + m:07d}", 800 + m if m != 11 else "") for m in MOVIE_IDS]
    (folder / "links.csv").write_text("movieId,imdbId,tmdbId\n" + _lines(links, ","))


def write_summaries(path: Path, unknown: tuple[int, ...] = (999,)) -> Path:
    """A summaries CSV for half the movies, plus summaries of `unknown` movies that no layout's catalogue has."""
    rows = [f'{m},"{title.split(" (")[0]}: a summary, with a comma."' for m, title, _ in MOVIES[::2]]
    rows += [f"{m},A film this release does not list." for m in unknown]
    path.write_text("movieId,summary\n" + "\n".join(rows) + "\n", encoding="utf-8")
    return path
