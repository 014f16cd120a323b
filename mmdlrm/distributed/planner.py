"""The planner's inputs, built in one place: the topology, per-table constraints, the sharders, the planner itself.

Training plans for the world it runs in (`this_world`); `mmdlrm plan` plans for a described cluster
(`described`) on any machine: TorchRec's planner needs neither a GPU nor a process group to plan, only a
`Topology`. Everything else the planner is told is the same for both.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

import torch
from fbgemm_gpu.split_table_batched_embeddings_ops_training import WeightDecayMode
from torch import nn
from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
from torchrec.distributed.planner import EmbeddingShardingPlanner
from torchrec.distributed.planner.storage_reservations import FixedPercentageStorageReservation
from torchrec.distributed.planner.types import KernelConfig, ParameterConstraints, Topology, TopologyFactory, TrainerConfig
from torchrec.modules.embedding_modules import EmbeddingBagCollection

from mmdlrm.config import ConfigError, ShardingConfig

CPU_SHARDING_TYPES = ("data_parallel", "table_wise", "column_wise", "table_column_wise")
CUDA_SHARDING_TYPES = (*CPU_SHARDING_TYPES, "row_wise", "table_row_wise")
RESERVED_FRACTION = 0.15
"""Share of each rank's HBM the planner keeps free for what it does not place (dense arches and their optimiser
state, inputs, activations): FixedPercentageStorageReservation."""
GIB = 2**30
DEFAULT_RANKS_PER_NODE = 8
DEFAULT_HBM_GIB = 80.0
"""A described cluster's GPUs, unless told otherwise: 8 per node (an HGX / DGX node) of 80 GiB (A100 / H100)."""


def supported_sharding_types(device: torch.device | str) -> tuple[str, ...]:
    """Sharding types TorchRec can run on `device` (row-wise needs CUDA)."""
    return CUDA_SHARDING_TYPES if torch.device(device).type == "cuda" else CPU_SHARDING_TYPES


def table_feature(table: str) -> str:
    """The feature whose name a table carries (`t_user` -> `user`): the key of its `sharding.tables` entry."""
    return table.removeprefix("t_")


@dataclass(frozen=True)
class Cluster:
    """The ranks a plan is for: how many, how many per node, their device and memory.

    `hbm_bytes` / `ddr_bytes` are per rank; None leaves TorchRec's default (HBM 32 GiB, DDR 128 GiB per rank).
    """

    world_size: int
    local_world_size: int
    device: Literal["cuda", "cpu"]
    hbm_bytes: int | None = None
    ddr_bytes: int | None = None

    @property
    def nodes(self) -> int:
        return math.ceil(self.world_size / self.local_world_size)

    def topology(self) -> Topology:
        """TorchRec's Topology of these ranks (TorchRec's default intra- and inter-node bandwidths)."""
        trainer = TrainerConfig(world_size=self.world_size, local_world_size=self.local_world_size,
                                hbm_cap_bytes=self.hbm_bytes, ddr_cap_bytes=self.ddr_bytes)  # fmt: skip
        return TopologyFactory.create_topology(trainer, kernel_config=KernelConfig(compute_device=self.device))

    def __str__(self) -> str:
        storage = self.topology().devices[0].storage
        memory = f"{storage.hbm / GIB:,.1f} GiB HBM + " if self.device == "cuda" else ""
        return (f"{self.nodes} node{'s' if self.nodes > 1 else ''} x {self.local_world_size} {self.device} "
                f"rank{'s' if self.local_world_size > 1 else ''}, {memory}{storage.ddr / GIB:,.1f} GiB DDR per rank")  # fmt: skip


def this_world(world_size: int, local_world_size: int, device: torch.device) -> Cluster:
    """The world a training run is in: its GPUs' memory, or on CPU the host's memory shared by its local ranks."""
    if device.type == "cuda":
        return Cluster(world_size, local_world_size, "cuda", hbm_bytes=torch.cuda.get_device_properties(device).total_memory)
    host_memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return Cluster(world_size, local_world_size, "cpu", ddr_bytes=host_memory // local_world_size)


def described(nodes: int = 1, per_node: int = DEFAULT_RANKS_PER_NODE, device: Literal["cuda", "cpu"] = "cuda",
              hbm_gib: float | None = None, ddr_gib: float | None = None) -> Cluster:  # fmt: skip
    """A cluster that need not exist: `nodes` x `per_node` ranks of `device`, memory per rank in GiB (HBM:
    DEFAULT_HBM_GIB on CUDA unless given; DDR: TorchRec's default, 128 GiB, unless given).

    Raises:
        ConfigError: a count below 1, a memory size not above 0, or HBM asked of CPU ranks.
    """
    for name, value in (("--nodes", nodes), ("--gpus-per-node", per_node)):
        if value < 1:
            raise ConfigError(f"{name} must be at least 1, got {value}")
    for name, value in (("--hbm-gib", hbm_gib), ("--ddr-gib", ddr_gib)):
        if value is not None and value <= 0:
            raise ConfigError(f"{name} must be above 0, got {value}")
    if device == "cpu" and hbm_gib is not None:
        raise ConfigError("--hbm-gib describes GPU memory; CPU ranks hold their tables in DDR: give --ddr-gib")
    if device == "cuda" and hbm_gib is None:
        hbm_gib = DEFAULT_HBM_GIB
    size = lambda gib: None if gib is None else int(gib * GIB)  # noqa: E731
    return Cluster(nodes * per_node, per_node, device, size(hbm_gib), size(ddr_gib))


@dataclass(frozen=True)
class Workload:
    """What the planner's cost model is told about the inputs: rows per rank in a batch, and the ids a row looks
    up per feature (1 where absent)."""

    rows_per_rank: int
    ids_per_row: Mapping[str, float] = field(default_factory=dict)


def tables_of(module: nn.Module) -> dict[str, list[str]]:
    """Every embedding table inside `module` (in every EmbeddingBagCollection it holds): name -> its features."""
    return {t.name: list(t.feature_names) for m in module.modules() if isinstance(m, EmbeddingBagCollection)
            for t in m.embedding_bag_configs()}  # fmt: skip


def table_dims(module: nn.Module) -> dict[str, int]:
    """Every embedding table inside `module`: name -> embedding dimension."""
    return {t.name: t.embedding_dim for m in module.modules() if isinstance(m, EmbeddingBagCollection)
            for t in m.embedding_bag_configs()}  # fmt: skip


def candidates(cfg: ShardingConfig, device: str) -> list[str]:
    """Sharding types the planner may pick for a table without its own: all the device supports, but with sparse
    weight decay only fused ones (data_parallel would decay rows no batch touched)."""
    types = supported_sharding_types(device)
    return [t for t in types if not (cfg.sparse_weight_decay and t == "data_parallel")]


def constraints(cfg: ShardingConfig, cluster: Cluster, module: nn.Module,
                ids_per_row: Mapping[str, float]) -> dict[str, ParameterConstraints]:  # fmt: skip
    """The planner's per-table constraints: the configured sharding type and kernel, or all the device supports.

    Column-wise shards are at least `dim / world_size` wide (and a multiple of 4, as FBGEMM needs), so that a
    column-wise table is split over the ranks rather than kept whole. `ids_per_row` (feature -> ids a row
    looks up, 1 where absent) is the planner's pooling factor: its compute and input estimates grow with it.
    """
    out = {}
    dims = table_dims(module)
    for table, features in tables_of(module).items():
        wanted = cfg.table(table_feature(table))
        out[table] = ParameterConstraints(
            sharding_types=[wanted.sharding_type] if wanted.sharding_type else candidates(cfg, cluster.device),
            compute_kernels=[wanted.compute_kernel] if wanted.compute_kernel else None,
            min_partition=max(4, dims[table] // cluster.world_size // 4 * 4),
            pooling_factors=[float(ids_per_row.get(f, 1.0)) for f in features],
        )
    return out


def sharders(cfg: ShardingConfig) -> list[EmbeddingBagCollectionSharder]:
    """TorchRec's sharder, with the fused-kernel settings the optimiser's own arguments cannot carry."""
    fused = {}
    if cfg.sparse_weight_decay:  # the weight decay itself travels with the optimiser's arguments
        fused["weight_decay_mode"] = WeightDecayMode.L2 if cfg.sparse_weight_decay_mode == "l2" else WeightDecayMode.DECOUPLE
    return [EmbeddingBagCollectionSharder(fused_params=fused or None)]


def make_planner(cfg: ShardingConfig, cluster: Cluster, workload: Workload,
                 module: nn.Module) -> tuple[EmbeddingShardingPlanner, FixedPercentageStorageReservation]:  # fmt: skip
    """TorchRec's planner of `module`'s tables over `cluster`, and its storage reservation (which holds, after
    planning, the memory left to the tables on each rank)."""
    reservation = FixedPercentageStorageReservation(percentage=RESERVED_FRACTION)
    planner = EmbeddingShardingPlanner(
        topology=cluster.topology(),
        batch_size=workload.rows_per_rank,
        constraints=constraints(cfg, cluster, module, workload.ids_per_row),
        storage_reservation=reservation,
    )
    return planner, reservation
