"""Two gloo processes against one: every CPU sharding type trains and predicts as the single process does."""

from __future__ import annotations

import pytest
import torch

from mmdlrm.distributed.sharding import CPU_SHARDING_TYPES

import sharded_workers as workers
from spawn import spawn


@pytest.fixture(scope="module")
def runs(tiny_prepared, tmp_path_factory) -> dict:
    """Reference (1 process), sharded (2 processes, each CPU type), and the 2-process checkpoints reloaded in 1."""
    out = tmp_path_factory.mktemp("sharded")
    prepared = str(tiny_prepared.folder)
    spawn(workers.reference, 1, prepared, str(out))
    spawn(workers.sharded, 2, prepared, str(out))
    spawn(workers.reload, 1, prepared, str(out))
    return {name: torch.load(out / f"{name}.pt", weights_only=False) for name in ("reference", "sharded", "reload")}


@pytest.mark.parametrize("plan", CPU_SHARDING_TYPES)
def test_sharded_losses_and_predictions_match_one_process(runs, plan):
    reference, sharded = runs["reference"][workers.OPTIMIZER[plan]], runs["sharded"][plan]
    assert plan in sharded["plan"]  # the planner did use the type asked for
    assert len(sharded["losses"]) == workers.STEPS
    torch.testing.assert_close(torch.tensor(sharded["losses"]), torch.tensor(reference["losses"]), rtol=1e-4, atol=1e-5)
    # float32 sums in another order, through Adagrad's early steps (g / sqrt(g^2)): ~1e-4 of a 0.5..5 rating.
    torch.testing.assert_close(sharded["preds"], reference["preds"], rtol=1e-4, atol=5e-4)
    # Training moved the predictions far more than the tolerance: a run that skipped updates could not match.
    assert (reference["preds"] - runs["reference"]["init"]["preds"]).abs().mean() > 0.01


@pytest.mark.parametrize("plan", CPU_SHARDING_TYPES)
def test_metrics_reduced_over_ranks_equal_one_process_with_an_empty_share(runs, plan):
    reference, sharded = runs["reference"][workers.OPTIMIZER[plan]]["metrics"], runs["sharded"][plan]["metrics"]
    for name in ("mse", "mae", "rmse"):
        assert sharded[name] == pytest.approx(reference[name], rel=1e-5)


@pytest.mark.parametrize("plan", CPU_SHARDING_TYPES)
def test_two_process_checkpoint_loads_in_one_process(runs, plan):
    torch.testing.assert_close(runs["reload"][plan]["preds"], runs["sharded"][plan]["preds"], rtol=1e-5, atol=1e-6)


def test_one_process_checkpoint_loads_in_two_processes_column_wise(runs):
    # `reference` holds the trained single-process model; the two-process column-wise model loaded it.
    reference = runs["reference"]["rowwise_adagrad"]
    torch.testing.assert_close(runs["sharded"]["from_reference"]["preds"], reference["preds"], rtol=1e-5, atol=1e-6)


def test_train_pipeline_sparse_dist_matches_the_plain_step(runs):
    reference = runs["reference"]
    torch.testing.assert_close(torch.tensor(reference["pipeline_losses"]), torch.tensor(reference["rowwise_adagrad"]["losses"]))
