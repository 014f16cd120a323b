"""Sharding the embedding tables: the planner, DistributedModelParallel and the optimisers.

The sparse optimiser is fused into the backward pass by FBGEMM (`apply_optimizer_in_backward`); dense parameters
get their own Adam. Capabilities are checked here, before any process can hang in a collective.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from fbgemm_gpu.split_table_batched_embeddings_ops_training import WeightDecayMode
from torch import nn
from torchrec.distributed import DistributedModelParallel
from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
from torchrec.distributed.planner import EmbeddingShardingPlanner
from torchrec.distributed.planner.storage_reservations import FixedPercentageStorageReservation
from torchrec.distributed.planner.types import KernelConfig, ParameterConstraints, TopologyFactory, TrainerConfig
from torchrec.distributed.types import ShardingPlan
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward
from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizerWrapper
from torchrec.optim.optimizers import in_backward_optimizer_filter
from torchrec.optim.rowwise_adagrad import RowWiseAdagrad

from mmdlrm.config import ConfigError, ShardingConfig, TableSharding
from mmdlrm.distributed.env import DistEnv, rank0_decides

CPU_SHARDING_TYPES = ("data_parallel", "table_wise", "column_wise", "table_column_wise")
CUDA_SHARDING_TYPES = (*CPU_SHARDING_TYPES, "row_wise", "table_row_wise")
EMBEDDING_PARAM = ".embedding_bags."
"""Marks the embedding tables' weights among the model's parameter names."""
ADAGRAD_EPS = 1e-8
SPARSE_OPTIMIZERS = {"rowwise_adagrad": RowWiseAdagrad, "adagrad": torch.optim.Adagrad, "sgd": torch.optim.SGD}


def supported_sharding_types(device: torch.device) -> tuple[str, ...]:
    """Sharding types TorchRec can run on `device` (row-wise needs CUDA)."""
    return CUDA_SHARDING_TYPES if device.type == "cuda" else CPU_SHARDING_TYPES


def table_feature(table: str) -> str:
    """The feature whose name a table carries (`t_user` -> `user`): the key of its `sharding.tables` entry."""
    return table.removeprefix("t_")


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


def _topology(env: DistEnv):
    if env.device.type == "cuda":
        trainer = TrainerConfig(
            world_size=env.world_size,
            local_world_size=env.local_world_size,
            hbm_cap_bytes=torch.cuda.get_device_properties(env.device).total_memory,
        )
    else:
        host_memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        trainer = TrainerConfig(
            world_size=env.world_size, local_world_size=env.local_world_size, ddr_cap_bytes=host_memory // env.local_world_size
        )
    return TopologyFactory.create_topology(trainer, kernel_config=KernelConfig(compute_device=env.device.type))


def constraints(cfg: ShardingConfig, env: DistEnv, embedding_dim: int, tables: list[str]) -> dict[str, ParameterConstraints]:
    """The planner's per-table constraints: the configured sharding type and kernel, or all the device supports.

    Column-wise shards are at least `embedding_dim / world_size` wide (and a multiple of 4, as FBGEMM needs), so
    that a column-wise table is split over the ranks rather than kept whole.
    """
    min_partition = max(4, embedding_dim // env.world_size // 4 * 4)
    out = {}
    for table in tables:
        wanted = cfg.table(table_feature(table))
        out[table] = ParameterConstraints(
            sharding_types=[wanted.sharding_type] if wanted.sharding_type else _candidates(cfg, env.device),
            compute_kernels=[wanted.compute_kernel] if wanted.compute_kernel else None,
            min_partition=min_partition,
        )
    return out


def sharders(cfg: ShardingConfig) -> list[EmbeddingBagCollectionSharder]:
    """TorchRec's sharder, with the fused-kernel settings the optimiser's own arguments cannot carry."""
    fused = {}
    if cfg.sparse_weight_decay:  # the weight decay itself travels with the optimiser's arguments
        fused["weight_decay_mode"] = WeightDecayMode.L2 if cfg.sparse_weight_decay_mode == "l2" else WeightDecayMode.DECOUPLE
    return [EmbeddingBagCollectionSharder(fused_params=fused or None)]


def table_names(module: nn.Module) -> list[str]:
    """Names of the embedding tables inside `module` (every EmbeddingBagCollection it holds)."""
    return [t.name for m in module.modules() if isinstance(m, EmbeddingBagCollection) for t in m.embedding_bag_configs()]


def _candidates(cfg: ShardingConfig, device: torch.device) -> list[str]:
    """Sharding types the planner may pick for a table without its own: all the device supports, but with sparse
    weight decay only fused ones (data_parallel would decay rows no batch touched)."""
    types = supported_sharding_types(device)
    return [t for t in types if not (cfg.sparse_weight_decay and t == "data_parallel")]


def make_planner(
    cfg: ShardingConfig, env: DistEnv, batch_size: int, embedding_dim: int, tables: list[str]
) -> EmbeddingShardingPlanner:
    """TorchRec's planner over this world's real topology (device, world size, memory per rank)."""
    return EmbeddingShardingPlanner(
        topology=_topology(env),
        batch_size=batch_size,
        constraints=constraints(cfg, env, embedding_dim, tables),
        storage_reservation=FixedPercentageStorageReservation(percentage=0.15),
    )


def plan_sharding(
    module: nn.Module, cfg: ShardingConfig, env: DistEnv, batch_size: int, embedding_dim: int
) -> tuple[ShardingPlan, dict[int, int]]:
    """Ask TorchRec's planner for a plan over the real topology, restricted to what the device supports.

    Returns:
        the plan, and the planner's estimate of the tables' memory (weights, optimiser state, buffers) per rank.
    """
    tables = table_names(module)
    check_capabilities(cfg, env.device, tables)
    planner = make_planner(cfg, env, batch_size, embedding_dim, tables)
    plan = planner.collective_plan(module, sharders(cfg), dist.GroupMember.WORLD)
    estimate = dict.fromkeys(range(env.world_size), 0)
    for option in planner.get_selected_options():  # rank 0 planned for everyone (collective_plan broadcasts)
        for placed in option.shards:
            estimate[placed.rank] += placed.storage.ddr + placed.storage.hbm
    return plan, rank0_decides(env, lambda: estimate)


@dataclass
class Sharded:
    """The model as DistributedModelParallel placed it, its optimisers, and how the tables were placed."""

    model: DistributedModelParallel
    optimizer: CombinedOptimizer
    plan: ShardingPlan
    estimated_bytes: dict[int, int]
    """The planner's memory estimate for the tables on each rank."""

    def describe(self) -> str:
        """The plan as TorchRec prints it, then the planner's memory estimate per rank."""
        memory = ", ".join(f"rank {r}: {b / 2**20:,.1f} MiB" for r, b in sorted(self.estimated_bytes.items()))
        return f"{self.plan}\nplanner memory estimate for the tables: {memory}"


def shard(
    module: nn.Module,
    sparse_params: nn.Module,
    cfg: ShardingConfig,
    env: DistEnv,
    batch_size: int,
    embedding_dim: int,
    dense_lr: float,
    dense_weight_decay: float = 0.0,
) -> Sharded:
    """Fuse the sparse optimiser into the backward pass, shard with DistributedModelParallel, add dense AdamW.

    Args:
        module: the whole task module (tables on the meta device).
        sparse_params: the module holding the embedding tables.
        batch_size: per-rank batch, for the planner's cost model.
    """
    check_capabilities(cfg, env.device, table_names(module))
    optimizer_class = SPARSE_OPTIMIZERS[cfg.sparse_optimizer]
    # FBGEMM's fused kernels default to eps=1e-8, torch's Adagrad to 1e-10: pin it so fused and unfused agree.
    kwargs = {"lr": cfg.sparse_lr} if cfg.sparse_optimizer == "sgd" else {"lr": cfg.sparse_lr, "eps": ADAGRAD_EPS}
    if cfg.sparse_weight_decay:
        kwargs["weight_decay"] = cfg.sparse_weight_decay
    apply_optimizer_in_backward(optimizer_class, sparse_params.parameters(), dict(kwargs))  # it adds keys
    plan, estimate = plan_sharding(module, cfg, env, batch_size, embedding_dim)
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
