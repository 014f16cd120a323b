"""Why the planner found no plan: which table does not fit, by how much, and what would make it fit.

TorchRec's planner reports a failure for the model as a whole (global storage against global capacity). Here
its search space (every sharding type and kernel it could use for each table, each with the memory of every
shard) is read table by table against what one rank, and all of them, leave to tables. Sizes are estimates of
the planner's own cost model; the fixes are first-order (memory grows with rows x dimension).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torchrec.distributed.planner.types import ShardingOption, Storage

from mmdlrm.config import ShardingConfig
from mmdlrm.distributed.planner import GIB, RESERVED_FRACTION, Cluster, table_feature

TIERS = ("hbm", "ddr")
SPLIT_TYPES = ("row_wise", "table_row_wise", "column_wise", "table_column_wise")
"""Sharding types that spread one table over several ranks."""


@dataclass
class Need:
    """The memory one placement of a table needs (bytes): in all, and on its largest shard."""

    option: ShardingOption
    total: dict[str, int]
    largest: dict[str, int]

    def short(self, world_size: int, available: Storage) -> float:
        """Bytes beyond what the ranks leave to tables, in all or on one rank (0: it fits, on its own)."""
        return sum(max(0, self.total[t] - world_size * getattr(available, t), self.largest[t] - getattr(available, t))
                   for t in TIERS)  # fmt: skip

    def one_rank_binds(self, world_size: int, available: Storage) -> bool:
        """Whether its largest shard, rather than its total, is what one rank / all ranks cannot hold."""
        over = lambda t: (self.largest[t] - getattr(available, t), self.total[t] - world_size * getattr(available, t))  # noqa: E731
        return any(rank > 0 and rank >= whole for rank, whole in map(over, TIERS))

    def room(self, world_size: int, available: Storage) -> float:
        """The largest factor this placement's memory could grow by and still fit (below 1: it does not fit)."""
        ratios = [world_size * getattr(available, t) / self.total[t] for t in TIERS if self.total[t]]
        ratios += [getattr(available, t) / self.largest[t] for t in TIERS if self.largest[t]]
        return min(ratios, default=math.inf)

    def ranks_needed(self, available: Storage) -> int | None:
        """Ranks of this kind that would hold it in all (None: it stays on one rank whatever their number)."""
        return ranks_for(self.total, available) if self.option.sharding_type in SPLIT_TYPES else None

    def __str__(self) -> str:
        shards = len(self.option.shards)
        where = " and ".join(f"{self.total[t] / GIB:,.1f} GiB of {t.upper()}" for t in TIERS if self.total[t] >= GIB / 100)
        return (f"its smallest placement ({self.option.sharding_type}, {self.option.compute_kernel}, over {shards} "
                f"rank{'s' if shards > 1 else ''}) needs {where or 'under 0.01 GiB'}")  # fmt: skip


def ranks_for(total: dict[str, int], available: Storage) -> int | None:
    """Ranks that leave `total` bytes (per tier) to tables (None: a tier it needs is absent on these ranks)."""
    if any(total[t] and not getattr(available, t) for t in TIERS):
        return None
    return max((math.ceil(total[t] / getattr(available, t)) for t in TIERS if total[t]), default=1)


def needs(search_space: list[ShardingOption]) -> dict[str, list[Need]]:
    """Every placement the planner could choose, per table."""
    out: dict[str, list[Need]] = {}
    for option in search_space:
        total = {t: sum(getattr(s.storage, t) for s in option.shards) for t in TIERS}
        largest = {t: max(getattr(s.storage, t) for s in option.shards) for t in TIERS}
        out.setdefault(option.name, []).append(Need(option, total, largest))
    return out


def explain(search_space: list[ShardingOption], cluster: Cluster, available: Storage, cfg: ShardingConfig) -> str:
    """One message for a plan that cannot be made: the table (or tables) that do not fit, by how much, the fix.

    `available` is one rank's memory left to tables (after the reservation).
    """
    world = cluster.world_size
    per_table = needs(search_space)
    best = {name: min(options, key=lambda n: n.short(world, available)) for name, options in per_table.items()}
    left = f"HBM and {{:,.1f}} GiB of DDR to tables ({RESERVED_FRACTION:.0%} of HBM reserved)"
    on_one = f"one rank leaves {available.hbm / GIB:,.1f} GiB of " + left.format(available.ddr / GIB)
    on_all = f"the ranks leave {world * available.hbm / GIB:,.1f} GiB of " + left.format(world * available.ddr / GIB)
    too_big = sorted((n for n in best if best[n].short(world, available) > 0), key=lambda n: -best[n].short(world, available))
    if too_big:
        name = too_big[0]
        need = best[name]
        rows, dim = need.option.tensor.shape
        others = f" (nor {'do' if len(too_big) > 2 else 'does'} {', '.join(too_big[1:])})" if len(too_big) > 1 else ""
        room = on_one if need.one_rank_binds(world, available) else on_all
        head = (f"table {name} ({rows:,} rows x {dim}) does not fit on {cluster}{others}: {need}, and {room}: "
                f"{need.short(world, available) / GIB:,.1f} GiB short")  # fmt: skip
        fixes = _fixes(name, per_table[name], need, cluster, available, cfg, dim)
    else:  # each fits on its own, not all together: count them as one
        totals = {t: sum(best[n].total[t] for n in best) for t in TIERS}
        together = Need(search_space[0], totals, {t: max(best[n].largest[t] for n in best) for t in TIERS})
        largest = sorted(best, key=lambda n: -sum(best[n].total.values()))[:3]
        sizes = ", ".join(f"{n} {sum(best[n].total.values()) / GIB:,.1f} GiB" for n in largest)
        wanted = " and ".join(f"{totals[t] / GIB:,.1f} GiB of {t.upper()}" for t in TIERS if totals[t])
        head = (f"the tables fit one at a time but not together on {cluster}: they need at least {wanted} "
                f"(largest: {sizes}), and {on_all}")  # fmt: skip
        dim = max(n.option.tensor.shape[1] for n in best.values())
        ranks = ranks_for(totals, available)
        fixes = [_ranks_fix(ranks, cluster)] if ranks and ranks > world else []
        fixes += _smaller_dim(together, cluster, available, dim)
    return f"{head}. It would fit with {', or '.join(fixes) if fixes else 'a larger cluster'}."


def _fixes(name: str, options: list[Need], best: Need, cluster: Cluster, available: Storage, cfg: ShardingConfig,
           dim: int) -> list[str]:  # fmt: skip
    """What would make table `name` fit: more ranks, UVM caching, a smaller dimension, a constraint dropped."""
    feature = table_feature(name)
    fixes = _more_ranks(options, cluster, available)
    kernels = {n.option.compute_kernel for n in options}
    if cluster.device == "cuda" and "fused_uvm_caching" not in kernels:
        fixes.append(f"sharding.tables.{feature}.compute_kernel=fused_uvm_caching (HBM holds a cache of its rows, "
                     "DDR the whole table)")  # fmt: skip
    elif cluster.device == "cuda":
        cached = [n for n in options if n.option.compute_kernel == "fused_uvm_caching" and n.option.sharding_type in SPLIT_TYPES]
        if cached:
            ddr = min(n.total["ddr"] for n in cached) / cluster.world_size
            if ddr > available.ddr:
                fixes.append(f"{math.ceil(ddr / GIB):,} GiB of DDR per rank (--ddr-gib) with fused_uvm_caching")
    fixes += _smaller_dim(best, cluster, available, dim)
    own, wanted = cfg.tables.get(feature), cfg.table(feature)
    pinned = [f"sharding.tables.{feature}.sharding_type={own.sharding_type}" if own and own.sharding_type
              else f"sharding.plan={wanted.sharding_type}" if wanted.sharding_type else None,
              f"sharding.tables.{feature}.compute_kernel={wanted.compute_kernel}" if wanted.compute_kernel else None]  # fmt: skip
    if any(pinned):
        fixes.append(f"{' and '.join(p for p in pinned if p)} left out, so that the planner may split the table over "
                     "ranks or cache it")  # fmt: skip
    return fixes


def _more_ranks(options: list[Need], cluster: Cluster, available: Storage) -> list[str]:
    counts = [n for n in (o.ranks_needed(available) for o in options) if n is not None and n > cluster.world_size]
    if not counts:
        return []
    return [_ranks_fix(min(counts), cluster)]


def _ranks_fix(ranks: int, cluster: Cluster) -> str:
    nodes = math.ceil(ranks / cluster.local_world_size)
    return f"about {ranks:,} ranks like these (--nodes {nodes} --gpus-per-node {cluster.local_world_size})"


def _smaller_dim(need: Need, cluster: Cluster, available: Storage, dim: int) -> list[str]:
    smaller = int(dim * need.room(cluster.world_size, available)) // 4 * 4
    return [f"model.embedding_dim={smaller} (every table; now {dim})"] if 4 <= smaller < dim else []
