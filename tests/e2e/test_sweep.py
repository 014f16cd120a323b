"""The sweep: every grid point trained, the choice made on validation alone, a stopped sweep continued."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from mmdlrm.cli import main
from mmdlrm.config import ConfigError
from mmdlrm.sweep import read_grid

REPO = Path(__file__).resolve().parents[2]


def test_grid_files_in_both_shapes_and_their_errors(tmp_path):
    grid = tmp_path / "g.yaml"
    grid.write_text("model.embedding_dim: [4, 8]\nmodel.over_arch: [[8], [16, 8]]\n")
    assert read_grid(grid) == [
        ["model.embedding_dim=4", "model.over_arch=[8]"], ["model.embedding_dim=4", "model.over_arch=[16, 8]"],
        ["model.embedding_dim=8", "model.over_arch=[8]"], ["model.embedding_dim=8", "model.over_arch=[16, 8]"],
    ]  # fmt: skip
    grid.write_text("- {}\n- {model.history_length: 20, model.ranking.loss: bpr}\n")
    assert read_grid(grid) == [[], ["model.history_length=20", "model.ranking.loss=bpr"]]
    grid.write_text("just a string\n")
    with pytest.raises(ConfigError, match="a grid maps dotted config keys to lists of values"):
        read_grid(grid)


def test_sweep_chooses_on_validation_and_continues_where_it_stopped(tmp_path, capsys):
    grid = tmp_path / "dims.yaml"
    grid.write_text("model.embedding_dim: [4, 16]\n")
    args = ["sweep", "--config", str(REPO / "configs" / "debug.yaml"), "--grid", str(grid), f"output_dir={tmp_path / 'runs'}",
            f"data.cache_dir={tmp_path / 'data'}", "train.max_epochs=2", "train.min_epochs=2", "train.tensorboard=false"]  # fmt: skip
    assert main(args) == 0
    folder = tmp_path / "runs" / "dims"
    summary = json.loads((folder / "sweep.json").read_text())
    vals = {p["name"]: p["val"] for p in summary["points"]}
    assert summary["chosen"] == min(vals, key=vals.get) and summary["monitor"] == "rmse"
    for point in summary["points"]:
        run = json.loads((folder / point["name"] / "results.json").read_text())
        assert point["val"] == pytest.approx(run["epochs"][run["best_epoch"]]["val"]["rmse"])
        assert point["test"]["rmse"] == pytest.approx(run["test"]["rmse"])
    rmse = [p["test"]["rmse"] for p in summary["points"]]
    assert summary["test_mean_sd"]["rmse"][0] == pytest.approx(sum(rmse) / 2)
    assert (folder / "sweep.png").read_bytes()[:4] == b"\x89PNG" and "(chosen)" in (folder / "sweep.md").read_text()

    (folder / "sweep.json").unlink()
    before = (folder / "p00" / "results.json").stat().st_mtime_ns
    capsys.readouterr()
    assert main(args) == 0  # a finished point is read back, not trained again
    assert (folder / "p00" / "results.json").stat().st_mtime_ns == before
    assert json.loads((folder / "sweep.json").read_text())["chosen"] == summary["chosen"]


@pytest.mark.parametrize("grid", sorted((REPO / "configs" / "sweeps").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_grid_reads_and_names_real_keys(grid):
    from mmdlrm.config import load_config

    text = grid.read_text()
    assert text.startswith("#"), "each grid opens with a comment saying what it is for and on which config"
    comment = " ".join(line for line in text.splitlines() if line.startswith("#"))
    base = re.search(r"configs/[\w.-]+\.yaml", comment)
    assert base and (REPO / base[0]).is_file(), f"{grid.name}: the comment names no shipped config"
    for point in read_grid(grid):
        load_config(REPO / base[0], point)
