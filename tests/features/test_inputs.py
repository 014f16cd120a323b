"""Inputs and adapters: posters and summaries in the reference notebook's shapes, public text sources."""

from __future__ import annotations

import gzip
import json

import pytest

from mmdlrm.features.encoders import FeatureError
from mmdlrm.features.inputs import (
    catalogue_texts,
    dbpedia_abstracts,
    melu_credits,
    melu_plots,
    read_passages,
    read_posters,
    read_summaries,
    tmdb_overviews,  # fmt: skip
    write_passages,
    write_summaries,
)
from tests.conftest import shared


def test_posters_from_a_folder_or_a_csv(tmp_path):
    (tmp_path / "img").mkdir()
    for name in ("1.jpg", "22.png", "notes.txt", "cover.jpg"):
        (tmp_path / "img" / name).write_bytes(b"x")
    assert read_posters(tmp_path / "img") == {1: tmp_path / "img" / "1.jpg", 22: tmp_path / "img" / "22.png"}
    (tmp_path / "posters.csv").write_text("movieId,poster_path\n1,img/1.jpg\n5,\n")
    assert read_posters(tmp_path / "posters.csv") == {1: tmp_path / "img" / "1.jpg"}


def test_summaries_round_trip_with_commas_quotes_and_newlines(tmp_path):
    texts = {3: 'A "heist", gone wrong,\nin two lines.', 1: "Plain."}
    path = write_summaries(texts, tmp_path / "summaries.csv")
    assert read_summaries(path) == {1: "Plain.", 3: 'A "heist", gone wrong,\nin two lines.'}


def test_passages_round_trip_one_row_per_movie_and_source(tmp_path):
    passages = {"tmdb_overview": {3: 'A "heist", gone wrong,\nin two lines.', 1: "Plain."}, "melu_plot": {3: "Heist."}}
    path = write_passages(passages, tmp_path / "summaries.csv")
    assert path.read_text().splitlines()[:3] == ["movieId,source,summary", "1,tmdb_overview,Plain.", "3,melu_plot,Heist."]
    assert read_passages(path) == {"melu_plot": {3: "Heist."}, "tmdb_overview": {1: "Plain.", 3: 'A "heist", gone wrong,\nin two lines.'}}
    legacy = write_summaries({1: "Plain."}, tmp_path / "legacy.csv")  # no source column: one source
    assert read_passages(legacy) == {"summary": {1: "Plain."}}
    (tmp_path / "twice.csv").write_text("movieId,source,summary\n1,melu_plot,a\n2,melu_plot,b\n1,melu_plot,c\n")
    with pytest.raises(FeatureError, match="twice.csv lines 2 and 4: movie 1 has two 'melu_plot' rows; keep one row per movie and source"):
        read_passages(tmp_path / "twice.csv")
    (tmp_path / "bad.csv").write_text("movieId,source,summary\n1,melu_plot,a\nx,melu_plot,b\n")
    with pytest.raises(FeatureError, match=r"bad.csv line 3, column 1 \(movieId\): 'x' is not an integer"):
        read_passages(tmp_path / "bad.csv")


def test_summary_csv_without_a_text_column_names_the_fix(tmp_path):
    (tmp_path / "s.csv").write_text("movieId,blurb\n1,hi\n")
    with pytest.raises(FeatureError, match=r"s.csv line 1: no summary / overview / plot / text column \(header is movieId,blurb\)"):
        read_summaries(tmp_path / "s.csv")


def test_tmdb_overviews_join_through_links(tmp_path):
    (tmp_path / "links.csv").write_text("movieId,imdbId,tmdbId\n1,0114709,862\n2,0113497,\n7,0000001,999\n")
    (tmp_path / "tmdb.csv").write_text('budget,id,overview,title\n1,862,"Toys, alive.",Toy Story\n2,5,Other,X\n3,999,,Empty\n')
    assert tmdb_overviews(tmp_path / "tmdb.csv", tmp_path / "links.csv") == {1: "Toys, alive."}


def test_melu_plots_and_dbpedia_abstracts(tmp_path):
    fields = ["1", "Toy Story", "1995", "G", "22 Nov 1995", "Animation", "Lasseter", "W", "Hanks", "A boy's toys.", "url"]
    (tmp_path / "m.dat").write_text("::".join(fields) + "\r\n" + "::".join(["2", *fields[1:9], "N/A", "u"]) + "\r\n")
    assert melu_plots(tmp_path / "m.dat") == {1: "A boy's toys."}
    assert melu_credits(tmp_path / "m.dat") == {1: "Directed by Lasseter. Starring Hanks. Rated G.",
                                                 2: "Directed by Lasseter. Starring Hanks. Rated G."}  # fmt: skip
    (tmp_path / "bad.dat").write_text("Toy Story::1995\n")
    with pytest.raises(FeatureError, match="bad.dat line 1: expected 11"):
        melu_plots(tmp_path / "bad.dat")
    (tmp_path / "d.json").write_text(json.dumps({"781": "Stealing Beauty is a 1996 drama."}))
    assert dbpedia_abstracts(tmp_path / "d.json") == {781: "Stealing Beauty is a 1996 drama."}
    (tmp_path / "broken.json").write_text('{"1": "x",\n "2": }')
    with pytest.raises(FeatureError, match="broken.json line 2, column"):
        dbpedia_abstracts(tmp_path / "broken.json")


def test_catalogue_text_has_title_genres_and_most_frequent_tags(tmp_path):
    (tmp_path / "movies.csv").write_text('movieId,title,genres\n1,"Heat, The (1995)",Action|Crime\n2,Nothing (2000),(no genres listed)\n')
    (tmp_path / "tags.csv").write_text("userId,movieId,tag,timestamp\n1,1,tense,1\n2,1,pacino,1\n3,1,tense,1\n")
    texts = catalogue_texts(tmp_path, top_tags=1)
    assert texts == {1: "Heat, The (1995). Genres: Action, Crime. Tags: tense.", 2: "Nothing (2000)."}


def test_real_sources_cover_most_of_ml_latest_small():
    data = shared("")
    links = data / "ml-latest-small" / "links.csv"
    tmdb = tmdb_overviews(data / "tmdb-5000" / "tmdb_5000_movies.csv", links)
    melu = melu_plots(data / "melu-ml1m" / "movies_extrainfos.dat")
    dbpedia = dbpedia_abstracts(data / "ml1m-dbpedia-abstracts" / "dbpedia_abstracts.json")
    movies = set(catalogue_texts(data / "ml-latest-small"))
    covered = movies & (set(tmdb) | set(melu) | set(dbpedia))
    assert len(movies) == 9742 and 5300 <= len(covered) <= 5500  # the data README says 5,417
    assert "Andy" in melu[1] and len(read_posters(data / "ml-1m-posters")) >= 3800


@pytest.mark.parametrize(
    "reader, text, missing",
    [(read_summaries, "id,summary\n1,hi\n", "movieId"),
     (read_posters, "id,path\n1,img/1.jpg\n", "movieId")],
    ids=["summaries", "posters"],
)  # fmt: skip
def test_csv_without_a_movie_id_column_names_file_line_header_and_fix(tmp_path, reader, text, missing):
    (tmp_path / "in.csv").write_text(text)
    header = text.split("\n")[0]
    with pytest.raises(FeatureError, match=rf"in.csv line 1: no {missing} column \(header is {header}\); the first line must name"):
        reader(tmp_path / "in.csv")


def test_posters_csv_without_a_path_column_names_the_fix(tmp_path):
    (tmp_path / "p.csv").write_text("movieId,image_url\n1,http://x\n")
    with pytest.raises(FeatureError, match=r"p.csv line 1: no path / poster / .* column \(header is movieId,image_url\); name the column path"):
        read_posters(tmp_path / "p.csv")


def test_a_bad_movie_id_is_reported_at_its_file_line_after_a_multiline_summary(tmp_path):
    (tmp_path / "s.csv").write_text('movieId,summary\n1,"two\nlines"\n\nseven,"x"\n')
    with pytest.raises(FeatureError, match=r"s.csv line 5, column 1 \(movieId\): 'seven' is not an integer"):
        read_summaries(tmp_path / "s.csv")


def test_summaries_with_a_byte_order_mark_or_in_latin1_are_read(tmp_path, caplog):
    (tmp_path / "bom.csv").write_bytes(b"\xef\xbb\xbfmovieId,summary\n1,Plain.\n")
    assert read_summaries(tmp_path / "bom.csv") == {1: "Plain."}
    (tmp_path / "latin1.csv").write_bytes("movieId,summary\n1,Plain.\n2,Caf\u00e9 society.\n".encode("latin-1"))
    assert read_summaries(tmp_path / "latin1.csv") == {1: "Plain.", 2: "Caf\u00e9 society."}
    assert "latin1.csv line 3: not valid UTF-8 (byte 0xE9)" in caplog.text


def test_a_compressed_summaries_file_is_named_as_such(tmp_path):
    (tmp_path / "s.csv").write_bytes(gzip.compress(b"movieId,summary\n1,x\n"))
    with pytest.raises(FeatureError, match="s.csv: this is a gzip-compressed file, not CSV text; decompress it first"):
        read_summaries(tmp_path / "s.csv")
