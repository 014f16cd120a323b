"""End to end through the command line, in-process: train, evaluate, run folder contents, user errors."""

import json
from pathlib import Path

import pytest
import yaml

from mmdlrm.cli import main

REPO = Path(__file__).resolve().parents[2]
DEBUG = str(REPO / "configs" / "debug.yaml")


def _run_train(tmp_path: Path, *overrides: str) -> dict:
    code = main(["train", "--config", DEBUG, f"output_dir={tmp_path / 'runs'}", f"data.cache_dir={tmp_path / 'data'}", *overrides])
    assert code == 0
    return json.loads((tmp_path / "runs" / "debug" / "results.json").read_text())


def test_debug_config_trains_and_writes_its_run_folder(tmp_path):
    results = _run_train(tmp_path)
    run = tmp_path / "runs" / "debug"
    for name in ("config.yaml", "metrics.jsonl", "plan.txt", "results.json", "plots/curves.png", "plots/predictions.png",
                 "checkpoints/best/complete.json"):  # fmt: skip
        assert (run / name).is_file(), name
    assert (run / "plots" / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    epochs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in epochs] == list(range(len(epochs))) and 1 <= len(epochs) <= 3
    assert epochs[-1]["train_loss"] < epochs[0]["train_loss"]
    assert results["best_epoch"] == min(range(len(epochs)), key=lambda i: epochs[i]["val"]["rmse"])
    assert results["test"]["rmse"] < results["baselines"]["global_mean"]["test"]["rmse"]
    assert yaml.safe_load((run / "config.yaml").read_text())["name"] == "debug"


def test_same_seed_same_metrics(tmp_path):
    a = _run_train(tmp_path / "a")
    b = _run_train(tmp_path / "b")
    assert a["test"]["rmse"] == pytest.approx(b["test"]["rmse"], rel=1e-6)
    assert [e["train_loss"] for e in a["epochs"]] == pytest.approx([e["train_loss"] for e in b["epochs"]], rel=1e-6)


def test_evaluate_reproduces_the_test_metrics(tmp_path, capsys):
    results = _run_train(tmp_path)
    run = tmp_path / "runs" / "debug"
    assert main(["evaluate", str(run)]) == 0
    from mmdlrm.config import load_config
    from mmdlrm.distributed.env import init_distributed, teardown
    from mmdlrm.train import evaluate_run

    env = init_distributed("cpu")
    try:
        again = evaluate_run(load_config(run / "config.yaml"), run, env)
    finally:
        teardown()
    assert again.test["rmse"] == pytest.approx(results["test"]["rmse"], rel=1e-5)


def test_binary_task_reports_auc(tmp_path):
    results = _run_train(tmp_path, "model.task=binary")
    assert 0.5 < results["test"]["auc"] <= 1.0
    assert results["baselines"]["bias"]["test"]["auc"] > 0.5


def test_dlrm_beats_the_bias_baseline_on_planted_structure(tmp_path):
    """The planted user-taste x genre interaction is what biases cannot capture; a working DLRM must."""
    results = _run_train(
        tmp_path,
        "data.synthetic.num_users=3000", "data.synthetic.num_movies=800", "data.synthetic.num_ratings=250000",
        "model.embedding_dim=16", "train.batch_size=2048", "train.max_epochs=6", "train.min_epochs=3",
    )  # fmt: skip
    bias = results["baselines"]["bias"]["test"]["rmse"]
    # A model that learns nothing beyond the biases sits at the bias RMSE; ours must be clearly below it.
    assert results["test"]["rmse"] < bias - 0.03, (results["test"]["rmse"], bias)


def test_user_errors_exit_2_with_one_line(tmp_path, capsys):
    assert main(["train", "--config", DEBUG, "train.batchsize=3"]) == 2
    assert "did you mean train.batch_size?" in capsys.readouterr().err
    assert main(["train", "--config", DEBUG, f"data.source={tmp_path}", f"output_dir={tmp_path}"]) == 2
    assert "no ratings.csv" in capsys.readouterr().err
    assert main(["evaluate", str(tmp_path / "nothing")]) == 2
    assert "no config.yaml" in capsys.readouterr().err


def test_synth_and_prepare_commands(tmp_path):
    sizes = ["data.synthetic.num_users=60", "data.synthetic.num_movies=30", "data.synthetic.num_ratings=600"]
    assert main(["synth", str(tmp_path / "raw"), *sizes]) == 0
    assert (tmp_path / "raw" / "ratings.csv").read_text().count("\n") == 601
    assert main(["prepare", str(tmp_path / "raw"), "--out", str(tmp_path / "prep"), "data.split=temporal"]) == 0
    manifest = json.loads((tmp_path / "prep" / "manifest.json").read_text())
    assert manifest["split"]["kind"] == "temporal" and manifest["counts"]["ratings"] == 600


def test_sharding_plan_the_cpu_cannot_run_is_refused_up_front(tmp_path, capsys):
    args = ["train", "--config", DEBUG, f"output_dir={tmp_path}", f"data.cache_dir={tmp_path}", "train.device=cpu"]
    assert main([*args, "sharding.plan=row_wise"]) == 2
    assert "sharding.plan=row_wise needs CUDA (NCCL); on cpu use one of: data_parallel, table_wise" in capsys.readouterr().err
    assert main([*args, "sharding.tables.movie.sharding_type=table_row_wise"]) == 2
    assert "sharding.tables.movie=table_row_wise needs CUDA (NCCL); on cpu use" in capsys.readouterr().err
    assert main([*args, "sharding.tables.movie.compute_kernel=dense", "sharding.plan=table_wise"]) == 2
    assert "sharding.tables.movie: table_wise with compute_kernel=dense does not exist; data_parallel" in capsys.readouterr().err
    assert main([*args, "sharding.tables.user.compute_kernel=fused_uvm"]) == 2
    assert "compute_kernel=fused_uvm needs CUDA; on cpu use fused or dense" in capsys.readouterr().err


def test_per_table_constraints_reach_the_plan(tmp_path):
    _run_train(tmp_path, "train.max_epochs=1", "train.min_epochs=1", "sharding.plan=table_wise",
               "sharding.tables.user.sharding_type=column_wise", "sharding.tables.movie.sharding_type=data_parallel",
               "sharding.tables.movie.compute_kernel=dense")  # fmt: skip
    rows = {}  # the first table of plan.txt: param | sharding type | compute kernel | ranks
    for line in (tmp_path / "runs" / "debug" / "plan.txt").read_text().splitlines():
        if line.startswith("t_"):
            rows.setdefault(line.split("|")[0].strip(), [c.strip() for c in line.split("|")])
    assert rows["t_user"][1:3] == ["column_wise", "fused"]
    assert rows["t_movie"][1:3] == ["data_parallel", "dense"]
    assert rows["t_genre"][1] == "table_wise" and rows["t_year"][1] == "table_wise"
    assert "planner memory estimate for the tables: rank 0:" in (tmp_path / "runs" / "debug" / "plan.txt").read_text()
