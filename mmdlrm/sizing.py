"""`mmdlrm plan`: how a run's tables would be sharded over a described cluster, and whether they fit, without one.

The module is the one a training run of the config builds (`train.build_module`: ids, genres, year, history,
side features, content arch), wholly on the meta device, its tables sized from the prepared dataset's manifest
or, for a release of another size, from `--users/--movies`. It is planned by the call training makes
(`sharding.plan_tables`) with the workload training gives it (`train.workload`); only the topology differs:
this machine's training world, or the cluster described. No GPU and no process group are needed.
"""

from __future__ import annotations

import datetime
import json
import logging
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import pyarrow.parquet as pq
import torch

from mmdlrm.config import ConfigError, RunConfig, to_dict
from mmdlrm.data.prepare import ensure_prepared
from mmdlrm.distributed.env import DistEnv, launch_rank, pick_device
from mmdlrm.distributed.estimates import Estimate, estimate, plan_text, replicated_bytes
from mmdlrm.distributed.planner import Cluster, this_world
from mmdlrm.distributed.sharding import fuse_sparse_optimizer, plan_tables
from mmdlrm.features.store import vector_dim
from mmdlrm.features.vectors import content_stores
from mmdlrm.model.tables import vocab_of
from mmdlrm.tasks import build_task
from mmdlrm.train import build_module, workload

log = logging.getLogger("mmdlrm")
PLAN_TEXT, PLAN_JSON = "plan.txt", "plan.json"


@dataclass
class Sizes:
    """The table sizes a plan is for: the prepared dataset's manifest counts, users and movies maybe replaced."""

    counts: dict
    prepared: Path
    replaced: dict[str, int]
    """The counts `--users/--movies` replaced (empty: the dataset's own)."""


@dataclass
class Sizing:
    """A plan made for a cluster: TorchRec's plan text (as `plan.txt` holds it) and its estimate."""

    plan: str
    estimate: Estimate
    sizes: Sizes
    cfg: RunConfig

    def to_json(self) -> dict:
        """What was planned, for which tables and cluster, made by what (`plan.json`)."""
        return {
            "made_by": {"command": "mmdlrm plan", "date": datetime.datetime.now().isoformat(timespec="seconds"),
                        "versions": _versions()},  # fmt: skip
            "prepared": str(self.sizes.prepared.resolve()),
            "counts": self.sizes.counts,
            "replaced_counts": self.sizes.replaced,
            "config": to_dict(self.cfg),
            **self.estimate.to_json(),
        }


def this_machine(cfg: RunConfig) -> Cluster:
    """The world `mmdlrm train` started the same way would have: its process count, device and memory."""
    rank, world_size = launch_rank()
    env = DistEnv(rank, world_size, 0, pick_device(cfg.train.device, 0))
    return this_world(env.world_size, env.local_world_size, env.device)


def release_sizes(cfg: RunConfig, users: int | None = None, movies: int | None = None) -> Sizes:
    """The manifest counts of the config's dataset (prepared first if needed), with users and movies replaced where
    given: a release of another size, the same in everything else.

    Raises:
        ConfigError: a count below 1.
    """
    replaced = {k: v for k, v in (("users", users), ("movies", movies)) if v is not None}
    for key, value in replaced.items():
        if value < 1:
            raise ConfigError(f"--{key} must be at least 1, got {value}")
    folder = ensure_prepared(cfg.data, progress=cfg.train.progress)
    counts = json.loads((folder / "manifest.json").read_text())["counts"]
    return Sizes(counts | replaced, folder, replaced)


def content_dims(cfg: RunConfig, prepared: Path) -> dict[str, int]:
    """Each content modality's vector size, read from its feature store (which `mmdlrm features clip` makes).

    Raises:
        FeatureError: a store the config asks for is not made yet.
    """
    if not cfg.features.modality_names:
        return {}
    release = Path(json.loads((prepared / "manifest.json").read_text())["source"]["folder"])
    movie_ids = pq.read_table(prepared / "movies.parquet", columns=["movie_id"])["movie_id"].to_numpy()
    stores = content_stores(cfg.features, cfg.data, release, movie_ids, make=False)
    return {m: vector_dim(folder, m) for m, folder in stores.items()}


def plan_cluster(cfg: RunConfig, cluster: Cluster, sizes: Sizes) -> Sizing:
    """Plan the run's tables over `cluster` as training would, on this machine, and estimate what it costs.

    Raises:
        ConfigError: fewer batch rows than ranks, or tables that do not fit (which, by how much, the fix).
    """
    work = workload(cfg, cluster.world_size)
    if work.rows_per_rank < 1:
        raise ConfigError(f"train.batch_size={cfg.train.batch_size} leaves no rows for each of {cluster.world_size} "
                          f"ranks; raise train.batch_size to at least {cluster.world_size}")  # fmt: skip
    vocab = vocab_of(cfg.model, sizes.counts)
    module = build_module(cfg, vocab, build_task(cfg.model, cfg.eval), content_dims(cfg, sizes.prepared), torch.device("meta"))
    fuse_sparse_optimizer(module, cfg.sharding)  # as training does: the planner counts the optimiser's state
    planned = plan_tables(module, cfg.sharding, cluster, work)
    summary = estimate(planned.options, cluster, planned.available, work.rows_per_rank, replicated_bytes(module))
    return Sizing(plan_text(planned.plan, planned.estimated_bytes), summary, sizes, cfg)


def default_folder(cfg: RunConfig, cluster: Cluster) -> Path:
    """`<output_dir>/plans/<name>-<nodes>x<ranks per node>-<device>`: beside the runs, never inside one."""
    return Path(cfg.output_dir) / "plans" / f"{cfg.name}-{cluster.nodes}x{cluster.local_world_size}-{cluster.device}"


def write(sizing: Sizing, folder: Path) -> Path:
    """`plan.txt` (as a training run writes it) and `plan.json` (the estimate, sizes and config) in `folder`."""
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"--out {folder} is a file; give a folder for plan.txt and plan.json")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / PLAN_TEXT).write_text(sizing.plan + "\n")
    (folder / PLAN_JSON).write_text(json.dumps(sizing.to_json(), indent=2) + "\n")
    return folder


def _versions() -> dict[str, str]:
    out = {}
    for package in ("torch", "torchrec", "fbgemm-gpu", "fbgemm-gpu-cpu"):
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    return out
