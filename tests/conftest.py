"""Shared fixtures: tiny synthetic releases and prepared datasets, built once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from mmdlrm.config import SyntheticConfig
from mmdlrm.data.movielens import read_release
from mmdlrm.data.prepare import load_prepared, prepare
from mmdlrm.data.synthetic import generate

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def shared(name: str) -> Path:
    """A folder of ../shared/data, or skip the test where this machine does not have it."""
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"{path} not present (real MovieLens copies live only on the project's machines)")
    return path


@pytest.fixture(scope="session")
def tiny_release(tmp_path_factory) -> Path:
    """A synthetic release: 300 users, 150 movies, 12k ratings."""
    out = tmp_path_factory.mktemp("tiny_release")
    return generate(SyntheticConfig(num_users=300, num_movies=150, num_ratings=12_000, seed=3), out)


@pytest.fixture(scope="session")
def tiny_prepared(tiny_release, tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny_prepared") / "prepared"
    prepare(read_release(tiny_release), out, "random", 0.1, 0.1, seed=0)
    return load_prepared(out)
