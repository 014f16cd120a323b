"""Posters where a run has them: `recommend --similar` names each movie's poster file, the report shows them."""

from __future__ import annotations

import base64
import io
import re
from pathlib import Path

import pytest
from PIL import Image

from mmdlrm.cli import main
from mmdlrm.inspection.posters import poster_files, poster_path, thumbnail_uri
from mmdlrm.inspection.run import open_run

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """An ids-only debug run on a synthetic release that has its own posters/ (a few seconds)."""
    tmp = tmp_path_factory.mktemp("posters")
    args = ["train", "--config", str(REPO / "configs" / "debug.yaml"), f"output_dir={tmp / 'runs'}",
            f"data.cache_dir={tmp / 'data'}", "data.synthetic.media=true", "train.max_epochs=1"]  # fmt: skip
    assert main(args) == 0
    return tmp / "runs" / "debug"


def test_poster_files_are_the_releases_posters_by_movie_id(run):
    opened = open_run(run)
    posters = poster_files(opened)
    movies = opened.data.movies["movie_id"].tolist()
    assert sorted(posters) == movies
    release = Path(opened.data.manifest["source"]["folder"])
    assert poster_path(opened, movies[3]) == release / "posters" / f"{movies[3]}.png"
    assert poster_path(opened, 10**9) is None


def test_recommend_similar_names_each_movies_poster(run, capsys):
    movie = int(open_run(run).data.movies["movie_id"][0])
    assert main(["recommend", str(run), "--similar", str(movie), "-k", "4"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"nearest to {movie} ") and lines[0].endswith(f"(poster {poster_path(open_run(run), movie)}):")
    assert lines[1].split()[-2:] == ["genres", "poster"]
    for line in lines[2:]:
        listed, path = int(line.split()[1]), Path(line.split()[-1])
        assert path.is_file() and path.name == f"{listed}.png"


def test_the_report_shows_the_sample_recommendations_posters(run, tmp_path):
    assert main(["report", str(run), "--out", str(tmp_path / "report.html")]) == 0
    html = (tmp_path / "report.html").read_text()
    posters = re.findall(r'<img class="poster" alt="poster of [^"]*" src="data:image/jpeg;base64,([^"]+)">', html)
    assert len(posters) == 3 * 10  # three sample users, ten movies each, every one with a poster
    with Image.open(io.BytesIO(base64.b64decode(posters[0]))) as image:
        assert image.format == "JPEG" and image.size == (64, 64)  # a copy, never enlarged (at most 96 pixels high)


def test_an_unreadable_poster_gives_no_thumbnail(tmp_path):
    (tmp_path / "7.jpg").write_bytes(b"not an image")
    assert thumbnail_uri(tmp_path / "7.jpg") is None
    assert thumbnail_uri(tmp_path / "8.jpg") is None
    Image.new("RGB", (40, 60), "red").save(tmp_path / "9.jpg", "PNG")  # a PNG named .jpg, as ml-1m's 3575.jpg
    assert thumbnail_uri(tmp_path / "9.jpg").startswith("data:image/jpeg;base64,")
