"""The training loop: one `train(cfg, env)` for every setting and task, one process or many, CPU or GPU."""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torchrec.datasets.utils import Batch
from torchrec.distributed.train_pipeline import TrainPipelineSparseDist
from tqdm import tqdm

from mmdlrm import run_folder
from mmdlrm.config import RunConfig, TrainConfig
from mmdlrm.data.batches import BatchLoader
from mmdlrm.data.prepare import Prepared, ensure_prepared, load_prepared
from mmdlrm.data.tables import DataError
from mmdlrm.distributed import checkpoint
from mmdlrm.distributed.env import DistEnv, log0, rank0_decides
from mmdlrm.distributed.planner import Workload
from mmdlrm.distributed.sharding import Sharded, shard
from mmdlrm.features.store import MovieVectors
from mmdlrm.features.vectors import content_stores
from mmdlrm.features.vectors import load_content as load_vectors
from mmdlrm.folders import FolderLock, naming_full_disk
from mmdlrm.inspection.board import Board
from mmdlrm.inspection.plots import plot_curves
from mmdlrm.model.tables import Vocab, vocab_of
from mmdlrm.schema import HISTORY_FEATURE
from mmdlrm.tasks import Evaluation, Task, build_task

log = logging.getLogger("mmdlrm")

EpochHook = Callable[[dict], None]
"""Called with each finished epoch's record (`epoch`, `train_loss`, `val` metrics, ...) on every rank, in order:
after the epoch's checkpoint and metrics line are written, and, in a resumed run, first for each epoch it restores.
It may raise to stop the run there (as `mmdlrm tune` prunes a trial): the run is then left unfinished, its last
checkpoint kept, and the exception goes on to the caller."""


@dataclass
class TrainResult:
    """What a run produced: per-epoch metrics, the best epoch, test metrics beside the baselines, file paths."""

    run_dir: Path
    epochs: list[dict] = field(default_factory=list)
    best_epoch: int = -1
    test: dict = field(default_factory=dict)
    baselines: dict[str, dict] = field(default_factory=dict)
    checkpoint: Path | None = None
    prepared_dir: Path | None = None

    def to_json(self) -> dict:
        out = asdict(self)
        return {k: str(v) if isinstance(v, Path) else v for k, v in out.items()}


def build_data(cfg: RunConfig, env: DistEnv) -> Prepared:
    """Prepare the dataset on rank 0 (others wait), then open it on every rank for its own part of each split.

    Each rank holds the per-user and per-movie tables whole and reads only its part of the training, validation
    and test rows (see data/parts.py and BatchLoader); whole splits are read only where asked for (baselines).
    """
    folder = rank0_decides(env, lambda: ensure_prepared(cfg.data, progress=cfg.train.progress))
    return load_prepared(folder, rank=env.rank, world_size=env.world_size)


def build_model(cfg: RunConfig, data: Prepared, env: DistEnv, task: Task, content: dict[str, MovieVectors] | None = None) -> Sharded:
    """The task module sharded by DistributedModelParallel, its combined optimiser and the sharding plan.

    `content` (modality -> vectors) overrides the feature store the config names (benchmarks use random ones).
    The seed is set right before the weights are drawn, after any encoder has run, so a run that has to make
    its feature store starts from the same weights as one that finds it made.
    """
    content = load_content(cfg, data, env) if content is None else content
    torch.manual_seed(cfg.train.seed)
    vocab = vocab_of(cfg.model, data.manifest["counts"])
    module = build_module(cfg, vocab, task, {m: v.vectors.shape[1] for m, v in content.items()}, env.device)
    for modality, vectors in content.items():
        module.model.content.set_vectors(modality, vectors.vectors, vectors.missing)
    module.init_output(task.initial_logit(data))
    return shard(module, cfg.sharding, env, workload(cfg, env.world_size), cfg.train.dense_lr, cfg.train.dense_weight_decay)


def build_module(cfg: RunConfig, vocab: Vocab, task: Task, content_dims: dict[str, int], device: torch.device) -> nn.Module:
    """The module a run of `cfg` trains (the task's own: `task.build_module`), its tables sized by `vocab` and left
    on the meta device (for DistributedModelParallel, or the planner alone, to place); the rest on `device`.

    Training and `mmdlrm plan` both build it here, so that they plan the same tables.
    """
    return task.build_module(vocab, cfg.features, content_dims, device=device)


def workload(cfg: RunConfig, world_size: int) -> Workload:
    """What the planner's cost model is told about a run's batches: rows per rank, and the user history's length
    as the ids its feature looks up per row (an upper bound: users with fewer training ratings have fewer)."""
    ids = {HISTORY_FEATURE: float(cfg.model.history_length)} if cfg.model.history_length else {}
    return Workload(cfg.train.batch_size // world_size, ids)


def load_content(cfg: RunConfig, data: Prepared, env: DistEnv) -> dict[str, MovieVectors]:
    """The content vectors the config asks for, per modality, in contiguous movie-id order.

    The feature stores are made on rank 0 on first use (every movie encoded once); the other ranks wait.
    """
    if not cfg.features.modality_names:
        return {}
    release = Path(data.manifest["source"]["folder"])
    stores = rank0_decides(env, lambda: content_stores(cfg.features, cfg.data, release, data.movies["movie_id"], True,
                                                       env.device, cfg.train.progress))  # fmt: skip
    content = load_vectors(stores, data.movies["movie_id"])
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
    best_value: float | None = None
    best_epoch: int = -1
    bad_epochs: int = 0
    epochs: list[dict] = field(default_factory=list)
    done: bool = False
    """Training finished (early stop or max_epochs); only the test remains."""


@dataclass
class Setup:
    """Everything a run builds before its first step."""

    data: Prepared
    task: Task
    loader: BatchLoader
    sharded: Sharded
    evaluation: Evaluation


def build(cfg: RunConfig, env: DistEnv) -> Setup:
    """Data, task, training batches, the sharded model and what evaluation needs.

    Raises:
        DataError: a split too small to train or to evaluate on.
    """
    data = build_data(cfg, env)
    if cfg.model.demographics and not data.manifest["counts"].get("user_features"):
        log0(env, "model.demographics: %s has no users file (ml-100k's u.user, ml-1m's users.dat); training without "
             "age, gender, occupation and zip", data.manifest["source"]["folder"])  # fmt: skip
    task = build_task(cfg.model, cfg.eval)
    builder = task.builder(data)
    loader = task.training_loader(builder, data, cfg.train.batch_size, cfg.train.seed, env)
    counts = data.manifest["counts"]
    if len(loader) == 0:
        raise DataError(
            f"{data.folder}: the training split has {loader.rows_in_split:,} rows (for this task), fewer than one "
            f"batch (train.batch_size={cfg.train.batch_size}); lower train.batch_size or use more data"
        )
    for split in ("val", "test"):
        if counts[split] == 0:
            raise DataError(f"{data.folder}: the {split} split is empty; raise data.{split}_fraction or use more data")
    sharded = build_model(cfg, data, env, task)
    return Setup(data, task, loader, sharded, Evaluation(data, builder, env, cfg.eval, cfg.train.seed))


def train(cfg: RunConfig, env: DistEnv, on_epoch: EpochHook | None = None) -> TrainResult:
    """Train, validate each epoch, stop early, keep the best checkpoint, test it beside the baselines.

    With `eval.test=false` the run ends after its last validation: no test, no baselines, the test split never
    opened. `on_epoch` sees each epoch's record as it is written (see `EpochHook`).

    A run stopped part-way (crash, kill, pre-emption) and started again with the same config continues from its
    last checkpoint: same weights, optimiser states and data position, so it ends as an uninterrupted run would.
    A finished run is left as it is (run_folder.RunFinished) unless `overwrite=true`. The run folder is held by
    this run alone (rank 0 holds it for every rank: they share it); a full disk is named with what was kept.

    Raises:
        FolderBusy: another process is writing the run folder.
        NoSpace: the disk filled up; the last checkpoint is kept and the same command continues from it.
    """
    lock = FolderLock(cfg.run_dir, "mmdlrm train", "give this run another name=...")
    rank0_decides(env, lambda: run_folder.hold(cfg, lock))
    try:
        with naming_full_disk(cfg.run_dir, lambda: _kept(cfg.run_dir)):
            return _train(cfg, env, on_epoch or (lambda record: None))
    finally:
        lock.release()


def _kept(run_dir: Path) -> str:
    """What a run stopped by a full disk keeps, and what the same command then does."""
    found = checkpoint.find(run_dir / "checkpoints" / "last")
    if found is None:
        return ("no checkpoint had been saved yet. Free some space there, then run the same command again: it starts "
                "the run over")
    meta = json.loads((found / checkpoint.COMPLETE).read_text())["meta"]
    return (f"kept: the run's last checkpoint (epoch {meta.get('epoch')}, step {meta.get('step')}) and its records up "
            "to it. Free some space there, then run the same command again: it continues from that checkpoint")


def _train(cfg: RunConfig, env: DistEnv, on_epoch: EpochHook) -> TrainResult:
    run_dir = cfg.run_dir
    last = run_dir / "checkpoints" / "last"
    decision = rank0_decides(env, lambda: run_folder.decide_start(cfg, checkpoint.find(last) is not None))
    setup = build(cfg, env)
    task, model, optimizer = setup.task, setup.sharded.model, setup.sharded.optimizer
    log0(env, "sharding plan:\n%s", setup.sharded.describe())
    schedule = Schedule(optimizer, cfg.train, len(setup.loader))  # before a resumed state's rates are loaded
    state = _start(cfg, env, decision, model, optimizer)
    result = TrainResult(run_dir=run_dir, prepared_dir=setup.data.folder.resolve())  # inspection works from any folder
    board = Board(run_dir / "tensorboard") if cfg.train.tensorboard and env.is_rank0 else None
    if env.is_rank0:
        (run_dir / "plan.txt").write_text(setup.sharded.describe() + "\n")
        if cfg.eval.test:  # fitted for the test table: a validation-only run has none
            result.baselines = task.baselines(setup.evaluation)
    references = {name: b["val"][task.monitor] for name, b in result.baselines.items()}
    checkpoints = run_dir / "checkpoints"
    for record in state.epochs:  # a resumed run's restored epochs, so that the hook sees the whole curve
        on_epoch(record)
    while not state.done:
        record = _train_epoch(model, optimizer, setup.loader, state, cfg, env, checkpoints / "last", board, schedule)
        note = task.epoch_note()
        if note is not None and env.is_rank0:
            log.warning("epoch %d: %s", state.epoch, note)
        record["val"], _, _ = task.evaluate(model, "val", setup.evaluation)
        value = record["val"][task.monitor]
        improved = task.better(value, state.best_value)
        if improved:
            state.best_value, state.bad_epochs, state.best_epoch = value, 0, state.epoch
            checkpoint.save(checkpoints / "best", env, model, meta={"epoch": state.epoch, "val": record["val"]})
        else:
            state.bad_epochs += 1
        state.epochs.append(record)
        state.epoch, state.step, state.loss_sum = state.epoch + 1, 0, 0.0
        stop = state.epoch >= cfg.train.min_epochs and state.bad_epochs >= cfg.train.patience
        state.done = stop or state.epoch >= cfg.train.max_epochs
        checkpoint.save(checkpoints / "last", env, model, optimizer, meta=asdict(state))
        if env.is_rank0:
            run_folder.append_epoch(run_dir, record)
            log.info("epoch %d: train loss %.4f, val %s %.4f%s (%.0f samples/s)", record["epoch"], record["train_loss"],
                     task.monitor, value, " *best*" if improved else "", record["samples_per_s"])  # fmt: skip
            if board is not None:
                board.epoch(record["epoch"], record["train_loss"], record["val"], references)
        if stop:
            log0(env, "early stop: no %s improvement for %d epochs", task.monitor, state.bad_epochs)
        on_epoch(record)
    result.epochs, result.best_epoch = state.epochs, state.best_epoch
    result.checkpoint = checkpoints / "best"
    preds = labels = None
    if cfg.eval.test:
        checkpoint.load(checkpoints / "best", model)
        result.test, preds, labels = task.evaluate(model, "test", setup.evaluation, keep_predictions=True)
    if env.is_rank0:
        _write_outputs(result, task, preds, labels)
        task.after_training(run_dir)
        if board is not None:
            _log_embeddings(board, run_dir, setup.data)
            board.close()
    return result


def _start(cfg: RunConfig, env: DistEnv, decision: str, model, optimizer) -> TrainState:
    """Resume the unfinished run in `cfg.run_dir` (`decision` is `resume`, made on rank 0 for every rank by
    run_folder.decide_start), or start afresh (`fresh`)."""
    run_dir = cfg.run_dir
    last = run_dir / "checkpoints" / "last"
    if decision == "resume":
        try:
            state = TrainState(**checkpoint.load(last, model, optimizer, env))
        except checkpoint.CheckpointError as err:
            raise checkpoint.CheckpointError(
                f"{err}. To train this run from the start instead, add train.resume=false (the damaged checkpoint "
                "is then removed), or give a new name=..."
            ) from None
        log0(env, "resuming %s at epoch %d, step %d", run_dir, state.epoch, state.step)
        if env.is_rank0:
            run_folder.rewrite_epochs(run_dir, state.epochs)
        return state
    rank0_decides(env, lambda: run_folder.start_fresh(cfg))
    return TrainState()


def _train_epoch(model, optimizer, loader: BatchLoader, state: TrainState, cfg: RunConfig, env: DistEnv, last: Path,
                 board: Board | None, schedule: Schedule) -> dict:  # fmt: skip
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
    schedule(state.epoch * len(loader) + first_step)
    for loss in training_steps(model, optimizer, loader.batches(first_step), env, _use_pipeline(cfg, env)):
        total_loss += loss
        state.step += 1
        schedule(state.epoch * len(loader) + state.step)  # the rate of the next step
        bar.update(cfg.train.batch_size)
        if state.step % 50 == 0:
            bar.set_postfix(loss=f"{total_loss.item() / state.step:.4f}")
        if board is not None:
            rate = (state.step - first_step) * cfg.train.batch_size / (time.perf_counter() - start)
            board.step(state.epoch * len(loader) + state.step, loss, rate)
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


def lr_factor(cfg: TrainConfig, step: int, total: int) -> float:
    """The learning-rate multiplier at global step `step` of `total`: linear warm-up, then the configured decay."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.lr_decay == "none":
        return 1.0
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps))
    shape = 0.5 * (1 + math.cos(math.pi * progress)) if cfg.lr_decay == "cosine" else 1.0 - progress
    return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * shape


class Schedule:
    """Sets every optimiser's learning rate (dense AdamW, fused and unfused sparse) for a global step.

    The rates are recomputed from the configured ones at every step, never read back, so a resumed run (whose
    optimiser state holds the last step's rates) follows the same schedule.
    """

    def __init__(self, optimizer, cfg: TrainConfig, steps_per_epoch: int) -> None:
        self.groups = optimizer.param_groups
        self.base = [g["lr"] for g in self.groups]
        self.cfg, self.total = cfg, cfg.max_epochs * steps_per_epoch
        self.active = cfg.warmup_steps > 0 or cfg.lr_decay != "none"

    def __call__(self, step: int) -> None:
        if self.active:
            factor = lr_factor(self.cfg, step, self.total)
            for group, base in zip(self.groups, self.base):
                group["lr"] = base * factor


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


def _write_outputs(result: TrainResult, task: Task, preds: torch.Tensor | None, labels: torch.Tensor | None) -> None:
    run_dir = result.run_dir
    plot_curves(result.epochs, result.baselines, task.monitor, task.higher_is_better, run_dir / "plots" / "curves.png")
    if preds is not None and labels is not None:
        task.plot_predictions(preds.numpy(), labels.numpy(), run_dir / "plots" / "predictions.png")
    run_folder.write_results(run_dir, result.to_json())
    if not result.test:
        best = result.epochs[result.best_epoch]["val"][task.monitor]
        log.info("validation only (eval.test=false): best epoch %d, val %s %.4f; the test split was not opened",
                 result.best_epoch, task.monitor, best)  # fmt: skip
        return
    log.info("test results (best epoch %d):\n%s", result.best_epoch, task.results_table(result.test, result.baselines))
    log.info("run written to %s (results.json, plots/, checkpoints/best); next: `mmdlrm recommend %s --user <userId>`, "
             "`mmdlrm report %s`", run_dir, run_dir, run_dir)  # fmt: skip


def _log_embeddings(board: Board, run_dir: Path, data: Prepared) -> None:
    """The best model's movie and genre tables in TensorBoard's projector (from the exported, unsharded model)."""
    from mmdlrm.export import export_run, load_exported
    from mmdlrm.inspection.embeddings import table

    exported = load_exported(export_run(run_dir))
    board.embeddings(table(exported, "movie"), exported.titles, data.movies["train_count"], table(exported, "genre"),
                     exported.genres)  # fmt: skip


def evaluate_run(cfg: RunConfig, run_dir: Path, env: DistEnv) -> TrainResult:
    """Test the best checkpoint of the run in `run_dir` beside freshly fitted baselines."""
    best_dir = Path(run_dir) / "checkpoints" / "best"
    result = TrainResult(run_dir=Path(run_dir), checkpoint=best_dir)
    setup = build(cfg, env)
    result.prepared_dir = setup.data.folder.resolve()
    result.best_epoch = checkpoint.load(best_dir, setup.sharded.model).get("epoch", -1)
    result.test, _, _ = setup.task.evaluate(setup.sharded.model, "test", setup.evaluation)
    if env.is_rank0:
        result.baselines = setup.task.baselines(setup.evaluation)
        log.info("test results of %s (best epoch %d):\n%s", run_dir, result.best_epoch,
                 setup.task.results_table(result.test, result.baselines))  # fmt: skip
    return result
