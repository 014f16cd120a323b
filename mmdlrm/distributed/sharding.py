"""Sharding the embedding tables: the planner's plan, DistributedModelParallel and the optimisers.

The planner's inputs are built in `planner.py`, for training and for `mmdlrm plan` alike; `plan_tables` is the
one call both make. The sparse optimiser is fused into the backward pass by FBGEMM (`apply_optimizer_in_backward`);
dense parameters get their own Adam. Capabilities are checked here, before any process can hang in a collective.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from torchrec.distributed import DistributedModelParallel
from torchrec.distributed.planner.types import PlannerError, ShardingOption, Storage
from torchrec.distributed.types import ShardingPlan
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward
from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizerWrapper
from torchrec.optim.optimizers import in_backward_optimizer_filter
from torchrec.optim.rowwise_adagrad import RowWiseAdagrad

from mmdlrm.config import ConfigError, ShardingConfig, TableSharding
from mmdlrm.distributed.env import DistEnv, rank0_decides
from mmdlrm.distributed.estimates import memory_per_rank, plan_text
from mmdlrm.distributed.fit import explain
from mmdlrm.distributed.planner import (  # noqa: F401  (CPU_SHARDING_TYPES: tests and benchmarks import it from here)
    CPU_SHARDING_TYPES,
    Cluster,
    Workload,
    make_planner,
    sharders,
    supported_sharding_types,
    table_feature,
    tables_of,
    this_world,
)

EMBEDDING_PARAM = ".embedding_bags."
"""Marks the embedding tables' weights among the model's parameter names."""
ADAGRAD_EPS = 1e-8
SPARSE_OPTIMIZERS = {"rowwise_adagrad": RowWiseAdagrad, "adagrad": torch.optim.Adagrad, "sgd": torch.optim.SGD}


def check_capabilities(cfg: ShardingConfig, device: torch.device, tables: list[str]) -> None:
    """Raise a ConfigError naming what works when the config asks for what the device cannot do."""
    supported = supported_sharding_types(device)
    for table in tables:
        feature = table_feature(table)
        wanted = cfg.table(feature)
        key = f"sharding.tables.{feature}" if cfg.tables.get(feature, TableSharding()).sharding_type else "sharding.plan"
        if wanted.sharding_type is not None and wanted.sharding_type not in supported:
            raise ConfigError(
                f"{key}={wanted.sharding_type} needs CUDA (NCCL); on {device.type} use one of: {', '.join(supported)}"
            )
        # The sparse optimiser is always fused into the backward pass: sharded tables then run FBGEMM's fused
        # kernels, and only replicated (data_parallel) tables run the dense one.
        replicated = wanted.sharding_type == "data_parallel"
        if (wanted.compute_kernel == "dense" and wanted.sharding_type not in (None, "data_parallel")) or (
            replicated and wanted.compute_kernel not in (None, "dense")
        ):
            raise ConfigError(
                f"sharding.tables.{feature}: {wanted.sharding_type} with compute_kernel={wanted.compute_kernel} does "
                "not exist; data_parallel tables use the dense kernel, sharded ones fused (or fused_uvm* on CUDA)"
            )
        if device.type != "cuda" and wanted.compute_kernel in ("fused_uvm", "fused_uvm_caching"):
            raise ConfigError(
                f"sharding.tables.{feature}.compute_kernel={wanted.compute_kernel} needs CUDA; on cpu use fused or dense"
            )
        if cfg.sparse_weight_decay and (replicated or wanted.compute_kernel == "dense"):
            raise ConfigError(
                f"{key}={wanted.sharding_type} with sharding.sparse_weight_decay: replicated tables are trained by a "
                "dense optimiser that would decay every row, not only the rows a batch touches; use table_wise, "
                "column_wise or table_column_wise (fused kernels)"
            )
    if cfg.sparse_weight_decay and device.type != "cuda":
        raise ConfigError(
            "sharding.sparse_weight_decay needs CUDA: FBGEMM's CPU row-wise Adagrad kernel (fbgemm-gpu-cpu 1.9) ignores "
            "weight decay (its update equals the undecayed one); on CPU use model.embedding_l2, which decays the "
            "same touched rows through the loss"
        )
    if cfg.sparse_optimizer not in SPARSE_OPTIMIZERS:
        raise ConfigError(f"sharding.sparse_optimizer={cfg.sparse_optimizer}; use one of {', '.join(SPARSE_OPTIMIZERS)}")


@dataclass
class Planned:
    """A sharding plan and the planner's estimates for it (the chosen options only where it was made)."""

    plan: ShardingPlan
    estimated_bytes: dict[int, int]
    """The planner's memory estimate for the tables on each rank (weights, optimiser state, buffers)."""
    options: list[ShardingOption] = field(default_factory=list)
    """The planner's choice per table, each shard with its rank, storage and perf estimates."""
    available: Storage | None = None
    """What the planner left to the tables on one rank (its memory less the reservation)."""


def table_names(module: nn.Module) -> list[str]:
    """Names of the embedding tables inside `module` (every EmbeddingBagCollection it holds)."""
    return list(tables_of(module))


def plan_tables(module: nn.Module, cfg: ShardingConfig, cluster: Cluster, workload: Workload) -> Planned:
    """Ask TorchRec's planner, in this process alone, for a plan over `cluster`, restricted to what its device
    supports. Training (over its own world) and `mmdlrm plan` (over a described one) both plan here, after
    `fuse_sparse_optimizer`.

    Raises:
        ConfigError: the tables do not fit: which, by how much, and what would make them fit.
    """
    tables = table_names(module)
    check_capabilities(cfg, torch.device(cluster.device), tables)
    planner, reservation = make_planner(cfg, cluster, workload, module)
    try:
        plan = planner.plan(module, sharders(cfg))
    except PlannerError as err:
        reserved, space = reservation.last_reserved_topology, planner.get_search_space()
        if reserved is None or not space:
            raise ConfigError(f"TorchRec's planner found no plan for {cluster}: {err}") from None
        raise ConfigError(explain(space, cluster, reserved.devices[0].storage, cfg)) from None
    options = planner.get_selected_options()
    available = reservation.last_reserved_topology.devices[0].storage
    return Planned(plan, memory_per_rank(options, cluster.world_size), options, available)


def plan_sharding(module: nn.Module, cfg: ShardingConfig, env: DistEnv, workload: Workload) -> tuple[ShardingPlan, dict[int, int]]:
    """The plan for this world (device, world size, memory per rank), made on rank 0 and handed to every rank.

    Returns:
        the plan, and the planner's estimate of the tables' memory (weights, optimiser state, buffers) per rank.
    """
    cluster = this_world(env.world_size, env.local_world_size, env.device)

    def decide() -> tuple[ShardingPlan, dict[int, int]]:
        planned = plan_tables(module, cfg, cluster, workload)
        return planned.plan, planned.estimated_bytes

    return rank0_decides(env, decide)


def fuse_sparse_optimizer(module: nn.Module, cfg: ShardingConfig) -> tuple[type[torch.optim.Optimizer], dict]:
    """Attach the sparse optimiser to every table of `module`, to run inside the backward pass (FBGEMM fuses it).

    Done before planning: the planner counts the optimiser's state (row-wise Adagrad: one float per row) in each
    shard's memory. Returns the optimiser and its arguments, for the tables the plan leaves unfused.
    """
    optimizer_class = SPARSE_OPTIMIZERS[cfg.sparse_optimizer]
    # FBGEMM's fused kernels default to eps=1e-8, torch's Adagrad to 1e-10: pin it so fused and unfused agree.
    kwargs = {"lr": cfg.sparse_lr} if cfg.sparse_optimizer == "sgd" else {"lr": cfg.sparse_lr, "eps": ADAGRAD_EPS}
    if cfg.sparse_weight_decay:
        kwargs["weight_decay"] = cfg.sparse_weight_decay
    tables = [p for m in module.modules() if isinstance(m, EmbeddingBagCollection) for p in m.parameters()]
    apply_optimizer_in_backward(optimizer_class, tables, dict(kwargs))  # it adds keys
    return optimizer_class, kwargs


@dataclass
class Sharded:
    """The model as DistributedModelParallel placed it, its optimisers, and how the tables were placed."""

    model: DistributedModelParallel
    optimizer: CombinedOptimizer
    plan: ShardingPlan
    estimated_bytes: dict[int, int]
    """The planner's memory estimate for the tables on each rank."""

    def describe(self) -> str:
        """The plan as TorchRec prints it, then the planner's memory estimate per rank (`plan.txt`)."""
        return plan_text(self.plan, self.estimated_bytes)


def shard(
    module: nn.Module,
    cfg: ShardingConfig,
    env: DistEnv,
    workload: Workload,
    dense_lr: float,
    dense_weight_decay: float = 0.0,
) -> Sharded:
    """Fuse the sparse optimiser into the backward pass, shard with DistributedModelParallel, add dense AdamW.

    Args:
        module: the whole task module (tables on the meta device, in any EmbeddingBagCollections it holds).
        workload: rows per rank and ids per row, for the planner's cost model.
    """
    check_capabilities(cfg, env.device, table_names(module))
    optimizer_class, kwargs = fuse_sparse_optimizer(module, cfg)
    plan, estimate = plan_sharding(module, cfg, env, workload)
    model = DistributedModelParallel(module, device=env.device, plan=plan, sharders=sharders(cfg))
    rest = dict(in_backward_optimizer_filter(model.named_parameters()))
    # Dense Adam runs fused (one kernel over all parameters; CPU and CUDA): about 40 % off its step time here.
    # Tables the plan keeps unfused (data_parallel, or a `dense` kernel) still get the sparse optimiser, so that
    # a table trains the same way whatever the planner decides; every other parameter gets Adam.
    tables = {name: p for name, p in rest.items() if EMBEDDING_PARAM in name}
    dense = {name: p for name, p in rest.items() if EMBEDDING_PARAM not in name}
    adam = lambda ps: torch.optim.AdamW(ps, lr=dense_lr, weight_decay=dense_weight_decay, fused=True)  # noqa: E731
    optimizers = [model.fused_optimizer, KeyedOptimizerWrapper(dense, adam)]
    if tables:
        sparse = KeyedOptimizerWrapper(tables, lambda ps: optimizer_class(ps, **kwargs))
        optimizers.insert(1, ("unfused_tables", sparse))
    return Sharded(model, CombinedOptimizer(optimizers), plan, estimate)
