"""Search spaces: the file format and its errors, the default space of each task, the first trial's values."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from mmdlrm.config import ConfigError, load_config
from mmdlrm.tuning.space import Param, as_choice, default_space, from_choice, read_space
from mmdlrm.tuning.study import _check_space, overrides_of

REPO = Path(__file__).resolve().parents[2]
CONFIGS = sorted(p for p in (REPO / "configs").glob("*.yaml"))


def _space(tmp_path: Path, text: str):
    path = tmp_path / "space.yaml"
    path.write_text(text)
    return read_space(path)


def test_a_space_file_takes_its_kinds_from_the_config_fields(tmp_path):
    space = _space(tmp_path, """
params:
  model.embedding_dim: {choices: [8, 16]}
  model.history_length: {low: 25, high: 200, step: 25}
  train.dense_lr: {low: 1e-4, high: 1.0e-2, log: true}
  model.embedding_l2: {low: 1.0e-4, high: 0.1, log: true, zero: true}
  model.over_arch: {choices: [[64, 32], [128]]}
  model.ranking.positive_threshold: {low: 3.0, high: 4.5}
pruner: {startup_trials: 2, warmup_epochs: 0}
""")
    kinds = {p.key: p.kind for p in space.params}
    assert kinds == {"model.embedding_dim": "choice", "model.history_length": "int", "train.dense_lr": "float",
                     "model.embedding_l2": "float", "model.over_arch": "choice",
                     "model.ranking.positive_threshold": "float"}  # fmt: skip
    assert space.pruner.startup_trials == 2 and space.pruner.warmup_epochs == 0 and space.sampler.startup_trials == 5
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    l2 = []
    for _ in range(30):
        values = space.suggest(study.ask())
        assert values["model.history_length"] % 25 == 0 and 1e-4 <= values["train.dense_lr"] <= 1e-2
        l2.append(values["model.embedding_l2"])
        assert values["model.over_arch"] in ([64, 32], [128])  # lists go through Optuna as YAML text and come back
        load_config(REPO / "configs" / "debug.yaml", overrides_of(values))
    assert 0.0 in l2 and all(v == 0.0 or 1e-4 <= v <= 0.1 for v in l2)  # the decade below low is 0
    assert [space.values(t.params)["model.embedding_l2"] for t in study.trials] == l2


@pytest.mark.parametrize(
    "text, message",
    [
        ("params:\n  model.embeding_dim: {choices: [8]}\n", "unknown key model.embeding_dim; did you mean model.embedding_dim"),
        ("params:\n  model.task: {low: 1, high: 2}\n", "model.task: the field is .* not a number; give choices"),
        ("params:\n  train.dense_lr: {low: 0.1, high: 0.01}\n", r"low \(0.1\) must be below high \(0.01\)"),
        ("params:\n  train.dense_lr: {low: 0, high: 0.01, log: true}\n", "a log range needs low > 0"),
        ("params:\n  model.embedding_dim: {low: 8.5, high: 16}\n", "whole number; give whole low and high"),
        ("params:\n  model.embedding_dim: {choices: []}\n", "choices is a non-empty list"),
        ("params:\n  model.dropout: {low: 0.0}\n", "a range needs both low and high"),
        ("params:\n  model.dropout: {low: 0.0, high: 0.5, zero: true}\n", "zero: true goes with a log range"),
        ("params:\n  model: {choices: [1]}\n", "model is a section"),
        ("params:\n  model.dropout: {low: 0.0, high: 0.5}\nprunner: {}\n", "unknown section prunner"),
        ("model.dropout: [0.1]\n", "a space file maps `params:`"),
    ],
)
def test_space_file_errors_name_the_key_and_the_fix(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        _space(tmp_path, text)


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_has_a_default_space_whose_every_value_makes_a_valid_config(config):
    base = load_config(config)
    space = default_space(base)
    keys = {p.key for p in space.params}
    assert {"model.embedding_dim", "train.dense_lr", "sharding.sparse_lr", "model.embedding_l2", "train.dense_weight_decay",
            "train.batch_size", "model.history_length"} <= keys  # fmt: skip
    assert ("model.ranking.negatives" in keys) == (base.model.task == "ranking")
    assert ("model.retrieval.temperature" in keys) == (base.model.task == "retrieval")
    assert ("model.movie_id_dropout" in keys) == (base.data.split == "cold_movies")
    _check_space(space, config, [])


def test_retrieval_space_searches_the_two_tower_knobs():
    base = load_config(REPO / "configs" / "debug.yaml", ["model.task=retrieval", "model.history_length=20", "model.user_id=false"])
    keys = {p.key for p in default_space(base).params}
    assert {"model.retrieval.dim", "model.retrieval.temperature", "model.retrieval.negatives",
            "model.retrieval.history_dropout"} <= keys and "model.dropout" not in keys  # fmt: skip
    assert 0 not in next(p for p in default_space(base).params if p.key == "model.history_length").choices


def test_the_first_trial_is_the_base_config_moved_into_the_space_where_needed():
    shipped = load_config(REPO / "configs" / "ml-latest-small.yaml")
    values, notes = default_space(shipped).base_values(shipped)
    assert values["model.embedding_dim"] == 16 and values["model.history_length"] == 50
    assert values["model.embedding_l2"] == pytest.approx(1e-3) and values["train.batch_size"] == 256
    assert notes == []  # the shipped config is the first trial, as it is
    defaults = load_config(REPO / "configs" / "synthetic.yaml")
    space = default_space(defaults)
    values, notes = space.base_values(defaults)
    assert notes == [] and space.values(values)["model.embedding_l2"] == 0.0  # 0 is on the scale: the decade below
    assert space.values(values)["train.dense_weight_decay"] == 0.0 and values["model.embedding_l2"] == pytest.approx(1e-6)
    outside = load_config(REPO / "configs" / "debug.yaml", ["model.embedding_dim=12"])
    assert default_space(outside).base_values(outside)[1] == [
        "model.embedding_dim: 12 is outside {8, 16, 32, 64}; the first trial uses 8"]
    assert Param("x", "choice", choices=(8, 16, 64)).nearest(32) == 16
    assert Param("x", "int", 25, 200, step=25).nearest(60) == 50
    assert from_choice(as_choice([64, 32])) == [64, 32] and as_choice("auto") == "auto"


def test_a_space_whose_values_the_config_refuses_is_named_before_any_trial(tmp_path):
    space = _space(tmp_path, "params:\n  model.embedding_dim: {choices: [16, 30]}\n")
    with pytest.raises(ConfigError, match="model.embedding_dim=30 makes no valid config .* multiple of 4"):
        _check_space(space, REPO / "configs" / "debug.yaml", [])


@pytest.mark.parametrize("name", ["ranking-hour.yaml", "ranking-near.yaml"])
def test_the_shipped_ranking_spaces_hold_the_ranking_config_and_only_valid_values(name):
    config = REPO / "configs" / "ml-latest-small-ranking.yaml"
    space = read_space(REPO / "configs" / "spaces" / name)
    base = load_config(config)
    values, notes = space.base_values(base)
    assert notes == []  # its first trial is the shipped ranking config, unmoved
    config_values = space.values(values)
    assert config_values["model.embedding_dim"] == 32 and config_values["sharding.sparse_lr"] == pytest.approx(0.05)
    slow = [p for p in space.params if p.key in ("model.history_length", "model.ranking.negatives")]
    assert all(max(p.choices) < 200 and 128 not in p.choices for p in slow)  # the slow corners are left out
    _check_space(space, config, [])
