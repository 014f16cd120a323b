"""Process bodies for the per-rank input test (spawned, gloo on CPU): `train.build` as training runs it.

Each world (one process, then two) builds the run with `train.build` (rank 0 prepares, every rank opens its own
part of each split), starts from the same weights, trains a few steps and evaluates the validation split with
the metrics reduced over the ranks; rank 0 writes what it saw to `<world size>.pt`.
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import torch
import torch.distributed as dist

from mmdlrm.config import load_config
from mmdlrm.data.batches import BatchBuilder
from mmdlrm.distributed import checkpoint
from mmdlrm.distributed.env import init_distributed, teardown
from mmdlrm.tasks import build_task
from mmdlrm.train import build, training_steps

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "debug.yaml"
STEPS = 5
BATCH = 256


def _overrides(release: str, cache: str, *more: str) -> list[str]:
    return ["train.device=cpu", f"train.batch_size={BATCH}", "model.embedding_dim=8", "train.progress=false",
            f"data.source={release}", f"data.cache_dir={cache}", *more]  # fmt: skip


def train_and_evaluate(rank: int, world_size: int, store: str, release: str, cache: str, out: str) -> None:
    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    env = init_distributed("cpu", rank=rank, world_size=world_size, store_path=store)
    try:
        cfg = load_config(CONFIG, _overrides(release, cache))
        setup = build(cfg, env)
        model, optimizer = setup.sharded.model, setup.sharded.optimizer
        init = Path(out) / "init"
        if world_size == 1:
            checkpoint.save(init, env, model)
        else:
            checkpoint.load(init, model)
        losses = []
        for loss in training_steps(model, optimizer, itertools.islice(setup.loader.batches(), STEPS), env, False):
            total = loss.clone()
            if world_size > 1:  # equal shares: the mean of the ranks' means is the global batch's mean
                dist.all_reduce(total)
            losses.append(total.item() / world_size)
        metrics, _, _ = setup.task.evaluate(model, "val", setup.evaluation)
        ranking = load_config(CONFIG, _overrides(release, cache, "model.task=ranking", "model.ranking.positive_threshold=4"))
        task = build_task(ranking.model, ranking.eval)
        filtered = task.training_loader(BatchBuilder(setup.data, ranking.model, task.label), setup.data, BATCH, 0, env)
        held = [None] * world_size
        mine = {"train": len(setup.loader.rows), "steps": len(setup.loader), "positives": len(filtered.rows),
                "positive_steps": len(filtered), "positives_in_split": filtered.rows_in_split}  # fmt: skip
        if world_size > 1:
            dist.all_gather_object(held, mine)
        else:
            held = [mine]
        if env.is_rank0:
            torch.save({"losses": losses, "metrics": metrics, "ranks": held, "train_rows": setup.data.split_rows("train")},
                       Path(out) / f"{world_size}.pt")  # fmt: skip
    finally:
        teardown()
