"""Bad input the readers refuse or repair: repeated ratings, negative ids, NaN, encodings, compression, blank lines."""

from __future__ import annotations

import gzip
import io
import logging
import zipfile

import numpy as np
import pytest

from mmdlrm.data.movielens import detect_release, read_release
from mmdlrm.data.tables import DataError
from tests.data.test_movielens import MOVIES_CSV, write_csv_release

HEADER = "userId,movieId,rating,timestamp\n"


def _error(folder, **kw) -> str:
    with pytest.raises(DataError) as err:
        read_release(folder, **kw)
    return str(err.value)


def test_repeated_user_movie_pair_names_both_lines(tmp_path):
    ratings = HEADER + "1,1,4.0,10\n7,20,3.0,10\n\n1,11,2.0,10\n1,1,5.0,20\n"  # a blank line before the repeat
    message = _error(write_csv_release(tmp_path / "rel", ratings=ratings))
    assert "ratings.csv lines 2 and 6: user 1 rated movie 1 twice" in message
    assert "data.on_bad_rows=skip to keep the latest rating of each pair" in message


def test_skip_keeps_the_latest_rating_of_each_pair_as_a_plain_loop_does(tmp_path):
    rng = np.random.default_rng(0)
    n = 400
    users = rng.integers(0, 12, n)
    movies = rng.choice([1, 11, 20], n)
    stamps = rng.integers(0, 30, n)  # few distinct times: many ties, broken by the later line
    stars = rng.choice(np.arange(1, 11) / 2, n)
    lines = [f"{u},{m},{r},{t}\n" for u, m, r, t in zip(users, movies, stars, stamps)]
    release = read_release(write_csv_release(tmp_path / "rel", ratings=HEADER + "".join(lines)), on_bad_rows="skip")

    latest: dict[tuple[int, int], tuple[int, int, float]] = {}
    for line, (u, m, r, t) in enumerate(zip(users, movies, stars, stamps)):
        if (u, m) not in latest or (t, line) > latest[(u, m)][:2]:
            latest[(u, m)] = (t, line, r)
    expected = sorted((u, m, t, r) for (u, m), (t, _, r) in latest.items())
    got = sorted(zip(*(release.ratings[c].to_pylist() for c in ("user_id", "movie_id", "timestamp", "rating"))))
    assert got == expected
    assert release.bad_rows.counts == {"ratings.csv: duplicate (user, movie): kept the latest": n - len(latest)}


def test_repeated_pairs_in_a_dat_release_are_found_too(tmp_path):
    folder = tmp_path / "ml-1m"
    folder.mkdir()
    (folder / "ratings.dat").write_text("1::1193::5::978300760\n2::1193::4::978298413\n1::1193::3::978302109\n")
    (folder / "movies.dat").write_text("1193::One Flew Over the Cuckoo's Nest (1975)::Drama\n")
    with pytest.raises(DataError, match="ratings.dat lines 1 and 3: user 1 rated movie 1193 twice"):
        read_release(folder)
    assert read_release(folder, on_bad_rows="skip").ratings["rating"].to_pylist() == [4.0, 3.0]


@pytest.mark.parametrize(
    "row, message",
    [("-4,1,4.0,9", r"ratings.csv line 3, column 1: user id is negative \(-4\)"),
     ("1,-1,4.0,9", r"ratings.csv line 3, column 2: movie id is negative \(-1\)")],
    ids=["user", "movie"],
)  # fmt: skip
def test_negative_ids_are_refused_or_skipped(tmp_path, row, message):
    folder = write_csv_release(tmp_path / "rel", ratings=HEADER + f"1,1,4.0,9\n{row}\n7,20,3.0,9\n")
    assert "fix the id" in _error(folder)
    with pytest.raises(DataError, match=message):
        read_release(folder)
    release = read_release(folder, on_bad_rows="skip")
    assert release.ratings["user_id"].to_pylist() == [1, 7] and release.bad_rows.total == 1


def test_zero_ids_are_fine(tmp_path):
    movies = MOVIES_CSV + "0,Zero (2000),Drama\n"
    release = read_release(write_csv_release(tmp_path / "rel", ratings=HEADER + "0,0,4.0,9\n", movies=movies))
    assert release.ratings["user_id"].to_pylist() == [0]


@pytest.mark.parametrize("text", ["nan", "NaN"])
def test_nan_rating_is_not_a_number(tmp_path, text):
    folder = write_csv_release(tmp_path / "rel", ratings=HEADER + f"1,1,4.0,9\n1,11,{text},9\n")
    with pytest.raises(DataError, match=r"ratings.csv line 3, column 3 \(rating\): NaN is not a number"):
        read_release(folder)
    release = read_release(folder, on_bad_rows="skip")
    assert release.ratings.num_rows == 1 and release.bad_rows.counts == {"ratings.csv: rating is not a number": 1}


def test_na_text_is_not_an_empty_value(tmp_path):
    folder = write_csv_release(tmp_path / "rel", ratings=HEADER + "1,1,NA,9\n")
    with pytest.raises(DataError, match=r"ratings.csv line 2, column 3 \(rating\): 'NA' is not a number"):
        read_release(folder)


def test_latin1_movies_csv_is_read_with_a_warning_naming_file_and_line(tmp_path, caplog):
    movies = MOVIES_CSV + "3,Yojimbo (Yoj\u00e9mb\u00f3) (1961),Action\n"
    folder = write_csv_release(tmp_path / "rel", ratings=HEADER + "1,3,4.0,9\n")
    (folder / "movies.csv").write_bytes(movies.encode("latin-1"))
    for on_bad_rows in ("error", "skip"):
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            release = read_release(folder, on_bad_rows=on_bad_rows)
        assert release.movies["title"].to_pylist()[-1] == "Yojimbo (Yoj\u00e9mb\u00f3) (1961)"
        assert f"{folder / 'movies.csv'} line 5: not valid UTF-8 (byte 0xE9)" in caplog.text
        assert "reading the file as Latin-1" in caplog.text


def test_utf8_byte_order_mark_is_accepted(tmp_path):
    folder = write_csv_release(tmp_path / "rel")
    for name in ("ratings.csv", "movies.csv"):
        (folder / name).write_bytes(b"\xef\xbb\xbf" + (folder / name).read_bytes())
    release = read_release(folder)
    assert release.ratings.num_rows == 4 and release.movies["movie_id"].to_pylist() == [1, 11, 20]


def _zipped(text: str) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        z.writestr("movies.csv", text)
    return out.getvalue()


@pytest.mark.parametrize(
    "name, data, kind",
    [("ratings.csv", gzip.compress((HEADER + "1,1,4.0,9\n").encode()), "gzip"),
     ("movies.csv", _zipped(MOVIES_CSV), "zip")],
    ids=["gzip", "zip"],
)  # fmt: skip
def test_compressed_file_is_named_as_compressed_without_its_bytes(tmp_path, name, data, kind):
    folder = write_csv_release(tmp_path / "rel")
    (folder / name).write_bytes(data)
    for on_bad_rows in ("error", "skip"):
        message = _error(folder, on_bad_rows=on_bad_rows)
        assert f"{name}: this is a {kind}-compressed file, not text; decompress it" in message
        assert message.isprintable() and "\\x" not in message


@pytest.mark.parametrize("newline", ["\n", "\r\n"], ids=["lf", "crlf"])
@pytest.mark.parametrize(
    "bad_row, message",
    [("1,11,abc,9", "line 12, column 3 (rating): 'abc' is not a number"),
     ("1,11,3.0", "line 12: expected 4 columns, got 3"),
     ("1,11,,9", "line 12, column 3 (rating): empty value"),
     ("1,11,9.0,9", "line 12, column 3: rating outside 0.5..5.0 (9.0)")],
    ids=["not-a-number", "truncated", "empty", "out-of-range"],
)  # fmt: skip
def test_line_numbers_count_blank_lines(tmp_path, newline, bad_row, message):
    lines = [HEADER.strip(), "1,1,4.0,9", "", "", "7,20,3.0,9", "", "7,1,2.0,9", "", "", "", "", bad_row, "7,11,1.0,9"]
    assert lines[11] == bad_row  # file line 12
    folder = write_csv_release(tmp_path / "rel", ratings="\n".join(lines) + "\n", newline=newline)
    assert f"ratings.csv {message}" in _error(folder)


def test_line_numbers_count_quoted_titles_that_span_lines(tmp_path):
    movies = 'movieId,title,genres\n\n1,"Toy Story,\nthe first (1995)",Comedy\n2,"Two (1996)",Drama\nx,Three (1997),Drama\n'
    folder = write_csv_release(tmp_path / "rel", ratings=HEADER + "1,1,4.0,9\n", movies=movies)
    with pytest.raises(DataError, match=r"movies.csv line 6, column 1 \(movieId\): 'x' is not an integer"):
        read_release(folder)


@pytest.mark.parametrize("other", ["u.data", "ratings.dat"])
def test_a_folder_with_two_releases_is_refused(tmp_path, other):
    folder = write_csv_release(tmp_path / "rel")
    (folder / other).write_text("1\t1\t4\t9\n")
    with pytest.raises(DataError, match=rf"holds more than one MovieLens release \(ratings.csv, {other}\); point "
                                        "data.source at a folder with one release"):  # fmt: skip
        detect_release(folder)
