"""TorchRec's planner over described clusters, on a CPU-only machine: CUDA plans of 8 and 32 ranks, tables
larger than a rank split or cached, tables larger than the cluster refused with a fix that works."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn
from torchrec.distributed.planner.stats import _calculate_critical_path
from torchrec.modules.embedding_configs import EmbeddingBagConfig, PoolingType
from torchrec.modules.embedding_modules import EmbeddingBagCollection

from mmdlrm.config import ConfigError, ShardingConfig, TableSharding
from mmdlrm.distributed.estimates import critical_path, estimate, replicated_bytes
from mmdlrm.distributed.planner import GIB, Cluster, Workload, constraints, described
from mmdlrm.distributed.sharding import fuse_sparse_optimizer, plan_tables

SPLIT = ("row_wise", "table_row_wise", "column_wise", "table_column_wise")
UVM = ("fused_uvm", "fused_uvm_caching")


def _module(rows: dict[str, int], dim: int = 64) -> nn.Module:
    """Tables named like mmdlrm's (t_<feature>), on the meta device: nothing is allocated, whatever their size."""
    tables = [EmbeddingBagConfig(name=f"t_{f}", embedding_dim=dim, num_embeddings=n, feature_names=[f],
                                 pooling=PoolingType.SUM) for f, n in rows.items()]  # fmt: skip
    module = nn.ModuleDict({"ebc": EmbeddingBagCollection(tables=tables, device=torch.device("meta"))})
    fuse_sparse_optimizer(module, ShardingConfig())  # row-wise Adagrad, as training attaches it before planning
    return module


def _covered(planned, table: str, rows: int, dim: int) -> None:
    """The table's shards tile it exactly: every row and column on exactly one rank."""
    option = next(o for o in planned.options if o.name == table)
    cells = sum(s.size[0] * s.size[1] for s in option.shards)
    replicas = len(option.shards) if option.sharding_type == "data_parallel" else 1
    assert cells == rows * dim * replicas
    assert all(0 <= s.offset[0] and s.offset[0] + s.size[0] <= rows and s.offset[1] + s.size[1] <= dim for s in option.shards)


@pytest.mark.parametrize("nodes", [1, 4])
def test_cuda_topologies_of_8_and_32_ranks_are_planned_without_a_gpu(nodes):
    rows = {"user": 2_000_000, "movie": 60_000, "genre": 20, "year": 28}
    cluster = described(nodes, 8, "cuda", 80)
    planned = plan_tables(_module(rows), ShardingConfig(), cluster, Workload(1024))
    assert cluster.world_size == 8 * nodes
    placed = planned.plan.plan["ebc"]
    assert set(placed) == {f"t_{f}" for f in rows}
    assert "/cuda:" in str(planned.plan) and "/cpu" not in str(planned.plan)  # placed on the GPUs described
    for table, sharding in placed.items():
        assert set(sharding.ranks) <= set(range(8 * nodes))
        _covered(planned, table, rows[table.removeprefix("t_")], 64)
    # a fused table's estimate holds at least its weights and row-wise Adagrad's one float per row
    user = next(o for o in planned.options if o.name == "t_user")
    if user.compute_kernel == "fused":
        assert sum(s.storage.hbm for s in user.shards) >= 2_000_000 * (64 + 1) * 4


def test_the_cost_models_critical_path_is_torchrecs():
    planned = plan_tables(_module({"user": 500_000, "movie": 60_000, "genre": 20}), ShardingConfig(),
                          described(4, 8, "cuda", 80), Workload(512))  # fmt: skip
    expected = _calculate_critical_path(planned.options)
    assert critical_path(planned.options) == pytest.approx((expected.comms_estimate, expected.comp_estimate))


@pytest.mark.parametrize("kernel", [None, "fused"])
def test_a_table_larger_than_one_ranks_hbm_is_split_or_cached_and_fits(kernel):
    cluster = described(1, 8, "cuda", hbm_gib=2)
    rows = 16_000_000  # x 64 x 4 bytes = 3.8 GiB of weights: more than one rank's 2 GiB
    cfg = ShardingConfig(tables={"user": TableSharding(compute_kernel=kernel)} if kernel else {})
    planned = plan_tables(_module({"user": rows, "movie": 1000}), cfg, cluster, Workload(512))
    user = next(o for o in planned.options if o.name == "t_user")
    assert user.sharding_type in SPLIT or user.compute_kernel in UVM
    if kernel == "fused":
        assert user.sharding_type in SPLIT and len({s.rank for s in user.shards}) >= 2
    _covered(planned, "t_user", rows, 64)
    summary = estimate(planned.options, cluster, planned.available, 512, 0)
    assert max(r.hbm for r in summary.ranks) <= planned.available.hbm == int(0.85 * 2 * GIB)
    assert max(r.ddr for r in summary.ranks) <= planned.available.ddr


def _refusal(rows: dict[str, int], cluster: Cluster, dim: int = 64) -> str:
    with pytest.raises(ConfigError) as refused:
        plan_tables(_module(rows, dim), ShardingConfig(), cluster, Workload(512))
    return str(refused.value)


def test_a_table_too_large_for_the_whole_cluster_is_refused_with_its_name_sizes_and_fixes_that_work():
    cluster = described(1, 8, "cuda", hbm_gib=1, ddr_gib=1)
    rows = 400_000_000  # x 64 x 4 bytes = 95 GiB, against 8 x (0.85 + 1) GiB
    message = _refusal({"user": rows, "movie": 1000}, cluster)
    assert message.startswith(f"table t_user ({rows:,} rows x 64) does not fit on 1 node x 8 cuda ranks")
    short = float(re.search(r": ([\d,.]+) GiB short", message).group(1).replace(",", ""))
    weights = rows * 64 * 4 / GIB
    assert weights - 8 * (0.85 + 1) <= short <= 1.1 * weights  # at least the weights beyond what the ranks hold
    # the fixes it names make it fit: more ranks of the same kind, or a smaller dimension
    nodes = int(re.search(r"--nodes (\d+) --gpus-per-node 8", message).group(1))
    bigger = described(nodes, 8, "cuda", hbm_gib=1, ddr_gib=1)
    plan_tables(_module({"user": rows, "movie": 1000}), ShardingConfig(), bigger, Workload(512))
    dim = int(re.search(r"model.embedding_dim=(\d+)", message).group(1))
    assert dim < 64
    plan_tables(_module({"user": rows, "movie": 1000}, dim), ShardingConfig(), cluster, Workload(512))
    with pytest.raises(ConfigError):  # and the cluster's own size did not
        plan_tables(_module({"user": rows, "movie": 1000}), ShardingConfig(), described(nodes - 1, 8, "cuda", 1, 1), Workload(512))


def test_a_table_kept_on_one_rank_by_the_config_is_refused_with_the_constraint_named():
    cfg = ShardingConfig(plan="table_wise")
    with pytest.raises(ConfigError, match=r"table t_user .* over 1 rank\) needs .* one rank leaves .*or sharding.plan="
                                          r"table_wise left out, so that the planner may split the table"):  # fmt: skip
        plan_tables(_module({"user": 40_000_000}), cfg, described(1, 8, "cuda", 2, 2), Workload(512))


def test_a_table_held_in_hbm_by_the_config_is_told_of_uvm_caching_which_fits():
    cluster, rows = described(1, 8, "cuda", hbm_gib=1), 40_000_000  # 9.5 GiB of weights against 8 x 0.85 GiB of HBM
    pinned = ShardingConfig(tables={"user": TableSharding(compute_kernel="fused")})
    with pytest.raises(ConfigError, match="sharding.tables.user.compute_kernel=fused_uvm_caching") as refused:
        plan_tables(_module({"user": rows}), pinned, cluster, Workload(512))
    assert "sharding.tables.user.compute_kernel=fused left out" in str(refused.value)
    cached = ShardingConfig(tables={"user": TableSharding(compute_kernel="fused_uvm_caching")})
    planned = plan_tables(_module({"user": rows}), cached, cluster, Workload(512))
    assert planned.options[0].compute_kernel == "fused_uvm_caching"


def test_tables_that_fit_one_at_a_time_but_not_together_are_refused_as_such():
    cluster = described(1, 2, "cpu", ddr_gib=1)  # no HBM, no UVM: DDR alone
    rows = 5_000_000  # x 64 x 4 bytes = 1.2 GiB each: one fits on 2 ranks, three do not
    message = _refusal({"user": rows, "movie": rows, "history": rows}, cluster)
    assert message.startswith("the tables fit one at a time but not together on 1 node x 2 cpu ranks")
    nodes = int(re.search(r"--nodes (\d+) --gpus-per-node 2", message).group(1))
    plan_tables(_module({"user": rows, "movie": rows, "history": rows}), ShardingConfig(),
                described(nodes, 2, "cpu", ddr_gib=1), Workload(512))  # fmt: skip


def test_ids_per_row_reach_the_planner_as_pooling_factors():
    module = _module({"user": 100, "movie": 50})
    module.ebc = EmbeddingBagCollection(tables=[
        EmbeddingBagConfig(name="t_user", embedding_dim=8, num_embeddings=100, feature_names=["user"]),
        EmbeddingBagConfig(name="t_movie", embedding_dim=8, num_embeddings=50, feature_names=["movie", "history"]),
    ], device=torch.device("meta"))  # fmt: skip
    made = constraints(ShardingConfig(), described(1, 2), module, {"history": 50.0})
    assert made["t_movie"].pooling_factors == [1.0, 50.0] and made["t_user"].pooling_factors == [1.0]
    one, fifty = (plan_tables(module, ShardingConfig(plan="table_wise"), described(1, 2), Workload(64, ids))
                  for ids in ({}, {"history": 50.0}))  # fmt: skip
    compute = lambda planned: next(o for o in planned.options if o.name == "t_movie").shards[0].perf.fwd_compute  # noqa: E731
    assert compute(fifty) > 10 * compute(one)  # the history's 50 lookups a row, not 1


def test_replicated_bytes_count_dense_parameters_with_adamw_state_and_buffers():
    module = _module({"user": 10})
    module["dense"] = nn.Linear(10, 5)  # 55 parameters: value, gradient, two AdamW moments in fp32
    module["dense"].register_buffer("vectors", torch.zeros(100, 8, dtype=torch.float16))
    assert replicated_bytes(module) == 55 * 4 * 4 + 100 * 8 * 2


def test_a_described_cluster_is_checked():
    with pytest.raises(ConfigError, match="--hbm-gib describes GPU memory"):
        described(1, 2, "cpu", hbm_gib=80)
    with pytest.raises(ConfigError, match="--ddr-gib must be above 0"):
        described(1, 2, "cuda", ddr_gib=0)
    assert described(2, 8).topology().devices[0].storage.hbm == 80 * GIB
