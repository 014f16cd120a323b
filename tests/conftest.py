"""Shared fixtures: tiny synthetic releases and prepared datasets, built once per session."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
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


@pytest.fixture
def parquet_reads(monkeypatch) -> list[str]:
    """The names of the Parquet files whose data is read while the test runs (footers are not counted)."""
    reads: list[str] = []
    init = pq.ParquetFile.__init__

    def opened(self, source, *args, **kwargs):
        self._test_name = Path(str(source)).name
        init(self, source, *args, **kwargs)

    def counted(method):
        def read(self, *args, **kwargs):
            reads.append(getattr(self, "_test_name", "?"))
            return method(self, *args, **kwargs)

        return read

    monkeypatch.setattr(pq.ParquetFile, "__init__", opened)
    for name in ("read", "read_row_group", "read_row_groups", "iter_batches"):
        monkeypatch.setattr(pq.ParquetFile, name, counted(getattr(pq.ParquetFile, name)))
    table = pq.read_table
    monkeypatch.setattr(pq, "read_table", lambda source, *a, **k: reads.append(Path(str(source)).name) or table(source, *a, **k))
    return reads
