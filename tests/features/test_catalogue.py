"""Catalogue texts come from the release readers, for every layout they read (ml-100k, ml-1m, ml-10m, CSV)."""

from __future__ import annotations

import os
import shutil
from collections import Counter

import pytest

from mmdlrm.config import DataConfig, FeatureConfig
from mmdlrm.data.movielens import read_catalogue, read_release
from mmdlrm.data.tables import DataError
from mmdlrm.features.extract import input_fingerprint
from mmdlrm.features.inputs import catalogue_texts, dbpedia_abstracts, melu_plots
from tests.conftest import shared
from tests.features.release_layouts import LAYOUTS, write_release


def _reference(release, top_tags: int = 5) -> dict[int, str]:
    """The text format, built with plain Python from what `read_release` gives."""
    counts: dict[int, Counter] = {}
    for row in (release.tags.to_pylist() if release.tags is not None else []):
        if row["tag"].strip():
            counts.setdefault(row["movie_id"], Counter())[row["tag"]] += 1
    out = {}
    for movie in release.movies.to_pylist():
        text = f"{movie['title']}."
        if movie["genres"]:
            text += f" Genres: {', '.join(movie['genres'])}."
        tags = sorted(counts.get(movie["movie_id"], Counter()).items(), key=lambda kv: (-kv[1], kv[0]))[:top_tags]
        if tags:
            text += f" Tags: {', '.join(tag for tag, _ in tags)}."
        out[movie["movie_id"]] = text
    return out


@pytest.mark.parametrize("layout", LAYOUTS)
def test_catalogue_texts_equal_what_the_release_readers_give(tmp_path, layout):
    folder = write_release(tmp_path / layout, layout)
    release = read_release(folder)
    assert catalogue_texts(folder) == _reference(release)
    assert catalogue_texts(folder, top_tags=1) == _reference(release, top_tags=1)
    movies, tags = read_catalogue(folder)
    assert movies.equals(release.movies)
    assert (tags is None and release.tags is None) or tags.equals(release.tags)


def test_every_layout_gives_the_same_titles_and_genres(tmp_path):
    texts = {layout: catalogue_texts(write_release(tmp_path / layout, layout)) for layout in LAYOUTS}
    assert texts["ml-100k"] == texts["ml-1m"]  # no tags in either
    assert texts["ml-10m"] == texts["csv"]  # the same tags, in tags.dat and tags.csv
    # Latin-1 titles decoded, old genre spellings mapped, "(no genres listed)" / ml-100k's "unknown" left out.
    assert texts["ml-1m"][2] == "Cit\u00e9 des enfants perdus, La (City of Lost Children, The) (1995). Genres: Adventure, Sci-Fi."
    assert texts["ml-100k"][1] == "Toy Story (1995). Genres: Animation, Children, Comedy."
    assert texts["ml-100k"][11] == texts["csv"][11] == "Nothing Listed (1999)."
    assert texts["ml-10m"][1] == "Toy Story (1995). Genres: Animation, Children, Comedy. Tags: pixar, funny, toys."
    assert texts["csv"][3].endswith("Tags: na\u00efve, charming, paris.")


def test_blank_tags_are_left_out(tmp_path):
    folder = write_release(tmp_path / "csv", "csv")
    with open(folder / "tags.csv", "a") as f:
        f.write("1,11, ,1\n2,11, ,1\n")
    assert catalogue_texts(folder)[11] == "Nothing Listed (1999)."


@pytest.mark.parametrize("layout", ["ml-1m", "ml-10m", "csv", "ml-100k"])
def test_a_folder_with_only_the_catalogue_is_read_by_its_movies_file(tmp_path, layout):
    full = write_release(tmp_path / layout, layout)
    for ratings in ("u.data", "ratings.dat", "ratings.csv"):
        if (full / ratings).is_file():
            shutil.copytree(full, tmp_path / "catalogue", ignore=shutil.ignore_patterns(ratings))
    assert catalogue_texts(tmp_path / "catalogue") == catalogue_texts(full)


def test_a_folder_without_a_release_or_catalogue_is_named(tmp_path):
    (tmp_path / "notes.txt").write_text("not a release")
    with pytest.raises(DataError, match=r"no ratings.csv .*, ratings.dat .* or u.data .* here"):
        catalogue_texts(tmp_path)


@pytest.mark.parametrize("layout, edited", [("ml-100k", "u.item"), ("ml-1m", "movies.dat"), ("ml-10m", "tags.dat"),
                                            ("csv", "tags.csv")])  # fmt: skip
def test_the_store_fingerprint_follows_the_layouts_catalogue_files(tmp_path, layout, edited):
    folder = write_release(tmp_path / layout, layout)
    cfg = FeatureConfig(modalities="text")
    data = DataConfig(source=str(folder), cache_dir=str(tmp_path / "cache"))
    before = input_fingerprint(cfg, data, folder)
    os.utime(folder / edited, ns=(1, 1))
    after = input_fingerprint(cfg, data, folder)
    assert after["catalogue"] != before["catalogue"]
    ratings = {"ml-100k": "u.data", "csv": "ratings.csv"}.get(layout, "ratings.dat")
    os.utime(folder / ratings, ns=(1, 1))
    assert input_fingerprint(cfg, data, folder) == after, "ratings are not part of the catalogue"


def test_real_ml_1m_catalogue_and_its_movie_id_keyed_summaries():
    data = shared("")
    texts = catalogue_texts(shared("ml-1m"))  # this copy holds movies.dat and users.dat, no ratings
    assert len(texts) == 3883 and texts[661] == "James and the Giant Peach (1996). Genres: Animation, Children, Musical."
    melu = melu_plots(data / "melu-ml1m" / "movies_extrainfos.dat")
    dbpedia = dbpedia_abstracts(data / "ml1m-dbpedia-abstracts" / "dbpedia_abstracts.json")
    assert not (set(melu) | set(dbpedia)) - set(texts), "both are keyed by ml-1m movieIds"
    assert len(set(texts) & (set(melu) | set(dbpedia))) >= 3800
