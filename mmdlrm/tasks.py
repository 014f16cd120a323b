"""The prediction tasks: `rating`, `binary` and `ranking`, each one object owning everything that differs.

A task says how ratings become labels, the loss and the output transform (it is the `Objective` of
`model.task.TaskModule`), where the output bias starts, which rows train and how (sampled negatives for
ranking), how a split is evaluated and which metric picks the best epoch (and in which direction), which
baselines apply, and how the results read. The training loop, the report and the inspection tools ask the task;
none of them tests which task it is. A new task is one new class here and one value of `model.task`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from mmdlrm.config import ConfigError, EvalConfig, FeatureConfig, ModelConfig
from mmdlrm.data.batches import BatchBuilder, BatchLoader, SplitRows
from mmdlrm.data.negatives import NegativeSampler, known_pairs
from mmdlrm.data.prepare import Prepared
from mmdlrm.data.tower_batches import TowerBatchBuilder
from mmdlrm.distributed.env import DistEnv
from mmdlrm.evaluation.baselines import evaluate_baselines
from mmdlrm.evaluation.ease import fit_ease
from mmdlrm.evaluation.metrics import evaluate
from mmdlrm.evaluation.ranking import (
    EXCLUDED,
    KS,
    RankingTarget,
    Scorer,
    evaluate_ranking,
    model_scorer,
    popularity_scorer,
    ranking_target,
    tower_scorer,
)
from mmdlrm.inspection.plots import plot_predictions
from mmdlrm.model.tables import Vocab
from mmdlrm.model.task import build_retrieval_module, build_task_module
from mmdlrm.schema import DENSE_FEATURES, RATING_RANGE

EASE_REGULARISATIONS = (10.0, 30.0, 100.0, 300.0, 1000.0, 3000.0)
"""EASE's lambda grid, picked on validation (Steck's ml-20m optimum, 500, sits inside it)."""


@dataclass
class Block:
    """One table of results: a title, the metric columns and a row per model."""

    title: str
    names: list[str]
    rows: list[tuple[str, dict[str, float]]]

    def text(self) -> str:
        width = max([18, len(self.title), *(len(label) for label, _ in self.rows)])  # every number under its name
        lines = [f"{self.title:<{width}}" + "".join(f"{n.upper():>12}" for n in self.names)]
        lines += [f"{label:<{width}}" + "".join(f"{values[n]:>12.4f}" for n in self.names) for label, values in self.rows]
        return "\n".join(lines)


@dataclass
class Evaluation:
    """What evaluating a split needs besides the model: the data, batches, this process's place, the settings."""

    data: Prepared
    builder: BatchBuilder
    env: DistEnv
    cfg: EvalConfig
    seed: int = 0
    targets: dict[str, RankingTarget] = field(default_factory=dict)
    """Ranking protocols by split, made on first use."""

    def target(self, split: str) -> RankingTarget:
        if split not in self.targets:
            held = self.data.splits[split]
            self.targets[split] = ranking_target(held, self.data.seen(EXCLUDED[split]), split, self.cfg.relevant_threshold,
                                                 self.cfg.ranking_users, self.seed)  # fmt: skip
            held.release()  # the target keeps what it needs
        return self.targets[split]

    def cold_movies(self) -> torch.Tensor:
        """A bool per movie: at most `eval.cold_start_max_ratings` training ratings."""
        return torch.from_numpy(self.data.movies["train_count"] <= self.cfg.cold_start_max_ratings)


class Task:
    """The base every task fills in; see the module docstring."""

    name: ClassVar[str]
    monitor: ClassVar[str]
    """Validation metric that picks the best epoch."""
    higher_is_better: ClassVar[bool]
    metric_names: ClassVar[tuple[str, ...]]
    """Columns of the results table (and the metrics evaluation computes)."""

    model_label: ClassVar[str] = "DLRM"
    """The model's name in results tables."""

    def __init__(self, model: ModelConfig, evaluation: EvalConfig) -> None:
        self.model_cfg, self.eval_cfg = model, evaluation

    # -- the model and its batches
    def build_module(self, vocab: Vocab, features: FeatureConfig, content_dims: dict[str, int] | None = None,
                     device: torch.device | None = None, sparse_device: str = "meta") -> nn.Module:  # fmt: skip
        """This task's model with its objective (`(loss, (loss, predictions, labels))` per batch), unsharded: tables
        on `sparse_device` (meta: left to DistributedModelParallel)."""
        return build_task_module(self.model_cfg, self, vocab, len(DENSE_FEATURES), device=device, sparse_device=sparse_device,
                                 content_dims=content_dims, projection_dim=features.projection_dim, fusion=features.fusion,
                                 content_dropout=features.dropout)  # fmt: skip

    def builder(self, data: Prepared) -> BatchBuilder:
        """What turns rows of `data` into this task's batches (training and evaluation)."""
        return BatchBuilder(data, self.model_cfg, self.label)

    def scorer(self, module: nn.Module, builder: BatchBuilder, num_movies: int, device: torch.device) -> Scorer:
        """Scores of every movie for a few users at a time from `module` (in eval mode; sharded or not)."""
        return model_scorer(module, builder, num_movies, device)

    # -- labels, loss, outputs: the Objective of TaskModule
    def label(self, rating: torch.Tensor) -> torch.Tensor:
        """Stars -> this task's label."""
        return rating

    def loss(self, logits: torch.Tensor, labels: torch.Tensor, movies: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError

    def predictions(self, logits: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def initial_logit(self, data: Prepared) -> float:
        """Where the output layer's bias starts (predictions at the training mean: a faster, steadier start)."""
        return 0.0

    def epoch_note(self) -> str | None:
        """Something about this epoch's training rows worth saying (once a run), or None. Every rank calls it."""
        return None

    # -- training rows
    def training_loader(self, builder: BatchBuilder, data: Prepared, batch_size: int, seed: int, env: DistEnv) -> BatchLoader:
        """The shuffled training batches of this rank (dense features leave each row's own rating out)."""
        return BatchLoader(builder, SplitRows.from_prepared(data, "train"), batch_size, shuffle=True, seed=seed,
                           rank=env.rank, world_size=env.world_size, leave_one_out=True)  # fmt: skip

    # -- evaluation
    def better(self, value: float, best: float | None) -> bool:
        return best is None or (value > best if self.higher_is_better else value < best)

    def evaluate(self, model: nn.Module, split: str, ev: Evaluation, keep_predictions: bool = False) -> tuple[dict, torch.Tensor | None, torch.Tensor | None]:
        """Metrics of `model` on `split` (all ranks take part), and this rank's predictions and labels if kept."""
        raise NotImplementedError

    def baselines(self, ev: Evaluation) -> dict[str, dict]:
        """The baselines that apply, fitted on the training split and scored on val and test (rank 0 alone)."""
        raise NotImplementedError

    def result_blocks(self, test: dict, baselines: dict[str, dict]) -> list[Block]:
        """The test results beside the baselines, as tables."""
        raise NotImplementedError

    def results_table(self, test: dict, baselines: dict[str, dict]) -> str:
        return "\n".join(block.text() for block in self.result_blocks(test, baselines))

    def plot_predictions(self, preds: np.ndarray, labels: np.ndarray, path: Path) -> Path | None:
        """A plot of test predictions against labels, where the task has one."""
        return None

    def after_training(self, run_dir: Path) -> None:
        """What a finished run writes besides results and plots (rank 0 alone)."""


class PointwiseTask(Task):
    """A task scored row by row on the held-out ratings, beside the global mean and user + movie biases."""

    BASELINES: ClassVar[tuple[tuple[str, str], ...]] = (("global_mean", "global mean"), ("bias", "user+movie bias"))

    def from_stars(self, stars: np.ndarray) -> np.ndarray:
        """A star rating (the bias baseline's output) as this task's prediction."""
        return stars

    def plot_predictions(self, preds, labels, path):
        return plot_predictions(preds, labels, self.name, path)

    def evaluate(self, model, split, ev, keep_predictions=False):
        rows = SplitRows.from_prepared(ev.data, split)
        loader = BatchLoader(ev.builder, rows, ev.cfg.batch_size, shuffle=False, rank=ev.env.rank, world_size=ev.env.world_size)
        cold = ev.cold_movies() if split == "test" else None
        return evaluate(model, loader, self.metric_names, ev.env.device, keep_predictions, cold_movies=cold)

    def baselines(self, ev):
        data = ev.data
        out = evaluate_baselines(data.splits, data.num_users, data.num_movies, self.metric_names, self.label,
                                 self.from_stars, ev.cold_movies().numpy())  # fmt: skip
        for columns in data.splits.values():
            columns.release()  # fitted once, before training: not held through it
        return out

    def result_blocks(self, test, baselines):
        blocks = [("test", "model", "test")]
        if test.get("cold_start") is not None:
            blocks.append(("test_cold_start", "cold-start movies", "cold_start"))
        out = []
        for baseline_key, title, model_key in blocks:
            rows = [(label, baselines[key][baseline_key]) for key, label in self.BASELINES if key in baselines]
            rows.append(("DLRM", test if model_key == "test" else test[model_key]))
            out.append(Block(title, list(self.metric_names), rows))
        if "cold_start" in test and test["cold_start"] is None:
            few = self.eval_cfg.cold_start_max_ratings
            out.append(Block(f"cold-start movies: none in the test split (no test rating is of a movie with at most "
                             f"{few} training ratings, eval.cold_start_max_ratings)", [], []))  # fmt: skip
        return out


class RatingTask(PointwiseTask):
    """Predict the stars: lo + (hi - lo) * sigmoid(logit), trained with MSE."""

    name = "rating"
    monitor = "rmse"
    higher_is_better = False
    metric_names = ("rmse", "mae", "mse")

    def loss(self, logits, labels, movies=None):
        return nn.functional.mse_loss(self.predictions(logits), labels)

    def predictions(self, logits):
        lo, hi = RATING_RANGE
        return lo + (hi - lo) * torch.sigmoid(logits)

    def initial_logit(self, data):
        lo, hi = RATING_RANGE
        return _logit((data.mean_rating - lo) / (hi - lo))


class BinaryTask(PointwiseTask):
    """Predict "liked" (rating >= model.liked_threshold): a probability, trained with BCE on the logit."""

    name = "binary"
    monitor = "auc"
    higher_is_better = True
    metric_names = ("auc", "log_loss", "accuracy", "rmse")

    def label(self, rating):
        return (rating >= self.model_cfg.liked_threshold).float()

    def loss(self, logits, labels, movies=None):
        return nn.functional.binary_cross_entropy_with_logits(logits, labels)

    def predictions(self, logits):
        return torch.sigmoid(logits)

    def from_stars(self, stars):
        lo, hi = RATING_RANGE
        return (stars - lo) / (hi - lo)

    def initial_logit(self, data):
        liked = float((data.splits["train"]["rating"] >= self.model_cfg.liked_threshold).mean())
        data.splits["train"].release()
        return _logit(liked)


class RankingTask(Task):
    """Which movies a user chooses: observed interactions against sampled negatives; scored by full ranking.

    Positives are the training ratings (or those at or above `model.ranking.positive_threshold`); each gets
    `model.ranking.negatives` sampled movies (see data/negatives.py). The loss is BCE over every row, BPR over
    (positive, negative) pairs, or a sampled softmax over each positive and its negatives, log-Q corrected.
    The prediction is the logit: a score to rank by. Evaluation ranks every movie for a sample of users (see
    evaluation/ranking.py); baselines are popularity and EASE.
    """

    name = "ranking"
    monitor = "ndcg@20"
    higher_is_better = True
    metric_names = tuple(f"{m}@{k}" for m in ("recall", "ndcg", "hit_rate") for k in KS)
    BASELINES: ClassVar[tuple[tuple[str, str], ...]] = (("popularity", "popularity"), ("ease", "EASE"))

    def __init__(self, model: ModelConfig, evaluation: EvalConfig) -> None:
        super().__init__(model, evaluation)
        self.log_q: torch.Tensor | None = None
        """log of each movie's sampling probability (for the softmax loss's correction)."""
        self.sampler: NegativeSampler | None = None
        self.env: DistEnv | None = None
        self.noted = False

    def label(self, rating):
        return torch.ones_like(rating)

    def positives(self, data: Prepared) -> np.ndarray:
        """A bool per training row: does it count as a positive?"""
        ratings = data.splits["train"]["rating"]
        threshold = self.model_cfg.ranking.positive_threshold
        return np.ones(len(ratings), bool) if threshold is None else ratings >= threshold

    def training_positives(self, data: Prepared) -> np.ndarray:
        """`positives`, refusing a threshold that leaves none to train on."""
        keep = self.positives(data)
        if not keep.any():
            raise ConfigError(
                f"model.ranking.positive_threshold={self.model_cfg.ranking.positive_threshold}: no training rating of "
                f"{data.folder} is at or above it (the highest is {data.splits['train']['rating'].max():g}), so there "
                "are no positives to train on; lower it, or leave it unset (every rating is a positive)"
            )
        return keep

    def training_loader(self, builder, data, batch_size, seed, env):
        cfg = self.model_cfg.ranking
        train = data.splits["train"]
        keep = self.training_positives(data)
        if cfg.negatives >= data.num_movies:
            raise ConfigError(
                f"model.ranking.negatives={cfg.negatives}, but {data.folder} has {data.num_movies:,} movies: a "
                f"positive can have at most {data.num_movies - 1:,} other movies as negatives; lower "
                "model.ranking.negatives"
            )
        known = known_pairs(train["user"], train["movie"], data.num_movies) if cfg.exclude_known else None  # rated at all
        popularity = np.bincount(train["movie"][keep], minlength=data.num_movies)
        sampler = NegativeSampler(popularity, cfg.negatives, cfg.sampler, cfg.alpha, known)
        self.sampler, self.env = sampler, env
        self.log_q = torch.log(sampler.probability.float().clamp_min(1e-12))
        rows = SplitRows.from_prepared(data, "train").where(torch.from_numpy(keep))
        train.release()  # every rank read the whole split for the sampler: not held through training
        return BatchLoader(builder, rows, batch_size, shuffle=True, seed=seed, rank=env.rank, world_size=env.world_size,
                           leave_one_out=True, negatives=sampler)  # fmt: skip

    def epoch_note(self):
        """How many negatives were known positives kept after the redraws (see data/negatives.py), the first epoch
        that has any: summed over the ranks, each of which draws for its own rows."""
        sampler = self.sampler
        if sampler is None or sampler.known is None or self.noted or self.env is None:
            return None
        counts = torch.tensor([sampler.collisions, sampler.drawn], dtype=torch.int64, device=self.env.device)
        sampler.collisions = sampler.drawn = 0
        if self.env.world_size > 1:
            dist.all_reduce(counts)
        kept, drawn = counts.tolist()
        if not kept:
            return None
        self.noted = True
        return (f"{kept:,} of the {drawn:,} negatives drawn ({kept / drawn:.2%}) are movies their user rated in "
                f"training, kept after {sampler.retries} redraws: those users rated (nearly) every movie, which leaves "
                "little else to draw. Each such negative teaches the model that its user did not choose a movie they "
                "did; a few hardly matter, many blur what it learns (said once a run)")

    def loss(self, logits, labels, movies=None):
        kind, k = self.model_cfg.ranking.loss, self.model_cfg.ranking.negatives
        if kind == "bce":
            return nn.functional.binary_cross_entropy_with_logits(logits, labels)
        positives = len(logits) // (1 + k)
        if kind == "softmax" and self.log_q is not None and movies is not None:
            logits = logits - self.log_q.to(logits.device)[movies]
        pos, neg = logits[:positives], logits[positives:].view(positives, k)
        if kind == "bpr":
            return -nn.functional.logsigmoid(pos.unsqueeze(1) - neg).mean()
        choices = torch.cat([pos.unsqueeze(1), neg], dim=1)
        return nn.functional.cross_entropy(choices, torch.zeros(positives, dtype=torch.long, device=logits.device))

    def predictions(self, logits):
        return logits

    def initial_logit(self, data):
        # BCE starts at the rate of positives among the rows; the pairwise losses do not depend on the bias.
        return _logit(1.0 / (1 + self.model_cfg.ranking.negatives)) if self.model_cfg.ranking.loss == "bce" else 0.0

    def evaluate(self, model, split, ev, keep_predictions=False):
        was_training = model.training
        model.eval()
        try:
            scorer = self.scorer(model, ev.builder, ev.data.num_movies, ev.env.device)
            metrics = evaluate_ranking(scorer, ev.target(split), ev.data.num_movies, KS, self.rows_per_call(ev), ev.env)
        finally:
            model.train(was_training)
        return metrics, None, None

    def rows_per_call(self, ev: Evaluation) -> int:
        """(user, movie) scores per scorer call in evaluation: every movie for eval.batch_size // movies users."""
        return ev.cfg.batch_size

    def baselines(self, ev):
        return ranking_baselines(ev, self.positives(ev.data))

    def result_blocks(self, test, baselines):
        rows = [(label, baselines[key]["test"]) for key, label in self.BASELINES if key in baselines]
        return [Block(f"test ({test.get('users', 0)} users)", list(self.metric_names), [*rows, (self.model_label, test)])]


class RetrievalTask(RankingTask):
    """Which movies a user chooses, learnt by a two-tower model whose movie vectors a FAISS index searches.

    Positives are those of the ranking task (`model.ranking.positive_threshold`). Each positive is one row of a
    softmax over the batch's candidates (`model.retrieval.negatives`: the whole catalogue, the batch's positives,
    or those plus uniformly drawn movies), the user's other training movies left out (`mask_seen`). Sampled
    candidates are log-Q corrected: a movie's logit is lowered by the log of how often it is expected among the
    candidates (popularity for in-batch ones, uniform for drawn ones), so that the softmax estimates the full
    one instead of learning popularity twice. Evaluation ranks every movie by the dot product of unit vectors,
    the protocol of the ranking task; baselines: popularity and EASE.
    """

    name = "retrieval"
    model_label = "two-tower"

    def build_module(self, vocab, features, content_dims=None, device=None, sparse_device="meta"):
        return build_retrieval_module(self.model_cfg, self, vocab, device=device, sparse_device=sparse_device,
                                      content_dims=content_dims, projection_dim=features.projection_dim,
                                      content_dropout=features.dropout)  # fmt: skip

    def builder(self, data):
        return TowerBatchBuilder(data, self.model_cfg, self.model_cfg.retrieval.negatives_for(data.num_movies))

    def scorer(self, module, builder, num_movies, device):
        return tower_scorer(module, builder, device)

    def rows_per_call(self, ev):
        return 256 * ev.data.num_movies  # a dot product per pair: cheap, and the catalogue is encoded per call

    def training_loader(self, builder, data, batch_size, seed, env):
        cfg = self.model_cfg.retrieval
        kind = cfg.negatives_for(data.num_movies)
        train = data.splits["train"]
        keep = self.training_positives(data)
        popularity = np.bincount(train["movie"][keep], minlength=data.num_movies).astype(np.float64)
        local = batch_size // env.world_size
        sampler, drawn = None, 0
        if kind == "sampled":
            per_row = max(1, round(cfg.sampled / local))
            sampler, drawn = NegativeSampler(popularity, per_row, "uniform"), per_row * local
        if kind == "catalogue":
            self.log_q = None
        else:  # expected copies of each movie among a batch's candidates: positives by popularity, drawn uniformly
            expected = local * popularity / popularity.sum() + drawn / data.num_movies
            self.log_q = torch.log(torch.from_numpy(expected).float().clamp_min(1e-12))
        rows = SplitRows.from_prepared(data, "train").where(torch.from_numpy(keep))
        train.release()  # every rank read the whole split for the popularity: not held through training
        return BatchLoader(builder, rows, batch_size, shuffle=True, seed=seed, rank=env.rank, world_size=env.world_size,
                           leave_one_out=True, negatives=sampler)  # fmt: skip

    def loss(self, logits, labels, movies=None):
        """Softmax cross-entropy of each row's positive among its candidates (B x C logits), log-Q corrected."""
        if self.log_q is not None and movies is not None:
            logits = logits - self.log_q.to(logits.device)[movies]
        return nn.functional.cross_entropy(logits, labels)

    def initial_logit(self, data):
        return 0.0

    def after_training(self, run_dir):
        """The FAISS index of every movie's vector, from the exported model, into the run folder."""
        from mmdlrm.inspection.run import open_run  # the run is read back as any finished run is
        from mmdlrm.retrieval.recommenders import ensure_index

        ensure_index(open_run(run_dir))


def ranking_baselines(ev: Evaluation, positives: np.ndarray, splits: tuple[str, ...] = ("val", "test")) -> dict[str, dict]:
    """Popularity and EASE, fitted on the `positives` (a bool per training row), ranked like the model on `splits`.

    EASE's regularisation is picked by validation NDCG@20 (this process alone: call on rank 0).
    """
    data = ev.data
    train = data.splits["train"]
    rank = lambda scorer, split: evaluate_ranking(scorer, ev.target(split), data.num_movies, KS, ev.cfg.batch_size)  # noqa: E731
    popularity = popularity_scorer(train["movie"][positives], data.num_movies)
    out = {"popularity": {split: rank(popularity, split) for split in splits}}
    ease, tried = fit_ease(train["user"][positives], train["movie"][positives], data.num_users, data.num_movies,
                           EASE_REGULARISATIONS, lambda s: rank(s, "val")["ndcg@20"], ev.cfg.ease_max_items)  # fmt: skip
    scorer = ease.scorer()
    out["ease"] = {split: rank(scorer, split) for split in splits} | {
        "regularisation": ease.regularisation, "items": len(ease.items),
        "validation_by_regularisation": {str(k): v for k, v in tried.items()}}  # fmt: skip
    train.release()
    return out


TASKS: dict[str, type[Task]] = {cls.name: cls for cls in (RatingTask, BinaryTask, RankingTask, RetrievalTask)}


def build_task(model: ModelConfig, evaluation: EvalConfig) -> Task:
    """The task object `model.task` names."""
    return TASKS[model.task](model, evaluation)


def _logit(p: float) -> float:
    p = min(max(p, 1e-3), 1 - 1e-3)
    return math.log(p / (1 - p))
