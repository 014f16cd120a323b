"""The training loop: one `train(cfg, env)` for every setting, one process or many, CPU or GPU."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from mmdlrm.config import RunConfig, save_config
from mmdlrm.data.batches import DENSE_FEATURES, BatchBuilder, BatchLoader, SplitRows, num_year_buckets
from mmdlrm.data.prepare import Prepared, ensure_prepared, load_prepared
from mmdlrm.distributed import checkpoint
from mmdlrm.distributed.env import DistEnv, log0
from mmdlrm.distributed.sharding import shard
from mmdlrm.evaluation.baselines import evaluate_baselines
from mmdlrm.evaluation.metrics import evaluate
from mmdlrm.inspection.plots import plot_curves, plot_predictions
from mmdlrm.model.tables import Vocab, table_name
from mmdlrm.model.task import build_task

log = logging.getLogger("mmdlrm")


@dataclass
class TrainResult:
    """What a run produced: per-epoch metrics, the best epoch, test metrics beside the baselines, file paths."""

    run_dir: Path
    epochs: list[dict] = field(default_factory=list)
    best_epoch: int = -1
    test: dict[str, float] = field(default_factory=dict)
    baselines: dict[str, dict] = field(default_factory=dict)
    checkpoint: Path | None = None
    prepared_dir: Path | None = None

    def to_json(self) -> dict:
        out = asdict(self)
        return {k: str(v) if isinstance(v, Path) else v for k, v in out.items()}


def selection_metric(task: str) -> tuple[str, float]:
    """Validation metric that picks the best epoch, and its sign (+1: lower is better)."""
    return ("rmse", 1.0) if task == "rating" else ("auc", -1.0)


def build_data(cfg: RunConfig, env: DistEnv) -> Prepared:
    """Prepare the dataset on rank 0 (others wait), then load it on every rank."""
    if env.is_rank0:
        folder = ensure_prepared(cfg.data)
    if env.world_size > 1:
        holder = [str(folder) if env.is_rank0 else None]
        dist.broadcast_object_list(holder, src=0)
        folder = Path(holder[0])
    return load_prepared(folder)


def build_loaders(cfg: RunConfig, data: Prepared, env: DistEnv) -> dict[str, BatchLoader]:
    """Training (shuffled, leave-one-out dense features) and evaluation loaders for this rank."""
    builder = BatchBuilder(data, cfg.model.year_bucket_years, cfg.model.task, cfg.model.liked_threshold)
    loaders = {}
    for split in ("train", "val", "test"):
        training = split == "train"
        loaders[split] = BatchLoader(
            builder,
            SplitRows.from_prepared(data, split),
            cfg.train.batch_size if training else cfg.eval.batch_size,
            shuffle=training,
            seed=cfg.train.seed,
            rank=env.rank,
            world_size=env.world_size,
            leave_one_out=training,
        )
    return loaders


def build_model(cfg: RunConfig, data: Prepared, env: DistEnv):
    """The task module sharded by DistributedModelParallel, its combined optimiser and the sharding plan."""
    torch.manual_seed(cfg.train.seed)
    vocab = Vocab(data.num_users, data.num_movies, len(data.genres), num_year_buckets(cfg.model.year_bucket_years))
    task = build_task(cfg.model, vocab, len(DENSE_FEATURES), device=env.device)
    mean_label = data.mean_rating
    if cfg.model.task == "binary":
        mean_label = float((data.splits["train"]["rating"] >= cfg.model.liked_threshold).mean())
    task.init_output(mean_label)
    local_batch = cfg.train.batch_size // env.world_size
    tables = [table_name(f) for f in vocab.sizes()]
    return shard(task, task.model.dlrm.sparse_arch, tables, cfg.sharding, env, local_batch, cfg.train.dense_lr)


def train(cfg: RunConfig, env: DistEnv) -> TrainResult:
    """Train, validate each epoch, stop early, keep the best checkpoint, test it beside the baselines."""
    run_dir = cfg.run_dir
    result = TrainResult(run_dir=run_dir)
    if env.is_rank0:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
        (run_dir / "metrics.jsonl").write_text("")
    data = build_data(cfg, env)
    result.prepared_dir = data.folder
    loaders = build_loaders(cfg, data, env)
    model, optimizer, plan = build_model(cfg, data, env)
    log0(env, "sharding plan:\n%s", plan)
    if env.is_rank0:
        (run_dir / "plan.txt").write_text(str(plan) + "\n")
        result.baselines = evaluate_baselines(
            data.splits, data.num_users, data.num_movies, cfg.model.task, cfg.model.liked_threshold
        )
    metric, sign = selection_metric(cfg.model.task)
    best_value, bad_epochs = float("inf"), 0
    best_dir = run_dir / "checkpoints" / "best"
    for epoch in range(cfg.train.max_epochs):
        record = _train_epoch(model, optimizer, loaders["train"], epoch, cfg, env)
        record["val"], _, _ = evaluate(model, loaders["val"], cfg.model.task, env.device)
        improved = sign * record["val"][metric] < best_value
        if improved:
            best_value, bad_epochs, result.best_epoch = sign * record["val"][metric], 0, epoch
            checkpoint.save(model, best_dir, env, meta={"epoch": epoch, "val": record["val"]})
        else:
            bad_epochs += 1
        result.epochs.append(record)
        _log_epoch(env, run_dir, record, metric, improved)
        if epoch + 1 >= cfg.train.min_epochs and bad_epochs >= cfg.train.patience:
            log0(env, "early stop: no %s improvement for %d epochs", metric, bad_epochs)
            break
    checkpoint.load(model, best_dir)
    result.checkpoint = best_dir
    result.test, preds, labels = evaluate(model, loaders["test"], cfg.model.task, env.device, keep_predictions=True)
    if env.is_rank0:
        _write_outputs(result, preds.numpy(), labels.numpy(), cfg, metric)
    return result


def _train_epoch(model, optimizer, loader: BatchLoader, epoch: int, cfg: RunConfig, env: DistEnv) -> dict:
    model.train()
    loader.set_epoch(epoch)
    total_loss, steps, samples = torch.zeros((), device=env.device), 0, 0
    start = time.perf_counter()
    bar = tqdm(
        total=len(loader) * cfg.train.batch_size, unit="sample", unit_scale=True, desc=f"epoch {epoch}",
        disable=not (cfg.train.progress and env.is_rank0), leave=False, mininterval=1.0,
    )  # fmt: skip
    for batch in loader:
        loss, _ = model(batch.to(env.device))
        optimizer.zero_grad()
        loss.backward()  # the sparse optimiser steps here, fused into the backward pass
        optimizer.step()
        total_loss += loss.detach()
        steps += 1
        samples += cfg.train.batch_size
        bar.update(cfg.train.batch_size)
        if steps % 50 == 0:
            bar.set_postfix(loss=f"{total_loss.item() / steps:.4f}")
    bar.close()
    seconds = time.perf_counter() - start
    if env.world_size > 1:
        dist.all_reduce(total_loss)
        total_loss /= env.world_size
    return {
        "epoch": epoch,
        "train_loss": total_loss.item() / max(steps, 1),
        "seconds": seconds,
        "samples_per_s": samples / seconds if seconds else 0.0,
    }


def _log_epoch(env: DistEnv, run_dir: Path, record: dict, metric: str, improved: bool) -> None:
    if not env.is_rank0:
        return
    with open(run_dir / "metrics.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")
    log.info(
        "epoch %d: train loss %.4f, val %s %.4f%s (%.0f samples/s)",
        record["epoch"], record["train_loss"], metric, record["val"][metric], " *best*" if improved else "",
        record["samples_per_s"],
    )  # fmt: skip


def _write_outputs(result: TrainResult, preds: np.ndarray, labels: np.ndarray, cfg: RunConfig, metric: str) -> None:
    run_dir = result.run_dir
    plot_curves(result.epochs, result.baselines, metric, run_dir / "plots" / "curves.png")
    plot_predictions(preds, labels, cfg.model.task, run_dir / "plots" / "predictions.png")
    (run_dir / "results.json").write_text(json.dumps(result.to_json(), indent=2) + "\n")
    log.info("test results (best epoch %d):\n%s", result.best_epoch, results_table(result, cfg.model.task))


def results_table(result: TrainResult, task: str) -> str:
    """Test metrics of the model beside both baselines, as a fixed-width table."""
    names = ["rmse", "mae", "mse"] if task == "rating" else ["auc", "log_loss", "accuracy", "rmse"]
    rows = [("global mean", result.baselines["global_mean"]["test"]), ("user+movie bias", result.baselines["bias"]["test"]),
            ("DLRM", result.test)]  # fmt: skip
    lines = [f"{'model':<18}" + "".join(f"{n.upper():>10}" for n in names)]
    lines += [f"{label:<18}" + "".join(f"{values[n]:>10.4f}" for n in names) for label, values in rows]
    return "\n".join(lines)


def evaluate_run(cfg: RunConfig, run_dir: Path, env: DistEnv) -> TrainResult:
    """Test the best checkpoint of the run in `run_dir` beside freshly fitted baselines."""
    best_dir = Path(run_dir) / "checkpoints" / "best"
    result = TrainResult(run_dir=Path(run_dir), checkpoint=best_dir)
    data = build_data(cfg, env)
    result.prepared_dir = data.folder
    loaders = build_loaders(cfg, data, env)
    model, _, _ = build_model(cfg, data, env)
    result.best_epoch = checkpoint.load(model, best_dir).get("epoch", -1)
    result.test, _, _ = evaluate(model, loaders["test"], cfg.model.task, env.device)
    if env.is_rank0:
        result.baselines = evaluate_baselines(
            data.splits, data.num_users, data.num_movies, cfg.model.task, cfg.model.liked_threshold
        )
        log.info("test results of %s (best epoch %d):\n%s", run_dir, result.best_epoch, results_table(result, cfg.model.task))
    return result
