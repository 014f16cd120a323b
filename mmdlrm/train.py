"""The training loop: one `train(cfg, env)` for every setting, one process or many, CPU or GPU."""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import yaml
from torchrec.datasets.utils import Batch
from torchrec.distributed.train_pipeline import TrainPipelineSparseDist
from tqdm import tqdm

from mmdlrm.config import ConfigError, RunConfig, save_config, to_dict
from mmdlrm.data.batches import DENSE_FEATURES, BatchBuilder, BatchLoader, SplitRows, num_year_buckets
from mmdlrm.data.prepare import Prepared, ensure_prepared, load_prepared
from mmdlrm.distributed import checkpoint
from mmdlrm.distributed.env import DistEnv, log0
from mmdlrm.distributed.sharding import Sharded, shard
from mmdlrm.evaluation.baselines import evaluate_baselines
from mmdlrm.features.extract import ensure_features
from mmdlrm.features.store import MovieVectors, load_vectors
from mmdlrm.evaluation.metrics import evaluate
from mmdlrm.inspection.plots import plot_curves, plot_predictions
from mmdlrm.model.tables import Vocab
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


def cold_movies(cfg: RunConfig, data: Prepared) -> torch.Tensor:
    """A bool per movie: at most `eval.cold_start_max_ratings` training ratings."""
    return torch.from_numpy(data.movies["train_count"] <= cfg.eval.cold_start_max_ratings)


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


def build_model(cfg: RunConfig, data: Prepared, env: DistEnv, content: dict[str, MovieVectors] | None = None) -> Sharded:
    """The task module sharded by DistributedModelParallel, its combined optimiser and the sharding plan.

    `content` (modality -> vectors) overrides the feature store the config names (benchmarks use random ones).
    """
    torch.manual_seed(cfg.train.seed)
    vocab = Vocab(data.num_users, data.num_movies, len(data.genres), num_year_buckets(cfg.model.year_bucket_years))
    content = load_content(cfg, data, env) if content is None else content
    task = build_task(cfg.model, vocab, len(DENSE_FEATURES), device=env.device, projection_dim=cfg.features.projection_dim,
                      content_dims={m: v.vectors.shape[1] for m, v in content.items()})  # fmt: skip
    for modality, vectors in content.items():
        task.model.content.set_vectors(modality, vectors.vectors, vectors.missing)
    mean_label = data.mean_rating
    if cfg.model.task == "binary":
        mean_label = float((data.splits["train"]["rating"] >= cfg.model.liked_threshold).mean())
    task.init_output(mean_label)
    local_batch = cfg.train.batch_size // env.world_size
    sparse = task.model.dlrm.sparse_arch
    return shard(task, sparse, cfg.sharding, env, local_batch, cfg.model.embedding_dim, cfg.train.dense_lr)


def load_content(cfg: RunConfig, data: Prepared, env: DistEnv) -> dict[str, MovieVectors]:
    """The content vectors the config asks for, per modality, in contiguous movie-id order.

    The feature store is made on rank 0 on first use (every movie encoded once); the other ranks wait.
    """
    modalities = [m for m, used in (("image", cfg.features.uses_image), ("text", cfg.features.uses_text)) if used]
    if not modalities:
        return {}
    holder = [None]
    if env.is_rank0:
        release = Path(data.manifest["source"]["folder"])
        movie_ids = data.movies["movie_id"].tolist()
        holder = [str(ensure_features(cfg.features, cfg.data, release, movie_ids, env.device, cfg.train.progress))]
    if env.world_size > 1:
        dist.broadcast_object_list(holder, src=0)
    store = holder[0]
    content = {m: load_vectors(store, data.movies["movie_id"], m) for m in modalities}
    for m, v in content.items():
        log0(env, "content: %s vectors (%d-d) from %s for %d movies, %d missing", m, v.vectors.shape[1], v.model,
             len(v.missing), int(v.missing.sum()))  # fmt: skip
    return content


@dataclass
class TrainState:
    """Where training stands; saved with every `last` checkpoint so that a restarted run continues exactly."""

    epoch: int = 0
    """The epoch in progress."""
    step: int = 0
    """Steps of that epoch already taken (the data position: epoch permutations are drawn from the seed)."""
    loss_sum: float = 0.0
    """Training loss summed over those steps (averaged over ranks)."""
    best_value: float = float("inf")
    best_epoch: int = -1
    bad_epochs: int = 0
    epochs: list[dict] = field(default_factory=list)
    done: bool = False
    """Training finished (early stop or max_epochs); only the test remains."""


def train(cfg: RunConfig, env: DistEnv) -> TrainResult:
    """Train, validate each epoch, stop early, keep the best checkpoint, test it beside the baselines.

    A run stopped part-way (crash, kill, pre-emption) and started again with the same config continues from its
    last checkpoint: same weights, optimiser states and data position, so it ends as an uninterrupted run would.
    """
    run_dir = cfg.run_dir
    result = TrainResult(run_dir=run_dir)
    data = build_data(cfg, env)
    result.prepared_dir = data.folder
    loaders = build_loaders(cfg, data, env)
    sharded = build_model(cfg, data, env)
    model, optimizer = sharded.model, sharded.optimizer
    log0(env, "sharding plan:\n%s", sharded.describe())
    state = _start(cfg, env, model, optimizer)
    if env.is_rank0:
        (run_dir / "plan.txt").write_text(sharded.describe() + "\n")
        result.baselines = evaluate_baselines(data.splits, data.num_users, data.num_movies, cfg.model.task,
                                              cfg.model.liked_threshold, cold_movies(cfg, data).numpy())  # fmt: skip
    metric, sign = selection_metric(cfg.model.task)
    checkpoints = run_dir / "checkpoints"
    while not state.done:
        record = _train_epoch(model, optimizer, loaders["train"], state, cfg, env, checkpoints / "last")
        record["val"], _, _ = evaluate(model, loaders["val"], cfg.model.task, env.device)
        improved = sign * record["val"][metric] < state.best_value
        if improved:
            state.best_value, state.bad_epochs, state.best_epoch = sign * record["val"][metric], 0, state.epoch
            checkpoint.save(checkpoints / "best", env, model, meta={"epoch": state.epoch, "val": record["val"]})
        else:
            state.bad_epochs += 1
        state.epochs.append(record)
        state.epoch, state.step, state.loss_sum = state.epoch + 1, 0, 0.0
        stop = state.epoch >= cfg.train.min_epochs and state.bad_epochs >= cfg.train.patience
        state.done = stop or state.epoch >= cfg.train.max_epochs
        checkpoint.save(checkpoints / "last", env, model, optimizer, meta=asdict(state))
        _log_epoch(env, run_dir, record, metric, improved)
        if stop:
            log0(env, "early stop: no %s improvement for %d epochs", metric, state.bad_epochs)
    result.epochs, result.best_epoch = state.epochs, state.best_epoch
    checkpoint.load(checkpoints / "best", model)
    result.checkpoint = checkpoints / "best"
    result.test, preds, labels = evaluate(model, loaders["test"], cfg.model.task, env.device, keep_predictions=True,
                                          cold_movies=cold_movies(cfg, data))  # fmt: skip
    if env.is_rank0:
        _write_outputs(result, preds.numpy(), labels.numpy(), cfg, metric)
    return result


def _start(cfg: RunConfig, env: DistEnv, model, optimizer) -> TrainState:
    """Resume the unfinished run in `cfg.run_dir` if there is one (and `train.resume`), else start afresh.

    Rank 0 decides and tells the others, so that no rank resumes while another starts over.
    """
    run_dir = cfg.run_dir
    last = run_dir / "checkpoints" / "last"
    decision = ["fresh"]
    if env.is_rank0:
        unfinished = checkpoint.find(last) is not None and not (run_dir / "results.json").is_file()
        if cfg.train.resume and unfinished:
            try:
                _check_same_config(cfg, run_dir / "config.yaml")
                decision = ["resume"]
            except ConfigError as err:
                decision = [str(err)]
    if env.world_size > 1:
        dist.broadcast_object_list(decision, src=0)
    if decision[0] == "resume":
        state = TrainState(**checkpoint.load(last, model, optimizer, env))
        log0(env, "resuming %s at epoch %d, step %d", run_dir, state.epoch, state.step)
        if env.is_rank0:  # metrics.jsonl may hold an epoch the checkpoint does not; rewrite it from the state
            (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in state.epochs))
        return state
    if decision[0] != "fresh":
        raise ConfigError(decision[0])
    if env.is_rank0:
        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
        (run_dir / "results.json").unlink(missing_ok=True)
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
        (run_dir / "metrics.jsonl").write_text("")
    if env.world_size > 1:
        dist.barrier()
    return TrainState()


# Fields that may change between a run and its resumption without changing what it computes.
RESUMABLE_CHANGES = ("train.progress", "train.resume", "train.device", "train.checkpoint_every", "train.pipeline")


def _check_same_config(cfg: RunConfig, saved_path: Path) -> None:
    saved = _flatten(yaml.safe_load(saved_path.read_text()))
    current = _flatten(to_dict(cfg))
    changed = sorted(k for k in saved.keys() | current.keys() if saved.get(k) != current.get(k) and k not in RESUMABLE_CHANGES)
    if changed:
        raise ConfigError(
            f"{cfg.run_dir} holds an unfinished run with a different config ({', '.join(changed)}); "
            "run the same config to resume it, add train.resume=false to start it over, or give a new name=..."
        )


def _flatten(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out |= _flatten(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


def _train_epoch(model, optimizer, loader: BatchLoader, state: TrainState, cfg: RunConfig, env: DistEnv, last: Path) -> dict:
    """Train the rest of `state.epoch`, checkpointing `last` every `train.checkpoint_every` steps."""
    model.train()
    loader.set_epoch(state.epoch)
    total_loss = torch.tensor(state.loss_sum, device=env.device)  # every rank starts from the ranks' mean
    first_step, every = state.step, cfg.train.checkpoint_every
    start = time.perf_counter()
    bar = tqdm(
        total=len(loader) * cfg.train.batch_size, initial=first_step * cfg.train.batch_size, unit="sample",
        unit_scale=True, desc=f"epoch {state.epoch}", disable=not (cfg.train.progress and env.is_rank0), leave=False,
        mininterval=1.0,
    )  # fmt: skip
    for loss in training_steps(model, optimizer, loader.batches(first_step), env, _use_pipeline(cfg, env)):
        total_loss += loss
        state.step += 1
        bar.update(cfg.train.batch_size)
        if state.step % 50 == 0:
            bar.set_postfix(loss=f"{total_loss.item() / state.step:.4f}")
        if every and state.step % every == 0 and state.step < len(loader):
            state.loss_sum = _mean_over_ranks(total_loss, env)
            checkpoint.save(last, env, model, optimizer, meta=asdict(state))
    bar.close()
    seconds = time.perf_counter() - start
    samples = (state.step - first_step) * cfg.train.batch_size
    return {
        "epoch": state.epoch,
        "train_loss": _mean_over_ranks(total_loss, env) / max(state.step, 1),
        "seconds": seconds,
        "samples_per_s": samples / seconds if seconds else 0.0,
    }


def _use_pipeline(cfg: RunConfig, env: DistEnv) -> bool:
    if cfg.train.pipeline == "auto":
        return env.device.type == "cuda"
    return cfg.train.pipeline == "sparse_dist"


def training_steps(model, optimizer, batches: Iterable[Batch], env: DistEnv, pipeline: bool) -> Iterator[torch.Tensor]:
    """Take one optimiser step per batch, yielding each step's (detached) loss.

    With `pipeline`, TorchRec's TrainPipelineSparseDist copies batch i+2 to the device and starts the input
    all-to-all of batch i+1 while batch i computes; it is detached again afterwards, so that evaluation and
    checkpoints see the plain model. The sparse optimiser steps inside the backward pass either way.
    """
    if not pipeline:
        for batch in batches:
            loss, _ = model(batch.to(env.device, non_blocking=True))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            yield loss.detach()
        return
    sparse_dist = TrainPipelineSparseDist(model, optimizer, env.device)
    iterator = iter(batches)
    try:
        while True:
            try:
                loss, _, _ = sparse_dist.progress(iterator)
            except StopIteration:
                return
            yield loss
    finally:
        sparse_dist.detach()


def _mean_over_ranks(value: torch.Tensor, env: DistEnv) -> float:
    if env.world_size == 1:
        return value.item()
    reduced = value.clone()
    dist.all_reduce(reduced)
    return reduced.item() / env.world_size


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
    """Test metrics of the model beside both baselines, as a fixed-width table, then the cold-start slice."""
    names = ["rmse", "mae", "mse"] if task == "rating" else ["auc", "log_loss", "accuracy", "rmse"]
    blocks = [("test", "test", "model")]
    if "cold_start" in result.test:
        blocks.append(("test_cold_start", "cold_start", "cold-start movies"))
    lines = []
    for baseline_key, model_key, title in blocks:
        model = result.test if model_key == "test" else result.test[model_key]
        rows = [("global mean", result.baselines["global_mean"][baseline_key]),
                ("user+movie bias", result.baselines["bias"][baseline_key]), ("DLRM", model)]  # fmt: skip
        lines.append(f"{title:<18}" + "".join(f"{n.upper():>10}" for n in names))
        lines += [f"{label:<18}" + "".join(f"{values[n]:>10.4f}" for n in names) for label, values in rows]
    return "\n".join(lines)


def evaluate_run(cfg: RunConfig, run_dir: Path, env: DistEnv) -> TrainResult:
    """Test the best checkpoint of the run in `run_dir` beside freshly fitted baselines."""
    best_dir = Path(run_dir) / "checkpoints" / "best"
    result = TrainResult(run_dir=Path(run_dir), checkpoint=best_dir)
    data = build_data(cfg, env)
    result.prepared_dir = data.folder
    loaders = build_loaders(cfg, data, env)
    model = build_model(cfg, data, env).model
    result.best_epoch = checkpoint.load(best_dir, model).get("epoch", -1)
    cold = cold_movies(cfg, data)
    result.test, _, _ = evaluate(model, loaders["test"], cfg.model.task, env.device, cold_movies=cold)
    if env.is_rank0:
        result.baselines = evaluate_baselines(data.splits, data.num_users, data.num_movies, cfg.model.task,
                                              cfg.model.liked_threshold, cold.numpy())  # fmt: skip
        log.info("test results of %s (best epoch %d):\n%s", run_dir, result.best_epoch, results_table(result, cfg.model.task))
    return result
