"""Two gloo processes, each reading only its part of the data, train and evaluate as one process reading all of it."""

from __future__ import annotations

import part_workers as workers
import pytest
import torch
from spawn import spawn


@pytest.fixture(scope="module")
def runs(tiny_release, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("parts")
    cache = out / "cache"
    spawn(workers.train_and_evaluate, 1, str(tiny_release), str(cache), str(out))
    spawn(workers.train_and_evaluate, 2, str(tiny_release), str(cache), str(out))
    return {world: torch.load(out / f"{world}.pt", weights_only=False) for world in (1, 2)}


def test_each_rank_holds_its_half_of_the_training_rows(runs):
    one, two = runs[1]["ranks"], runs[2]["ranks"]
    rows = runs[1]["train_rows"]
    assert one[0]["train"] == rows
    assert [r["train"] for r in two] == [rows // 2, rows - rows // 2]
    assert two[0]["steps"] == two[1]["steps"] == one[0]["steps"] == rows // workers.BATCH


def test_two_processes_with_their_own_parts_train_the_same_batches(runs):
    # The same global batches (8 ranges of the split for 1 and for 2 processes), so the same losses.
    torch.testing.assert_close(torch.tensor(runs[2]["losses"]), torch.tensor(runs[1]["losses"]), rtol=1e-4, atol=1e-5)
    assert len(runs[1]["losses"]) == workers.STEPS


def test_validation_metrics_reduced_over_the_ranks_equal_one_process(runs):
    for name in ("rmse", "mae", "mse"):
        assert runs[2]["metrics"][name] == pytest.approx(runs[1]["metrics"][name], rel=1e-4)


def test_rows_filtered_within_each_part_agree_on_their_steps(runs):
    one, two = runs[1]["ranks"][0], runs[2]["ranks"]
    assert sum(r["positives"] for r in two) == one["positives"] == one["positives_in_split"]
    assert two[0]["positive_steps"] == two[1]["positive_steps"] == one["positive_steps"] > 0
    assert two[0]["positives_in_split"] == two[1]["positives_in_split"] == one["positives"]
