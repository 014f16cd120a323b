"""`mmdlrm features summaries` joins what it can: movieId-keyed sources always, TMDB only through a links.csv; each
source's text is its own row."""

from __future__ import annotations

import json

import pytest

from mmdlrm.cli import main
from mmdlrm.features.inputs import read_passages
from tests.features.release_layouts import write_release

MELU_FIELDS = ["Toy Story", "1995", "G", "22 Nov 1995", "Animation", "Lasseter", "W", "Hanks", "A boy's toys.", "url"]


@pytest.fixture()
def sources(tmp_path):
    """A TMDB CSV, MeLU plots and DBpedia abstracts, each for a different movie."""
    (tmp_path / "tmdb.csv").write_text('id,overview\n801,"Toys, alive."\n813,Snow and money.\n')
    (tmp_path / "melu.dat").write_text("::".join(["5", *MELU_FIELDS]) + "\n")
    (tmp_path / "dbpedia.json").write_text(json.dumps({"7": "A samurai plays two gangs against each other."}))
    return {name: str(tmp_path / file) for name, file in
            (("tmdb", "tmdb.csv"), ("melu", "melu.dat"), ("dbpedia", "dbpedia.json"))}  # fmt: skip


def _summaries(tmp_path, *args: str) -> int:
    return main(["features", "summaries", *args, "--out", str(tmp_path / "out.csv")])


def test_without_links_the_movie_id_sources_are_written_and_tmdb_is_named_as_not_joined(tmp_path, sources, capsys):
    assert _summaries(tmp_path, "--tmdb", sources["tmdb"], "--melu", sources["melu"], "--dbpedia", sources["dbpedia"]) == 0
    assert read_passages(tmp_path / "out.csv") == {
        "dbpedia_abstract": {7: "A samurai plays two gangs against each other."},
        "melu_credits": {5: "Directed by Lasseter. Starring Hanks. Rated G."},
        "melu_plot": {5: "A boy's toys."},
    }
    err = capsys.readouterr().err
    assert f"tmdb not joined: {sources['tmdb']} keys movies by TMDB id, and no --links" in err
    assert "wrote the texts of 2 movies" in err and "(melu_plot 1, melu_credits 1, dbpedia_abstract 1; not joined: tmdb)" in err


def test_a_release_without_links_csv_is_named_with_the_reason(tmp_path, sources, capsys):
    ml_1m = write_release(tmp_path / "ml-1m", "ml-1m")
    assert _summaries(tmp_path, "--links", str(ml_1m), "--tmdb", sources["tmdb"], "--dbpedia", sources["dbpedia"]) == 0
    assert read_passages(tmp_path / "out.csv") == {"dbpedia_abstract": {7: "A samurai plays two gangs against each other."}}
    err = capsys.readouterr().err
    assert f"{ml_1m / 'links.csv'}: no such file, so no tmdbId -> movieId mapping" in err


def test_tmdb_joins_through_the_links_csv_of_a_release_folder(tmp_path, sources, capsys):
    csv_release = write_release(tmp_path / "csv", "csv")  # links.csv: movie m has tmdbId 800 + m
    (tmp_path / "tmdb.csv").write_text('id,overview,tagline,keywords\n801,"Toys, alive.",To infinity.,"[{""id"": 1, ""name"": ""toy""}]"\n'
                                       "813,Snow and money.,,\n")  # fmt: skip
    assert _summaries(tmp_path, "--links", str(csv_release), "--tmdb", sources["tmdb"], "--melu", sources["melu"]) == 0
    passages = read_passages(tmp_path / "out.csv")
    assert passages["tmdb_overview"] == {1: "Toys, alive.", 13: "Snow and money."}
    assert passages["tmdb_keywords"] == {1: "To infinity. Keywords: toy."}
    assert passages["melu_plot"] == {5: "A boy's toys."}


def test_with_links_movies_the_release_lacks_are_left_out_and_counted(tmp_path, sources, capsys):
    csv_release = write_release(tmp_path / "csv", "csv")
    (tmp_path / "dbpedia.json").write_text(json.dumps({"7": "Samurai.", "987654": "Not in this release."}))
    assert _summaries(tmp_path, "--links", str(csv_release), "--dbpedia", sources["dbpedia"]) == 0
    assert read_passages(tmp_path / "out.csv") == {"dbpedia_abstract": {7: "Samurai."}}
    assert f"1 movies not in {csv_release / 'links.csv'} left out" in capsys.readouterr().err


def test_a_links_path_that_does_not_exist_is_an_error_whatever_the_sources(tmp_path, sources, capsys):
    for given in (["--dbpedia", sources["dbpedia"]], ["--tmdb", sources["tmdb"], "--dbpedia", sources["dbpedia"]]):
        assert _summaries(tmp_path, "--links", str(tmp_path / "nope" / "links.csv"), *given) == 2
        assert f"--links {tmp_path / 'nope' / 'links.csv'}: no such file or folder" in capsys.readouterr().err
        assert not (tmp_path / "out.csv").exists()


def test_no_usable_source_is_an_error_that_says_why(tmp_path, sources, capsys):
    assert _summaries(tmp_path, "--tmdb", sources["tmdb"]) == 2
    err = capsys.readouterr().err
    assert "no summary source can be used (tmdb not joined:" in err and "give --melu or --dbpedia" in err
    assert not (tmp_path / "out.csv").exists()
    assert _summaries(tmp_path) == 2
    assert "no summary source can be used; give --melu or --dbpedia (keyed by movieId)" in capsys.readouterr().err


def test_dbpedia_abstracts_that_are_not_text_are_named_and_nothing_is_written(tmp_path, capsys):
    dbpedia = tmp_path / "dbpedia.json"
    cases = {  # what the JSON holds -> the sentence that names it
        json.dumps({"7": 12, "8": "Fine."}): "the abstract of movie 7 is a number, not text; expected a JSON object",
        json.dumps([{"7": "A list."}]): "the JSON is a list; expected a JSON object mapping each movieId to its abstract",
        json.dumps({"seven": "x"}): "key 'seven' is not a movieId (a whole number); expected a JSON object",
        json.dumps({"7": None, "8": " "}): "no movie has a text in dbpedia_abstract; nothing was written to",
    }
    for text, message in cases.items():
        dbpedia.write_text(text)
        assert _summaries(tmp_path, "--dbpedia", str(dbpedia)) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, err
        assert not (tmp_path / "out.csv").exists()


def test_missing_binary_and_non_utf8_source_files_are_named_with_what_was_expected(tmp_path, sources, capsys):
    missing = tmp_path / "nope.dat"
    for option, expected in (("--melu", "MeLU's movies_extrainfos.dat"), ("--dbpedia", "a JSON object mapping"),
                             ("--tmdb", "a TMDB movies CSV with id and overview columns")):  # fmt: skip
        assert _summaries(tmp_path, option, str(missing)) == 2
        assert f"{option} {missing}: no such file; give {expected}" in capsys.readouterr().err
    binary = tmp_path / "poster.png"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe")
    csv_release = write_release(tmp_path / "csv", "csv")
    for given in (["--melu", str(binary)], ["--dbpedia", str(binary)], ["--links", str(csv_release), "--tmdb", str(binary)]):
        assert _summaries(tmp_path, *given) == 2
        err = capsys.readouterr().err
        assert f"{binary}: holds binary data, not " in err and "expected " in err and "\\x" not in err, err
        assert "Traceback" not in err
    latin1 = tmp_path / "melu-latin1.dat"
    latin1.write_bytes("::".join(["5", "Amélie", *MELU_FIELDS[1:8], "Une fée.", "url"]).encode("latin-1") + b"\n")
    assert _summaries(tmp_path, "--melu", str(latin1)) == 0
    assert f"{latin1} line 1: not valid UTF-8 (byte 0xE9); reading the file as Latin-1" in capsys.readouterr().err
    assert read_passages(tmp_path / "out.csv")["melu_plot"] == {5: "Une fée."}
    (tmp_path / "dbpedia-latin1.json").write_bytes('{"7": "Amélie"}'.encode("latin-1"))
    assert _summaries(tmp_path, "--dbpedia", str(tmp_path / "dbpedia-latin1.json")) == 2
    assert "dbpedia-latin1.json: not UTF-8 text (byte 0xE9), which JSON is; expected a JSON object" in capsys.readouterr().err
