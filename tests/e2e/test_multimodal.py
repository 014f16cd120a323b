"""The multimodal path on the built-in data: posters and summaries encoded once, read by training, exported."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mmdlrm.cli import main
from mmdlrm.data.batches import BatchBuilder, SplitRows
from mmdlrm.data.prepare import load_prepared
from mmdlrm.export import export_run, load_exported

REPO = Path(__file__).resolve().parents[2]
TINY_CLIP = ["features.clip_model=mmdlrm-tiny-clip", "features.clip_pretrained=random", "features.text_encoder=open_clip",
             "features.num_workers=0"]  # fmt: skip


def test_debug_run_with_both_modalities_trains_reports_cold_start_and_exports(tmp_path, capsys):
    args = ["train", "--config", str(REPO / "configs" / "debug.yaml"), f"output_dir={tmp_path / 'runs'}",
            f"data.cache_dir={tmp_path / 'data'}", "features.modalities=both", *TINY_CLIP]  # fmt: skip
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "content: image vectors (64-d) from open_clip:mmdlrm-tiny-clip:random for 200 movies, 0 missing" in err
    assert "cold-start movies" in err
    stores = list((tmp_path / "data" / "features").iterdir())
    assert len(stores) == 1 and json.loads((stores[0] / "manifest.json").read_text())["complete"]
    run = tmp_path / "runs" / "debug"
    results = json.loads((run / "results.json").read_text())
    assert results["test"]["rmse"] < results["baselines"]["global_mean"]["test"]["rmse"]
    assert set(results["test"]["cold_start"]) >= {"rmse", "mae"} and "test_cold_start" in results["baselines"]["bias"]

    exported = load_exported(export_run(run))
    assert set(exported.task.model.content.modalities) == {"image", "text"}
    data = load_prepared(results["prepared_dir"])
    rows = SplitRows.from_prepared(data, "test")
    batch = BatchBuilder(data, exported.config.model, exported.objective.label).build(rows, torch.arange(len(rows)))
    with torch.no_grad():
        _, (_, preds, labels) = exported.task(batch)
    assert (preds - labels).pow(2).mean().sqrt().item() == pytest.approx(results["test"]["rmse"], rel=1e-5)

    # A second run reuses the store: nothing is encoded again, and the encoders having run or not does not change
    # the model's starting weights (the seed is set after them): the same metrics.
    assert main([*args, "name=again"]) == 0
    assert "movies encoded" not in capsys.readouterr().err
    again = json.loads((tmp_path / "runs" / "again" / "results.json").read_text())
    assert again["test"]["rmse"] == pytest.approx(results["test"]["rmse"], rel=1e-6)
    assert [e["train_loss"] for e in again["epochs"]] == pytest.approx([e["train_loss"] for e in results["epochs"]], rel=1e-6)


def test_features_command_and_missing_posters_error(tmp_path, capsys):
    base = ["--config", str(REPO / "configs" / "debug.yaml"), f"data.cache_dir={tmp_path / 'data'}", *TINY_CLIP]
    assert main(["features", "clip", *base, f"features.store={tmp_path / 'store'}"]) == 0
    assert json.loads((tmp_path / "store" / "manifest.json").read_text())["counts"]["movies"] == 200
    no_media = ["train", *base, "data.synthetic.media=false", "features.modalities=image", f"output_dir={tmp_path}"]
    assert main(no_media) == 2
    assert "features.modalities uses images but no posters are given; set features.posters=" in capsys.readouterr().err


def test_tag_genome_is_a_content_modality_where_the_release_has_one(tmp_path, capsys):
    release = tmp_path / "release"
    sizes = ["data.synthetic.num_users=200", "data.synthetic.num_movies=60", "data.synthetic.num_ratings=6000",
             "data.synthetic.media=false"]  # fmt: skip
    assert main(["synth", str(release), *sizes]) == 0
    movies = [int(line.split(",")[0]) for line in (release / "movies.csv").read_text().splitlines()[1:]]
    covered = movies[::2]  # the genome covers every other movie
    rows = [f"{m},{t},{((m * 7 + t * 3) % 100) / 100:.3f}" for m in covered for t in range(1, 9)]
    (release / "genome-scores.csv").write_text("movieId,tagId,relevance\n" + "\n".join(rows) + "\n")
    args = ["train", "--config", str(REPO / "configs" / "debug.yaml"), f"data.source={release}", f"output_dir={tmp_path / 'runs'}",
            f"data.cache_dir={tmp_path / 'data'}", "features.genome=true", "train.max_epochs=1", "train.min_epochs=1"]  # fmt: skip
    assert main(args) == 0
    err = capsys.readouterr().err
    assert f"content: genome vectors (8-d) from tag-genome for {len(movies)} movies, {len(movies) - len(covered)} missing" in err
    exported = load_exported(export_run(tmp_path / "runs" / "debug"))
    assert exported.task.model.content.modalities == ["genome"]
    (release / "genome-scores.csv").unlink()  # a release without a genome trains without it
    assert main([*args, "name=no-genome"]) == 0
    assert "has no genome-scores.csv; training without the tag genome" in capsys.readouterr().err
