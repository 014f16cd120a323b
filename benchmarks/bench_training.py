"""Training and inference throughput of mmdlrm against what a user would otherwise write, with a breakdown.

For a model size (configs/debug.yaml or configs/ml25m.yaml) on a prepared dataset, one process:
- mmdlrm and baseline (b) take turns within every repeat (round-robin), so drift hits all alike;
- mmdlrm (DistributedModelParallel, FBGEMM fused row-wise Adagrad; also fused SGD, to isolate the cost of
  FBGEMM's CPU row-wise Adagrad kernel), ids only and with CLIP-sized content
  vectors (512-d image + 384-d text, random: the cost does not depend on their values): samples/s (median of
  repeats) and the step split into input (batch building), forward, backward (with the fused sparse update)
  and optimiser (dense Adam);
- baseline (b): the same DLRM in plain PyTorch (`nn.EmbeddingBag` + SparseAdam) on the same batches;
- baseline (a): the reference notebook's pandas-row Dataset + DataLoader + `nn.Embedding` MLP, input included;
- inference: scored (user, movie) pairs/s, and the time to rank all movies for one user and take the top 10;
- memory bandwidth: a large tensor copy on this machine, and the embedding bytes training reads per second as a
  fraction of it.
"""

from __future__ import annotations

import itertools
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from benchmarks.baselines import NotebookModel, PlainDLRM, notebook_loader, notebook_step, plain_step
from mmdlrm.config import load_config
from mmdlrm.data.batches import BatchBuilder, BatchLoader, SplitRows
from mmdlrm.distributed.env import init_distributed, teardown
from mmdlrm.evaluation.ranking import model_scorer, top_k
from mmdlrm.features.store import MovieVectors
from mmdlrm.model.tables import sparse_features, vocab_of
from mmdlrm.tasks import build_task
from mmdlrm.train import build_model

CLIP_DIMS = {"image": 512, "text": 384}


def random_content(num_movies: int) -> dict[str, MovieVectors]:
    """CLIP-sized unit vectors (512-d image, 384-d text) for every movie: their cost does not depend on values."""
    generator = torch.Generator().manual_seed(0)
    return {m: MovieVectors(torch.nn.functional.normalize(torch.randn(num_movies, d, generator=generator), dim=1).half(),
                            torch.zeros(num_movies, dtype=torch.bool), "random") for m, d in CLIP_DIMS.items()}  # fmt: skip


def _batches(data, builder: BatchBuilder, batch_size: int, count: int) -> tuple[list, float]:
    """`count` random training batches, and the median seconds to build one (the input cost of a step)."""
    rows = SplitRows.from_prepared(data, "train")
    generator = torch.Generator().manual_seed(0)
    batches, seconds = [], []
    for _ in range(count):
        index = torch.randint(len(rows), (batch_size,), generator=generator)
        start = time.perf_counter()
        batches.append(builder.build(rows, index, leave_one_out=True))
        seconds.append(time.perf_counter() - start)
    return batches, statistics.median(seconds)


@dataclass
class Contestant:
    """One way of training, ready to step: its step function, batches, and what it reports besides speed."""

    name: str
    step: Callable
    batches: list
    batch_size: int
    report: dict = field(default_factory=dict)
    parts: dict[str, list[float]] | None = None


def race(contestants: list[Contestant], steps: int, repeats: int) -> dict[str, float]:
    """Median samples/s of each contestant over `repeats` rounds, taking turns within every round.

    Round-robin rather than one after the other, so that a slower or busier stretch of the machine falls on all
    of them alike and the ratios between them hold up.
    """
    for c in contestants:
        for batch in c.batches[:3]:
            c.step(batch)
        if c.parts is not None:
            for values in c.parts.values():
                values.clear()
    rates: dict[str, list[float]] = {c.name: [] for c in contestants}
    for _ in range(repeats):
        for c in contestants:
            start = time.perf_counter()
            for i in range(steps):
                c.step(c.batches[i % len(c.batches)])
            rates[c.name].append(c.batch_size * steps / (time.perf_counter() - start))
    return {name: statistics.median(values) for name, values in rates.items()}


def mmdlrm_contestant(config: str, data, env, steps: int, clip: bool, sparse_optimizer: str = "rowwise_adagrad") -> Contestant:
    cfg = load_config(config, ["train.device=cpu", f"sharding.sparse_optimizer={sparse_optimizer}"])
    sharded = build_model(cfg, data, env, build_task(cfg.model, cfg.eval), content=random_content(data.num_movies) if clip else {})
    model, optimizer = sharded.model, sharded.optimizer
    builder = BatchBuilder(data, cfg.model)
    batches, input_s = _batches(data, builder, cfg.train.batch_size, min(steps, 30))
    parts: dict[str, list[float]] = {"forward": [], "backward": [], "optimizer": []}

    def step(batch) -> None:
        t0 = time.perf_counter()
        loss, _ = model(batch)
        t1 = time.perf_counter()
        optimizer.zero_grad()
        loss.backward()
        t2 = time.perf_counter()
        optimizer.step()
        t3 = time.perf_counter()
        for name, seconds in zip(parts, (t1 - t0, t2 - t1, t3 - t2)):
            parts[name].append(seconds)

    optimizer_name = {"rowwise_adagrad": "row-wise Adagrad", "adagrad": "Adagrad", "sgd": "SGD"}[sparse_optimizer]
    # Embedding rows a sample looks up: every id of every feature (genres, history included), from the batches.
    rows_per_sample = sum(int(b.sparse_features.lengths().sum()) for b in batches) / sum(len(b.labels) for b in batches)
    report = {"input_s": input_s, "lookup_bytes_per_sample": rows_per_sample * cfg.model.embedding_dim * 4,
              "batch_size": cfg.train.batch_size, "embedding_dim": cfg.model.embedding_dim,
              "model": model, "builder": builder, "eval_batch_size": cfg.eval.batch_size}  # fmt: skip
    name = f"mmdlrm (DMP, fused {optimizer_name})" + (" + CLIP vectors" if clip else "")
    return Contestant(name, step, batches, cfg.train.batch_size, report, parts)


def plain_contestant(config: str, data, steps: int) -> Contestant:
    cfg = load_config(config)
    torch.manual_seed(0)
    builder = BatchBuilder(data, cfg.model)
    features = sparse_features(cfg.model, vocab_of(cfg.model, data.manifest["counts"]))  # mmdlrm's, history included
    model = PlainDLRM(features, cfg.model.embedding_dim, cfg.model.dense_arch, cfg.model.over_arch)
    optimizers = model.optimizers(1e-3, cfg.train.dense_lr)
    batches, _ = _batches(data, builder, cfg.train.batch_size, min(steps, 30))
    return Contestant("(b) plain PyTorch DLRM (EmbeddingBag + SparseAdam)", lambda b: plain_step(model, optimizers, b),
                      batches, cfg.train.batch_size)  # fmt: skip


def bench_training(config: str, data, steps: int, repeats: int) -> list[dict]:
    """mmdlrm (row-wise Adagrad, + CLIP vectors, SGD) and baseline (b), raced in turns; then inference."""
    env = init_distributed("cpu")
    try:
        contestants = [mmdlrm_contestant(config, data, env, steps, clip=False),
                       mmdlrm_contestant(config, data, env, steps, clip=True),
                       mmdlrm_contestant(config, data, env, steps, clip=False, sparse_optimizer="sgd"),
                       plain_contestant(config, data, steps)]  # fmt: skip
        rates = race(contestants, steps, repeats)
        first = contestants[0].report
        inference = bench_inference(first["model"], first["builder"], data, first["eval_batch_size"])
    finally:
        teardown()
    rows = []
    for c in contestants:
        row = {"name": c.name, "samples_per_s": rates[c.name]}
        if c.parts is not None:
            row["step_ms"] = {"input": 1000 * c.report["input_s"]} | {k: 1000 * statistics.median(v) for k, v in c.parts.items()}
            row |= {k: c.report[k] for k in ("lookup_bytes_per_sample", "batch_size", "embedding_dim")}
        rows.append(row)
    rows[0]["inference"] = inference
    return rows


def bench_notebook(config: str, data, rows: int) -> dict:
    cfg = load_config(config)
    torch.manual_seed(0)
    loader = notebook_loader(data, min(rows, data.split_rows("train")), cfg.train.batch_size)
    model = NotebookModel(data.num_users, data.num_movies, max(len(data.genres), 1), cfg.model.embedding_dim, cfg.model.over_arch)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    start, seen = time.perf_counter(), 0
    for batch in loader:  # input included: that is where this approach spends its time
        notebook_step(model, optimizer, batch)
        seen += len(batch["rating"])
    return {"name": "(a) reference notebook (pandas rows + DataLoader + nn.Embedding MLP)",
            "samples_per_s": seen / (time.perf_counter() - start)}  # fmt: skip


@torch.no_grad()
def bench_inference(model, builder: BatchBuilder, data, batch_size: int, users: int = 10, batches: int = 10) -> dict:
    """Scored pairs/s over up to `batches` test batches, and one user's top 10 as `recommend` makes it.

    One user's top 10: score every movie, look the user's rated movies up in the seen-movie index
    (`Prepared.seen`, every split), take the best 10 of the rest; the median over `users` seeded users.
    """
    model.eval()
    rows = SplitRows.from_prepared(data, "test")
    loader = BatchLoader(builder, rows, batch_size, shuffle=False)
    start, seen_pairs = time.perf_counter(), 0
    for batch in itertools.islice(loader, batches):
        model(batch)
        seen_pairs += len(batch.labels)
    pairs_per_s = seen_pairs / (time.perf_counter() - start)
    scorer = model_scorer(model, builder, data.num_movies, torch.device("cpu"))
    index = data.seen()
    index.of(0)  # opening the index (memory-mapping its files) is not part of a request
    latencies, lookups, excluded = [], [], []
    for user in np.random.default_rng(0).choice(data.num_users, min(users, data.num_users), replace=False).tolist():
        start = time.perf_counter()
        scores = scorer(torch.tensor([user]))[0]
        looked_up = time.perf_counter()
        rated = index.of(user)
        lookups.append(time.perf_counter() - looked_up)
        top_k(scores, rated, 10)
        latencies.append(time.perf_counter() - start)
        excluded.append(len(rated))
    model.train()
    return {"pairs_per_s": pairs_per_s, "top10_ms": 1000 * statistics.median(latencies),
            "seen_lookup_ms": 1000 * statistics.median(lookups), "seen_movies": statistics.median(excluded),
            "movies": data.num_movies, "users": len(latencies)}  # fmt: skip


def copy_bandwidth(megabytes: int = 512, repeats: int = 5) -> float:
    """Bytes/s of a large tensor copy (read + write), the memory-bandwidth reference."""
    source = torch.ones(megabytes * 2**20 // 4)
    target = torch.empty_like(source)
    target.copy_(source)
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        target.copy_(source)
        seconds.append(time.perf_counter() - start)
    return 2 * source.numel() * 4 / statistics.median(seconds)
