"""Inspecting a trained synthetic run: learnt vs planted genre similarity, neighbours, recommendations, ranking."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from mmdlrm.cli import main
from mmdlrm.data.synthetic import PlantedTruth
from mmdlrm.inspection.embeddings import GenreReport, cosine_similarity, genre_report, planted_correlation
from mmdlrm.inspection.recommend import UnknownIdError, recommend
from mmdlrm.inspection.run import open_run
from mmdlrm.retrieval.recommenders import recommender_for

REPO = Path(__file__).resolve().parents[2]
THRESHOLD = 0.5


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A synthetic run big enough to learn the planted genre structure (about 15 s)."""
    tmp = tmp_path_factory.mktemp("inspect")
    args = ["train", "--config", str(REPO / "configs" / "debug.yaml"), f"output_dir={tmp / 'runs'}", f"data.cache_dir={tmp / 'data'}",
            "data.synthetic.num_users=3000", "data.synthetic.num_movies=600", "data.synthetic.num_ratings=150000",
            "data.synthetic.media=false", "model.embedding_dim=16", "train.batch_size=2048", "train.max_epochs=4"]  # fmt: skip
    assert main(args) == 0
    return tmp / "runs" / "debug"


def test_learnt_genre_similarity_follows_the_planted_one(run, capsys):
    assert main(["inspect", "genres", str(run)]) == 0
    out = capsys.readouterr().out
    correlation = json.loads((run / "genres.json").read_text())["planted_correlation"]
    assert correlation > THRESHOLD and f"{correlation:.3f}" in out
    for name in ("genre_similarity.png", "genre_projection.png"):
        assert (run / "plots" / name).read_bytes()[:4] == b"\x89PNG"
    # Random genre vectors cannot reach the threshold: the test could fail.
    report = genre_report(open_run(run).model)
    truth = PlantedTruth.load(Path(open_run(run).data.manifest["source"]["folder"]) / "truth.npz")
    chance = []
    for seed in range(20):
        random = cosine_similarity(torch.randn(len(report.names), 16, generator=torch.Generator().manual_seed(seed)))
        chance.append(planted_correlation(GenreReport(report.names, random, report.order, report.projection), truth))
    assert max(chance) < THRESHOLD - 0.1


def test_recommendations_skip_seen_movies_and_unknown_users_are_explained(run, capsys):
    opened = open_run(run)
    user_id = int(opened.data.users["user_id"][5])
    items, fallback = recommend(recommender_for(opened), user_id, k=10)
    assert len(items) == 10 and not fallback and items == sorted(items, key=lambda r: -r.score)
    train = opened.data.splits["train"]
    seen = set(opened.data.movies["movie_id"][train["movie"][train["user"] == 5]].tolist())
    assert not seen & {r.movie_id for r in items}
    with pytest.raises(UnknownIdError, match="user 99999999 is not in this run's data .*--popular-if-unknown"):
        recommend(recommender_for(opened), 99_999_999)
    assert main(["recommend", str(run), "--user", "99999999"]) == 2
    assert main(["recommend", str(run), "--user", "99999999", "--popular-if-unknown", "-k", "3"]) == 0
    out = capsys.readouterr().out
    assert "popularity fallback" in out
    most = int(opened.data.movies["movie_id"][np.argmax(opened.data.movies["train_count"])])
    assert f"{most:>8}" in out.splitlines()[2]  # the most-rated movie first
    assert main(["recommend", str(run), "--similar", str(most), "-k", "5"]) == 0
    assert main(["inspect", "movies", str(run), "--movie", str(most), "-k", "5"]) == 0
    listing = capsys.readouterr().out.splitlines()
    assert listing[0].startswith(f"nearest to {most} ") and len(listing) == 2 * (1 + 1 + 5)  # two listings of 5
    genre_names = set(opened.data.genres)
    for line in listing[2:7]:  # each neighbour with its genres, as the user listing shows them
        assert set(line.split()[-1].split("|")) <= genre_names, line
    assert main(["inspect", "movies", str(run), "--movie", "123456789"]) == 2
    assert "movie 123456789 is not in this model's catalogue" in capsys.readouterr().err


def test_recommending_for_one_user_reads_no_whole_split_column(run, parquet_reads):
    opened = open_run(run)
    recommender = recommender_for(opened)
    parquet_reads.clear()
    for position in (0, 7, opened.data.num_users - 1):
        items, _ = recommend(recommender, int(opened.data.users["user_id"][position]), k=10)
        rated = set(np.concatenate([pq.read_table(opened.data.split_path(s), filters=[("user", "=", position)])["movie"].to_numpy()
                                    for s in ("train", "val", "test")]).tolist())  # fmt: skip
        assert parquet_reads == ["train.parquet", "val.parquet", "test.parquet"]  # the check's own reads, no more
        parquet_reads.clear()
        index = {int(m): i for i, m in enumerate(opened.data.movies["movie_id"])}
        assert len(items) == 10 and not rated & {index[r.movie_id] for r in items}


def test_inspect_ranking_on_the_run(run, capsys):
    assert main(["inspect", "ranking", str(run), "--users", "50"]) == 0
    metrics = json.loads((run / "ranking.json").read_text())
    for who in ("model", "popularity", "ease"):
        assert metrics[who]["users"] == 50
        assert all(0.0 <= metrics[who][m] <= 1.0 for m in ("recall@10", "ndcg@20", "hit_rate@20"))
        assert metrics[who]["recall@20"] >= metrics[who]["recall@10"]
    assert "DLRM" in capsys.readouterr().out


PROBE = """<script>window.addEventListener("load", () => { const imgs = [...document.images];
document.body.setAttribute("data-images", imgs.length + ":" + imgs.filter(i => i.complete && i.naturalWidth > 0).length); });
</script>"""


def test_report_is_one_self_contained_page_whose_images_load_in_chromium(run, tmp_path, capsys):
    assert main(["report", str(run), "--out", str(tmp_path / "report.html")]) == 0
    html = (tmp_path / "report.html").read_text()
    assert "Test results: cold-start movies" in html and "Spearman correlation of learnt vs planted" in html
    assert 'src="http' not in html and 'src="/' not in html  # nothing fetched from elsewhere
    assert html.count('src="data:image/png;base64,') == 4  # curves, predictions, genre heatmap and projection
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        pytest.skip("no Chromium here (setup.sh installs Debian's where it can)")
    (tmp_path / "probe.html").write_text(html.replace("</body>", PROBE + "</body>"))
    dom = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=10000",
                          "--dump-dom", (tmp_path / "probe.html").as_uri()], capture_output=True, text=True, timeout=120)  # fmt: skip
    assert 'data-images="4:4"' in dom.stdout, dom.stderr[-2000:]


def test_a_run_folder_with_missing_files_says_what_is_missing(run, tmp_path, capsys):
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "config.yaml").write_text((run / "config.yaml").read_text())
    assert main(["inspect", "genres", str(tmp_path / "half")]) == 2
    err = capsys.readouterr().err
    assert "not a finished run (results.json, checkpoints/best/complete.json missing)" in err


@pytest.mark.parametrize("k", ["0", "-3", "ten"])
def test_k_must_be_a_positive_whole_number(run, k, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["recommend", str(run), "--user", "1", "-k", k])
    assert exit_.value.code == 2
    assert "argument -k" in capsys.readouterr().err


@pytest.mark.parametrize("damage", ["truncated", "empty", "truncated, without its sum"])
def test_a_damaged_model_pt_says_to_export_again_and_that_works(run, tmp_path, damage, capsys):
    copy = tmp_path / "run"
    shutil.copytree(run, copy)  # times kept: model.pt stays newer than the checkpoint, so it is not re-exported
    model = copy / "model.pt"
    size = model.stat().st_size
    with open(model, "r+b") as f:
        f.truncate(0 if damage == "empty" else size // 2)
    if "without its sum" in damage:
        (copy / "model.pt.sha256").unlink()
    assert main(["recommend", str(copy), "--user", "1", "-k", "3"]) == 2
    err = capsys.readouterr().err
    assert f"mmdlrm recommend: error: {model}: " in err and f"run `mmdlrm export {copy}` again" in err, err
    assert "Traceback" not in err
    assert main(["export", str(copy)]) == 0
    # The file records its run folder, so its size follows the copy's path; what it recommends does not.
    assert main(["recommend", str(copy), "--user", "1", "-k", "3"]) == 0
    again = capsys.readouterr().out
    assert main(["recommend", str(run), "--user", "1", "-k", "3"]) == 0
    assert again == capsys.readouterr().out.replace(str(run), str(copy))


def test_a_missing_folder_and_a_folder_of_runs_are_named_for_what_they_are(run, tmp_path, capsys):
    assert main(["recommend", str(tmp_path / "nope"), "--user", "1"]) == 2
    assert f"{tmp_path / 'nope'}: no such run folder; runs are under output_dir" in capsys.readouterr().err
    shutil.copytree(run, tmp_path / "runs" / "mine")
    assert main(["recommend", str(tmp_path / "runs"), "--user", "1"]) == 2
    assert f"{tmp_path / 'runs'}: a folder of runs, not a run; name one of them: {tmp_path / 'runs' / 'mine'}" in \
        capsys.readouterr().err


def test_a_missing_ranker_is_named_before_any_model_loads(run, tmp_path, monkeypatch, capsys):
    def never(folder):
        raise AssertionError(f"{folder} was loaded before the folders were checked")

    monkeypatch.setattr("mmdlrm.retrieval.recommenders.open_run", never)
    assert main(["recommend", str(run), "--user", "1", "--ranker", str(tmp_path / "nope")]) == 2
    assert f"{tmp_path / 'nope'}: no such run folder" in capsys.readouterr().err
