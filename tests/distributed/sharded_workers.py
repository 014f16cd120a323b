"""Process bodies for the multi-process tests (spawned, gloo on CPU); each writes what it saw to a .pt file.

- `reference` (world of one): saves the common initial weights, trains a few steps, saves the trained model.
- `sharded` (world of two): per CPU sharding type, starts from the same weights and batches, trains the same
  steps, evaluates, saves a checkpoint; also loads the reference's checkpoint (1 -> 2 processes).
- `reload` (world of one): loads each two-process checkpoint (2 -> 1 processes) and predicts.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.distributed as dist

from mmdlrm.config import load_config
from mmdlrm.data.batches import BatchBuilder, BatchLoader, SplitRows
from mmdlrm.data.prepare import load_prepared
from mmdlrm.distributed import checkpoint
from mmdlrm.distributed.env import DistEnv, init_distributed, teardown
from mmdlrm.distributed.sharding import CPU_SHARDING_TYPES
from mmdlrm.evaluation.metrics import evaluate
from mmdlrm.tasks import RatingTask, build_task
from mmdlrm.train import build_model, training_steps

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "debug.yaml"
STEPS = 6
BATCH = 256
# Row-wise Adagrad keeps one accumulator per row of each shard, so column-wise shards each keep their own: not
# the single-process result. Those types are compared with element-wise Adagrad, whose maths sharding keeps.
OPTIMIZER = {"data_parallel": "rowwise_adagrad", "table_wise": "rowwise_adagrad",
             "column_wise": "adagrad", "table_column_wise": "adagrad"}  # fmt: skip


def _setup(rank: int, world_size: int, store: str) -> DistEnv:
    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    return init_distributed("cpu", rank=rank, world_size=world_size, store_path=store)


def _model(prepared: str, env: DistEnv, plan: str | None, optimizer: str = "rowwise_adagrad"):
    overrides = ["train.device=cpu", f"train.batch_size={BATCH}", "model.embedding_dim=8", f"sharding.sparse_optimizer={optimizer}"]
    if plan is not None:
        overrides.append(f"sharding.plan={plan}")
    cfg = load_config(CONFIG, overrides)
    data = load_prepared(prepared)
    task = build_task(cfg.model, cfg.eval)
    sharded = build_model(cfg, data, env, task)
    model, optimizer, sharding_plan = sharded.model, sharded.optimizer, sharded.plan
    builder = BatchBuilder(data, cfg.model)
    return cfg, data, builder, model, optimizer, sharding_plan


def _train_and_predict(
    prepared: str, env: DistEnv, plan: str | None, init: str, optimizer_name: str, pipeline: bool = False
) -> dict:
    cfg, data, builder, model, optimizer, sharding_plan = _model(prepared, env, plan, optimizer_name)
    checkpoint.load(init, model)
    train = BatchLoader(builder, SplitRows.from_prepared(data, "train"), BATCH, shuffle=True, seed=1,
                        rank=env.rank, world_size=env.world_size, leave_one_out=True)  # fmt: skip
    batches = (b for _, b in zip(range(STEPS), train))
    losses = []
    for loss in training_steps(model, optimizer, batches, env, pipeline):
        total = loss.clone()
        if env.world_size > 1:  # equal shares: the mean of the ranks' means is the global batch's mean
            dist.all_reduce(total)
        losses.append(total.item() / env.world_size)
    out = {"losses": losses, "plan": str(sharding_plan)}
    out.update(_predict(model, data, builder, env))
    return {"model": model, **out}


def _predict(model, data, builder, env: DistEnv) -> dict:
    rows = SplitRows.from_prepared(data, "val")
    one_batch = BatchLoader(builder, rows, len(rows), shuffle=False, rank=env.rank, world_size=env.world_size)
    _, preds, _ = evaluate(model, one_batch, RatingTask.metric_names, env.device, keep_predictions=True)
    if env.world_size > 1:  # one batch: the ranks' shares in rank order are the rows in order
        shares = [None] * env.world_size
        dist.all_gather_object(shares, preds)
        preds = torch.cat(shares)
    # Batches of n - 1 rows leave a last batch of one row: rank 0's share of it is empty.
    uneven = BatchLoader(builder, rows, len(rows) - 1, shuffle=False, rank=env.rank, world_size=env.world_size)
    metrics, _, _ = evaluate(model, uneven, RatingTask.metric_names, env.device)
    return {"preds": preds, "metrics": metrics}


def reference(rank: int, world_size: int, store: str, prepared: str, out: str) -> None:
    env = _setup(rank, world_size, store)
    try:
        _, data, builder, model, _, _ = _model(prepared, env, None)
        init = str(Path(out) / "init")
        checkpoint.save(init, env, model)
        results = {"init": _predict(model, data, builder, env)}
        for optimizer in sorted(set(OPTIMIZER.values())):
            results[optimizer] = _train_and_predict(prepared, env, None, init, optimizer)
            checkpoint.save(Path(out) / f"reference-{optimizer}", env, results[optimizer].pop("model"))
        piped = _train_and_predict(prepared, env, None, init, "rowwise_adagrad", pipeline=True)
        results["pipeline_losses"] = piped["losses"]
        torch.save(results, Path(out) / "reference.pt")
    finally:
        teardown()


def sharded(rank: int, world_size: int, store: str, prepared: str, out: str) -> None:
    env = _setup(rank, world_size, store)
    try:
        results = {}
        for plan in CPU_SHARDING_TYPES:
            result = _train_and_predict(prepared, env, plan, str(Path(out) / "init"), OPTIMIZER[plan])
            checkpoint.save(Path(out) / f"sharded-{plan}", env, result.pop("model"))
            results[plan] = result
        _, data, builder, model, _, _ = _model(prepared, env, "column_wise")
        checkpoint.load(Path(out) / "reference-rowwise_adagrad", model)
        results["from_reference"] = _predict(model, data, builder, env)
        if env.is_rank0:
            torch.save(results, Path(out) / "sharded.pt")
    finally:
        teardown()


def reload(rank: int, world_size: int, store: str, prepared: str, out: str) -> None:
    env = _setup(rank, world_size, store)
    try:
        results = {}
        for plan in CPU_SHARDING_TYPES:
            _, data, builder, model, _, _ = _model(prepared, env, None)
            checkpoint.load(Path(out) / f"sharded-{plan}", model)
            results[plan] = _predict(model, data, builder, env)
        torch.save(results, Path(out) / "reload.pt")
    finally:
        teardown()
