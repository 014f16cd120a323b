"""The content path on every release layout: summaries + catalogue text encoded, trained on, exported, recommended.

Issue 15: a text-modality run on ml-100k stopped at `<folder>/movies.csv: no such file`; the catalogue now comes
from the release readers, so ml-100k (u.item), ml-1m / ml-10m (movies.dat, tags.dat) and CSV releases all work.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mmdlrm.cli import main
from mmdlrm.export import load_exported
from tests.features.release_layouts import LAYOUTS, MOVIE_IDS, ratings, write_release, write_summaries

REPO = Path(__file__).resolve().parents[2]
TEXT = ["features.modalities=text", "features.text_encoder=open_clip", "features.clip_model=mmdlrm-tiny-clip",
        "features.clip_pretrained=random", "features.num_workers=0"]  # fmt: skip
ONE_EPOCH = ["train.max_epochs=1", "train.min_epochs=1", "train.batch_size=64", "eval.batch_size=1024",
             "train.tensorboard=false"]  # fmt: skip


@pytest.mark.parametrize("layout", LAYOUTS)
def test_one_epoch_text_run_trains_tests_exports_recommends_and_reports(tmp_path, layout, capsys):
    release = write_release(tmp_path / layout, layout)
    summaries = write_summaries(tmp_path / "summaries.csv", unknown=(999, 1999))
    config = ["--config", str(REPO / "configs" / "debug.yaml"), f"data.source={release}", f"data.cache_dir={tmp_path / 'data'}",
              f"features.summaries={summaries}", *TEXT]  # fmt: skip

    assert main(["features", "clip", *config]) == 0
    err = capsys.readouterr().err
    assert f"{summaries}: 2 of its movieIds are not in the catalogue of {release} (e.g. 999, 1999)" in err
    described = len(MOVIE_IDS[::2])  # write_summaries covers every other movie; the rest get catalogue text
    assert f"features: {len(MOVIE_IDS)} movies encoded" in err and f"{len(MOVIE_IDS) - described} texts from the catalogue" in err
    assert "2 summaries and 0 posters of movies not in the catalogue" in err
    (store,) = (tmp_path / "data" / "features").iterdir()
    assert json.loads((store / "manifest.json").read_text())["counts"]["summaries_not_in_catalogue"] == 2

    assert main(["train", *config, *ONE_EPOCH, f"output_dir={tmp_path / 'runs'}"]) == 0
    err = capsys.readouterr().err
    assert "movies encoded" not in err, "training reuses the store `features clip` made"
    assert f"content: text vectors (64-d) from open_clip:mmdlrm-tiny-clip:random for {len(MOVIE_IDS)} movies, 0 missing" in err
    run = tmp_path / "runs" / "debug"
    results = json.loads((run / "results.json").read_text())
    assert len(results["epochs"]) == 1 and results["test"]["rmse"] > 0
    assert json.loads(Path(results["prepared_dir"], "manifest.json").read_text())["source"]["folder"] == str(release)

    assert main(["export", str(run)]) == 0
    exported = load_exported(run / "model.pt")
    assert exported.task.model.content.modalities == ["text"] and sorted(exported.movie_ids) == MOVIE_IDS
    seen = {}
    for user, movie, _, _ in ratings(half_stars=False):  # the same (user, movie) pairs in every layout
        seen.setdefault(user, set()).add(movie)
    user = min(seen, key=lambda u: len(seen[u]))
    assert len(MOVIE_IDS) - len(seen[user]) >= 3
    capsys.readouterr()
    assert main(["recommend", str(run), "--user", str(user), "-k", "3"]) == 0
    listed = [line.split() for line in capsys.readouterr().out.splitlines() if line.strip()[:1].isdigit()]
    assert len(listed) == 3 and all(int(row[1]) in set(MOVIE_IDS) - seen[user] for row in listed)
    assert main(["report", str(run)]) == 0
    assert "Sample recommendations" in (run / "report.html").read_text()
