"""`mmdlrm plan` through the command line: the training world's plan is the one training writes; described CUDA
clusters planned on this CPU machine; `--users/--movies` change the sizes and nothing else; refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mmdlrm.cli import main

REPO = Path(__file__).resolve().parents[2]
DEBUG = str(REPO / "configs" / "debug.yaml")
TINY_CLIP = ["features.clip_model=mmdlrm-tiny-clip", "features.clip_pretrained=random", "features.text_encoder=open_clip",
             "features.num_workers=0"]  # fmt: skip
EVERY_TABLE = ["model.history_length=5", "model.history_table=own", "model.count_features=true",
               "features.modalities=text", *TINY_CLIP]  # fmt: skip
"""ids, genres, year, a history table of its own, side features (count buckets), and the content arch."""


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """Runs, plans and the prepared debug release with its text feature store (made once: plans read its size)."""
    folder = tmp_path_factory.mktemp("plan")
    assert main(["features", "clip", *_args(folder)]) == 0
    return folder


def _args(workdir: Path, *extra: str) -> list[str]:
    return ["--config", DEBUG, f"output_dir={workdir / 'runs'}", f"data.cache_dir={workdir / 'data'}", *EVERY_TABLE, *extra]


def _plan(workdir: Path, out: str, *options: str) -> tuple[str, dict]:
    assert main(["plan", *_args(workdir), "--out", str(workdir / out), *options]) == 0
    return (workdir / out / "plan.txt").read_text(), json.loads((workdir / out / "plan.json").read_text())


def test_the_plan_for_this_machines_training_world_is_the_one_training_writes(workdir):
    assert main(["train", *_args(workdir, "train.max_epochs=1", "train.min_epochs=1", "train.tensorboard=false")]) == 0
    trained = (workdir / "runs" / "debug" / "plan.txt").read_text()
    planned, record = _plan(workdir, "this-machine")
    assert planned == trained
    assert {t["name"] for t in record["tables"]} == {"t_user", "t_movie", "t_genre", "t_year", "t_history",
                                                      "t_user_activity", "t_movie_popularity"}  # fmt: skip
    assert record["cluster"]["world_size"] == 1 and record["global_batch"] == 512


@pytest.mark.parametrize("nodes", [1, 4])
def test_cuda_clusters_of_8_and_32_ranks_are_planned_on_this_cpu_machine(workdir, capsys, nodes):
    text, record = _plan(workdir, f"cuda-{nodes}x8", "--nodes", str(nodes), "--gpus-per-node", "8", "--hbm-gib", "80")
    world = 8 * nodes
    assert record["cluster"] == {"world_size": world, "local_world_size": 8, "device": "cuda", "hbm_bytes": 80 * 2**30,
                                 "ddr_bytes": None, "nodes": nodes}  # fmt: skip
    assert "/cuda:" in text and "/cpu" not in text
    assert {r for t in record["tables"] for r in t["ranks"]} <= set(range(world))
    assert len(record["ranks"]) == world and record["batch_size"] == 512 // world
    printed = capsys.readouterr().out
    assert f"plan for {nodes} node{'s' if nodes > 1 else ''} x 8 cuda ranks, 80.0 GiB HBM" in printed
    assert "estimated step (critical path over the ranks)" in printed


def test_users_and_movies_change_the_sizes_and_nothing_else(workdir):
    text, base = _plan(workdir, "sizes-own", "--nodes", "1")
    own = base["counts"]
    same_text, same = _plan(workdir, "sizes-same", "--nodes", "1", "--users", str(own["users"]), "--movies", str(own["movies"]))
    assert same_text == text
    strip = lambda r: {k: v for k, v in r.items() if k not in ("made_by", "replaced_counts")}  # noqa: E731
    assert strip(same) == strip(base)

    _, bigger = _plan(workdir, "sizes-bigger", "--nodes", "1", "--users", "50000", "--movies", "30000")
    assert bigger["counts"] == own | {"users": 50_000, "movies": 30_000} and bigger["config"] == base["config"]
    rows = lambda r: {t["name"]: (t["rows"], t["dim"]) for t in r["tables"]}  # noqa: E731
    dim = base["config"]["model"]["embedding_dim"]
    assert rows(bigger) == rows(base) | {"t_user": (50_000, dim), "t_movie": (30_000, dim), "t_history": (30_000, dim)}
    # the content vectors (movies x 64 float16 and a missing flag, on every rank) grow with the movies, nothing else
    assert bigger["replicated"] - base["replicated"] == (30_000 - own["movies"]) * (64 * 2 + 1)


def test_tables_too_large_for_the_cluster_are_refused_with_the_table_named(workdir, capsys):
    assert main(["plan", *_args(workdir), "--nodes", "1", "--users", "100000000000", "--out", str(workdir / "no")]) == 2
    err = capsys.readouterr().err
    assert "mmdlrm plan: error: table t_user (100,000,000,000 rows x 8) does not fit on 1 node x 8 cuda ranks" in err
    assert "GiB short. It would fit with about" in err and not (workdir / "no").exists()


def test_a_described_cluster_is_checked(workdir, capsys):
    assert main(["plan", *_args(workdir), "--device", "cpu", "--hbm-gib", "80"]) == 2
    assert "--hbm-gib describes GPU memory" in capsys.readouterr().err
