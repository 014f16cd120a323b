"""Readers for every release layout, and bad-input errors that name file, line and column."""

from pathlib import Path

import numpy as np
import pytest

from mmdlrm.data.movielens import detect_release, parse_years, read_release
from mmdlrm.data.tables import DataError
from tests.conftest import shared

MOVIES_CSV = (
    "movieId,title,genres\n"
    "1,Toy Story (1995),Adventure|Animation|Children|Comedy|Fantasy\n"
    '11,"American President, The (1995)",Comedy|Drama|Romance\n'
    "20,Untitled Project,(no genres listed)\n"
)
RATINGS_CSV = "userId,movieId,rating,timestamp\n1,1,4.0,964982703\n1,11,3.5,964981247\n7,20,0.5,964982224\n7,1,5.0,964983815\n"


def write_csv_release(folder: Path, ratings: str = RATINGS_CSV, movies: str = MOVIES_CSV, newline: str = "\n") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ratings.csv").write_bytes(ratings.replace("\n", newline).encode())
    (folder / "movies.csv").write_bytes(movies.replace("\n", newline).encode())
    return folder


def test_csv_release_with_crlf_links_and_tags(tmp_path):
    folder = write_csv_release(tmp_path / "ml-latest-small", newline="\r\n")
    (folder / "links.csv").write_text("movieId,imdbId,tmdbId\r\n1,0114709,862\r\n11,0112346,\r\n")
    (folder / "tags.csv").write_text('userId,movieId,tag,timestamp\r\n1,1,"funny, sweet",1445714994\r\n')
    release = read_release(folder)
    assert release.kind == "csv"
    assert release.ratings.column_names == ["user_id", "movie_id", "rating", "timestamp"]
    assert release.ratings["rating"].to_pylist() == [4.0, 3.5, 0.5, 5.0]
    assert release.ratings["timestamp"].to_pylist()[0] == 964982703
    movies = release.movies.to_pylist()
    assert movies[1]["title"] == "American President, The (1995)"
    assert movies[0]["genres"] == ["Adventure", "Animation", "Children", "Comedy", "Fantasy"]
    assert movies[2]["genres"] == []  # "(no genres listed)" is no genre
    assert release.links["imdb_id"].to_pylist() == ["0114709", "0112346"]  # leading zeros kept
    assert release.links["tmdb_id"].to_pylist() == [862, None]
    assert release.tags["tag"].to_pylist() == ["funny, sweet"]


def test_dat_release_ml1m_layout_latin1(tmp_path):
    folder = tmp_path / "ml-1m"
    folder.mkdir()
    (folder / "ratings.dat").write_text("1::1193::5::978300760\n1::661::3::978302109\n2::1193::4::978298413\n")
    (folder / "movies.dat").write_bytes(
        "1193::One Flew Over the Cuckoo's Nest (1975)::Drama\n661::James and the Giant Peach (1996)::Animation|Children's|Musical\n"
        "3::Yoj\u00e9mb\u00f3 (1961)::Action\n".encode("latin-1")
    )
    release = read_release(folder)
    assert release.kind == "dat"
    assert release.ratings["movie_id"].to_pylist() == [1193, 661, 1193]
    assert release.ratings["rating"].to_pylist() == [5.0, 3.0, 4.0]
    movies = {m["movie_id"]: m for m in release.movies.to_pylist()}
    assert movies[661]["genres"] == ["Animation", "Children", "Musical"]  # old spelling mapped
    assert movies[3]["title"] == "Yoj\u00e9mb\u00f3 (1961)"


def test_100k_release_layout(tmp_path):
    folder = tmp_path / "ml-100k"
    folder.mkdir()
    (folder / "u.data").write_text("196\t242\t3\t881250949\n186\t302\t3\t891717742\n22\t242\t1\t878887116\n")
    flags_242 = ["0"] * 19
    flags_242[5] = "1"  # Comedy
    flags_302 = ["0"] * 19
    flags_302[6], flags_302[16] = "1", "1"  # Crime, Thriller
    (folder / "u.item").write_bytes(
        (f"242|Kolya (1996)|24-Jan-1997||http://x|{'|'.join(flags_242)}\n"
         f"302|L.A. Confidential (1997)|01-Jan-1997||http://y|{'|'.join(flags_302)}\n").encode("latin-1")
    )  # fmt: skip
    release = read_release(folder)
    assert release.kind == "100k"
    movies = {m["movie_id"]: m["genres"] for m in release.movies.to_pylist()}
    assert movies == {242: ["Comedy"], 302: ["Crime", "Thriller"]}
    assert release.ratings.num_rows == 3


def test_detect_release_explains_what_it_looks_for(tmp_path):
    with pytest.raises(DataError, match="no ratings.csv .* ratings.dat .* u.data"):
        detect_release(tmp_path)
    with pytest.raises(DataError, match="not a folder"):
        detect_release(tmp_path / "missing")


@pytest.mark.parametrize(
    "ratings, message",
    [
        ("userId,movieId,rating,timestamp\n1,1,4.0,9\n1,11,abc,9\n", r"ratings.csv line 3, column 3 \(rating\): 'abc' is not a number"),
        ("userId,movieId,rating,timestamp\n1,1,4.0,9\n1,11,6.0,9\n", r"ratings.csv line 3, column 3: rating outside 0.5..5.0 \(6.0\)"),
        ("userId,movieId,rating,timestamp\n1,1,4.0,9\n1,999,3.0,9\n", r"ratings.csv line 3, column 2: movie id not in the movies file \(999\)"),
        ("userId,movieId,rating,timestamp\n1,1,4.0,9\n1,11,3.0\n", r"ratings.csv line 3: expected 4 columns, got 3"),
        ("userId,movieId,timestamp\n1,1,9\n", r"ratings.csv line 1: missing column rating"),
        ("", r"ratings.csv: file is empty"),
        ("userId,movieId,rating,timestamp\n", r"ratings.csv: no data rows after the header"),
        ("userId,movieId,rating,timestamp\n1,1,,9\n", r"ratings.csv line 2, column 3 \(rating\): empty value"),
    ],
    ids=["non-numeric", "out-of-range", "unknown-movie", "truncated", "missing-column", "empty", "header-only", "empty-value"],
)
def test_bad_input_names_file_line_and_column(tmp_path, ratings, message):
    folder = write_csv_release(tmp_path / "rel", ratings=ratings)
    with pytest.raises(DataError, match=message):
        read_release(folder)


def test_missing_movies_file_is_named(tmp_path):
    folder = write_csv_release(tmp_path / "rel")
    (folder / "movies.csv").unlink()
    with pytest.raises(DataError, match=r"movies.csv: file not found"):
        read_release(folder)


def test_skip_mode_counts_and_drops_bad_rows(tmp_path):
    ratings = (
        "userId,movieId,rating,timestamp\n1,1,4.0,9\n1,11,abc,9\n1,11,6.0,9\n2,999,3.0,9\n2,1,3.0\n3,20,2.5,9\n"
    )
    release = read_release(write_csv_release(tmp_path / "rel", ratings=ratings), on_bad_rows="skip")
    assert release.ratings["user_id"].to_pylist() == [1, 3]
    assert release.bad_rows.total == 4
    assert release.bad_rows.counts["ratings.csv: rating outside 0.5..5.0"] == 1
    assert release.bad_rows.counts["ratings.csv: movie id not in the movies file"] == 1


def test_years_from_titles():
    import pyarrow as pa

    titles = pa.array(["Toy Story (1995)", "Fawlty Towers (1975-1979)", "No Year", "Babylon 5 (1994) ", "1984 (1984)"])
    np.testing.assert_array_equal(parse_years(titles), [1995, 1975, 0, 1994, 1984])


def test_real_ml_latest_small():
    release = read_release(shared("ml-latest-small"))
    assert release.ratings.num_rows == 100_836
    assert release.movies.num_rows == 9_742
    assert release.ratings["user_id"].to_numpy().max() == 610
    assert release.links.num_rows == 9_742 and release.tags.num_rows == 3_683


def test_real_ml1m_catalogue_reads_in_latin1(tmp_path):
    folder = tmp_path / "ml-1m"
    folder.mkdir()
    (folder / "movies.dat").write_bytes((shared("ml-1m") / "movies.dat").read_bytes())
    (folder / "ratings.dat").write_text("1::1::5::978300760\n")
    release = read_release(folder)
    assert release.movies.num_rows == 3_883
    assert "Children" in {g for gs in release.movies["genres"].to_pylist() for g in gs}
