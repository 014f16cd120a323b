from pathlib import Path

import pytest

from mmdlrm.config import ConfigError, RunConfig, load_config, save_config

REPO = Path(__file__).resolve().parents[1]


def test_defaults_yaml_and_overrides_stack(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  batch_size: 256\n  max_epochs: 4\nmodel:\n  dense_arch: [8]\n")
    cfg = load_config(path, ["train.batch_size=128", "model.embedding_dim=16", "sharding.plan=table_wise"])
    assert cfg.train.batch_size == 128  # override beats YAML
    assert cfg.train.max_epochs == 4  # YAML beats default
    assert cfg.model.dense_arch == [8]
    assert cfg.model.embedding_dim == 16
    assert cfg.sharding.plan == "table_wise"
    assert cfg.train.patience == RunConfig().train.patience  # untouched default


def test_unknown_key_names_the_nearest_one():
    with pytest.raises(ConfigError, match=r"unknown key train.batchsize; did you mean train.batch_size\?"):
        load_config(None, ["train.batchsize=3"])


def test_wrong_types_and_failed_checks_name_the_key():
    with pytest.raises(ConfigError, match="train.batch_size must be int"):
        load_config(None, ["train.batch_size=big"])
    with pytest.raises(ConfigError, match="model.embedding_dim must be a positive multiple of 4"):
        load_config(None, ["model.embedding_dim=10"])
    with pytest.raises(ConfigError, match="data.split must be one of random, temporal"):
        load_config(None, ["data.split=weekly"])
    with pytest.raises(ConfigError, match="not key=value"):
        load_config(None, ["train.batch_size"])


def test_float_field_accepts_int_and_optional_accepts_null():
    cfg = load_config(None, ["train.dense_lr=1", "sharding.plan=null"])
    assert cfg.train.dense_lr == 1.0 and isinstance(cfg.train.dense_lr, float)
    assert cfg.sharding.plan is None


def test_exponent_floats_without_a_dot_are_floats():
    # YAML 1.1 reads `1e-3` as a string; the override must still mean 0.001.
    assert load_config(None, ["train.dense_lr=1e-3"]).train.dense_lr == 0.001
    with pytest.raises(ConfigError, match="train.dense_lr must be float; got 'fast'"):
        load_config(None, ["train.dense_lr=fast"])


def test_saved_config_loads_back_equal(tmp_path):
    cfg = load_config(REPO / "configs" / "debug.yaml", ["train.seed=7"])
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == cfg


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_loads_and_says_how_to_run_it(path):
    load_config(path)
    assert path.read_text().startswith("#"), "each config opens with a comment saying what it is for"


def test_broken_yaml_and_a_config_given_without_config_name_the_file_line_and_fix(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  batch_size: [1\nmodel:\n  embedding_dim: 8\n")
    with pytest.raises(ConfigError, match=rf"^{path} line 3, column 6: not valid YAML \(expected ',' or '\]', but got ':', "
                                          r"while parsing a flow sequence that began on line 2\); fix the file there$"):  # fmt: skip
        load_config(path)
    with pytest.raises(ConfigError, match="is not key=value .*; to read a config file, give --config configs/debug.yaml"):
        load_config(None, ["configs/debug.yaml"])


def test_missing_config_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="configs/ folder lists"):
        load_config(tmp_path / "nope.yaml")
    (tmp_path / "a.yaml").write_text("name: a\n")
    with pytest.raises(FileNotFoundError, match=r"is a folder; name a YAML file in it \(a\.yaml, \.\.\.\)"):
        load_config(tmp_path)


@pytest.mark.parametrize("override", ["train.dense_lr=nan", "sharding.sparse_lr=.inf", "data.synthetic.noise=-.inf"])
def test_non_finite_numbers_are_refused_by_key(override):
    with pytest.raises(ConfigError, match=f"{override.split('=')[0]} must be a finite number"):
        load_config(None, [override])


@pytest.mark.parametrize("key", ["features.dropout", "model.movie_id_dropout", "model.dropout"])
@pytest.mark.parametrize("value", ["1.0", "-0.1"])
def test_dropout_rates_outside_zero_to_one_are_refused_by_key(key, value):
    with pytest.raises(ConfigError, match=rf"{key} must be in \[0, 1\), got {value}"):
        load_config(None, [f"{key}={value}"])


def test_an_unknown_override_is_reported_as_the_override_not_the_yaml(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  batch_size: 256\n")
    with pytest.raises(ConfigError, match=r"^override 'train.batchsize=3': unknown key train.batchsize; did you mean"):
        load_config(path, ["train.batchsize=3"])
    path.write_text("train:\n  batchsize: 256\n")
    with pytest.raises(ConfigError, match=rf"^{path}: unknown key train.batchsize"):
        load_config(path)


def test_run_names_stay_inside_the_runs_folder():
    for bad in ("../../somewhere", "a/b", "..", "x y"):
        with pytest.raises(ConfigError, match="a run name is one folder name"):
            load_config(None, [f"name={bad}"])
    assert load_config(None, ["name=ml-25m_v2.1"]).run_dir == Path("runs") / "ml-25m_v2.1"


def test_per_table_sharding_keys_are_checked():
    cfg = load_config(None, ["sharding.tables.history.sharding_type=table_wise"])
    assert cfg.sharding.table("history").sharding_type == "table_wise" and cfg.sharding.table("user").sharding_type is None
    with pytest.raises(ConfigError, match="sharding.tables.usr: no such table.*did you mean sharding.tables.user"):
        load_config(None, ["sharding.tables.usr.sharding_type=table_wise"])
