"""What a sharding plan costs, as TorchRec's planner estimates it: memory and time per rank, and their summary.

Read from the planner's chosen options (each shard carries its rank, `Storage` in bytes and `Perf` in ms for one
batch). The estimated step is TorchRec's critical path (`torchrec.distributed.planner.stats`): ranks wait for
each other after each of forward / backward x compute / communication, so each phase costs its slowest rank.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass, field

from torch import nn
from torchrec.distributed.planner.types import Perf, ShardingOption, Storage
from torchrec.distributed.types import ShardingPlan
from torchrec.modules.embedding_modules import EmbeddingBagCollection

from mmdlrm.distributed.planner import GIB, RESERVED_FRACTION, Cluster

PHASES = {"fwd_compute": "fwd compute", "fwd_comms": "fwd comms", "bwd_compute": "bwd compute", "bwd_comms": "bwd comms",
          "input_dist_comms": "input dist"}  # fmt: skip
"""The parts of a rank's estimated time (ms per batch) that are reported: TorchRec's Perf field -> label."""
ADAMW_BYTES_PER_PARAMETER = 16
"""A replicated fp32 parameter: its value, gradient and AdamW's two moments, 4 bytes each."""


def memory_per_rank(options: list[ShardingOption], world_size: int) -> dict[int, int]:
    """The planner's estimate of the tables' memory on each rank (HBM + DDR bytes: weights, optimiser, buffers)."""
    out = dict.fromkeys(range(world_size), 0)
    for option in options:
        for placed in option.shards:
            out[placed.rank] += placed.storage.hbm + placed.storage.ddr
    return out


def plan_text(plan: ShardingPlan, estimate: dict[int, int]) -> str:
    """The plan as TorchRec prints it, then the planner's memory estimate per rank: what `plan.txt` holds."""
    memory = ", ".join(f"rank {r}: {b / 2**20:,.1f} MiB" for r, b in sorted(estimate.items()))
    return f"{plan}\nplanner memory estimate for the tables: {memory}"


@dataclass
class RankLoad:
    """What the plan puts on one rank: bytes of HBM and DDR, and the estimated ms of each phase for one batch."""

    rank: int
    hbm: int = 0
    ddr: int = 0
    ms: dict[str, float] = field(default_factory=lambda: dict.fromkeys(PHASES, 0.0))

    @property
    def total_ms(self) -> float:
        return sum(self.ms.values())


def rank_loads(options: list[ShardingOption], world_size: int) -> list[RankLoad]:
    """Each rank's memory and estimated time, summed over the shards placed on it."""
    loads = [RankLoad(r) for r in range(world_size)]
    for option in options:
        for placed in option.shards:
            load = loads[placed.rank]
            load.hbm += placed.storage.hbm
            load.ddr += placed.storage.ddr
            for phase in PHASES:
                load.ms[phase] += getattr(placed.perf, phase)
    return loads


def critical_path(options: list[ShardingOption]) -> tuple[float, float]:
    """(communication, compute) ms of one step as TorchRec's planner stats estimate them.

    Communication of each (module, sharding type) group, forward and backward, costs its slowest rank; compute,
    forward and backward, costs its slowest rank.
    """
    comms: dict[tuple, dict[int, float]] = defaultdict(lambda: defaultdict(float))
    compute: dict[str, dict[int, float]] = defaultdict(lambda: defaultdict(float))
    for option in options:
        for placed in option.shards:
            perf: Perf = placed.perf
            comms[(option.module[0], option.sharding_type, "fwd")][placed.rank] += perf.fwd_comms
            comms[(option.module[0], option.sharding_type, "bwd")][placed.rank] += perf.bwd_comms
            compute["fwd"][placed.rank] += perf.fwd_compute
            compute["bwd"][placed.rank] += perf.bwd_compute
    return sum(max(r.values()) for r in comms.values()), sum(max(r.values()) for r in compute.values())


def replicated_bytes(module: nn.Module) -> int:
    """Bytes every rank holds outside the embedding tables: the dense and over arches with their gradients and
    AdamW state, and buffers (content vectors: movies x dim float16)."""
    tables = {id(p) for m in module.modules() if isinstance(m, EmbeddingBagCollection) for p in m.parameters()}
    dense = sum(p.numel() for p in module.parameters() if id(p) not in tables)
    return dense * ADAMW_BYTES_PER_PARAMETER + sum(b.numel() * b.element_size() for b in module.buffers())


@dataclass
class TablePlacement:
    """Where one table went and what it holds there (bytes summed over its shards)."""

    name: str
    rows: int
    dim: int
    sharding_type: str
    compute_kernel: str
    ranks: list[int]
    hbm: int
    ddr: int
    shards: list[dict] = field(default_factory=list)
    """Each shard's rank, offset and size (rows, columns), as the plan places it."""


def placements(options: list[ShardingOption]) -> list[TablePlacement]:
    """The chosen sharding of each table, in the planner's order."""
    out = []
    for option in options:
        rows, dim = option.tensor.shape
        ranks = sorted({s.rank for s in option.shards})
        shards = [{"rank": s.rank, "offset": list(s.offset), "size": list(s.size)} for s in option.shards]
        out.append(TablePlacement(option.name, rows, dim, option.sharding_type, option.compute_kernel, ranks,
                                  sum(s.storage.hbm for s in option.shards), sum(s.storage.ddr for s in option.shards),
                                  shards))  # fmt: skip
    return out


@dataclass
class Estimate:
    """A plan's placements, memory against capacity and estimated time per rank, for batches of `batch_size`
    rows per rank."""

    cluster: Cluster
    capacity: Storage
    """Memory of one rank."""
    available: Storage
    """What the planner leaves to the tables on one rank (capacity less the reserved share of HBM)."""
    batch_size: int
    tables: list[TablePlacement]
    ranks: list[RankLoad]
    comms_ms: float
    compute_ms: float
    replicated: int
    """Bytes every rank holds besides the tables (`replicated_bytes`)."""

    @property
    def step_ms(self) -> float:
        return self.comms_ms + self.compute_ms

    def to_json(self) -> dict:
        """Everything above, in bytes and ms."""
        out = asdict(self)
        out["cluster"] |= {"nodes": self.cluster.nodes}
        out["capacity"], out["available"] = _storage(self.capacity), _storage(self.available)
        out["reserved_fraction_of_hbm"] = RESERVED_FRACTION
        topology = self.cluster.topology()
        out["bandwidth_gib_per_s"] = {name: getattr(topology, name) * 1000 / GIB for name in  # from bytes per ms
                                      ("intra_host_bw", "inter_host_bw", "hbm_mem_bw", "ddr_mem_bw", "hbm_to_ddr_mem_bw")}  # fmt: skip
        out["global_batch"] = self.batch_size * self.cluster.world_size
        out["step_ms"] = {"comms": self.comms_ms, "compute": self.compute_ms, "total": self.step_ms}
        for rank in out["ranks"]:
            rank["ms"]["total"] = sum(rank["ms"].values())
        return out

    def summary(self) -> str:
        """Tables, memory per rank against capacity, estimated time per rank and per step, as printed."""
        world = self.cluster.world_size
        out = [f"plan for {self.cluster}; batches of {self.batch_size:,} rows per rank ({self.batch_size * world:,} "
               "global)", ""]  # fmt: skip
        gpu = self.cluster.device == "cuda"  # CPU ranks have no HBM: their tables live in DDR
        tiers = ["HBM", "DDR"] if gpu else ["DDR"]
        held = lambda hbm, ddr: [_bytes(hbm), _bytes(ddr)] if gpu else [_bytes(ddr)]  # noqa: E731
        out += _columns(["table", "rows", "dim", "sharding", "kernel", "ranks", *tiers], "lrrlll" + "r" * len(tiers),
                        [[t.name, f"{t.rows:,}", str(t.dim), t.sharding_type, t.compute_kernel, _ranges(t.ranks),
                          *held(t.hbm, t.ddr)] for t in self.tables])  # fmt: skip
        reserved = f" ({RESERVED_FRACTION:.0%} of HBM reserved)" if gpu else ""
        out += ["", f"tables' memory per rank, of what the planner leaves them{reserved}:"]
        memory = [tuple(f"{used} / {cap}" for used, cap in zip(held(r.hbm, r.ddr), held(self.available.hbm, self.available.ddr)))
                  for r in self.ranks]  # fmt: skip
        out += _columns(["ranks", *tiers], "l" + "r" * len(tiers), [[ranks, *row] for ranks, row in _grouped(memory)])
        if self.cluster.device == "cuda":
            reserved = self.capacity.hbm - self.available.hbm
            room = f"{'within' if self.replicated <= reserved else 'MORE than'} the {_bytes(reserved)} of HBM reserved"
        else:
            room = "in DDR besides the tables (the planner reserves nothing for it on CPU)"
        out.append(f"replicated on every rank (dense arches + AdamW state, content vectors): {_bytes(self.replicated)}, "
                   f"{room}")  # fmt: skip
        out += ["", "estimated ms per batch on each rank (TorchRec's cost model):"]
        times = [tuple(f"{r.ms[p]:.3g}" for p in PHASES) + (f"{r.total_ms:.3g}",) for r in self.ranks]
        out += _columns(["ranks", *PHASES.values(), "total"], "l" + "r" * (len(PHASES) + 1), [[r, *row] for r, row in _grouped(times)])
        out.append(f"estimated step (critical path over the ranks): comms {self.comms_ms:.3g} ms + compute "
                   f"{self.compute_ms:.3g} ms = {self.step_ms:.3g} ms for {self.batch_size * world:,} rows")  # fmt: skip
        return "\n".join(out)


def estimate(options: list[ShardingOption], cluster: Cluster, available: Storage, batch_size: int,
             replicated: int) -> Estimate:  # fmt: skip
    """The summary of a plan made for `cluster` (the planner's chosen options)."""
    capacity = cluster.topology().devices[0].storage
    comms, compute = critical_path(options)
    return Estimate(cluster, capacity, available, batch_size, placements(options), rank_loads(options, cluster.world_size),
                    comms, compute, replicated)  # fmt: skip


def _bytes(n: float) -> str:
    """1234567 -> '1.2 MiB' (GiB from 1 GiB up, KiB below 1 MiB)."""
    if n >= GIB:
        return f"{n / GIB:,.2f} GiB"
    return f"{n / 2**20:,.1f} MiB" if n >= 2**20 else f"{n / 2**10:,.1f} KiB"


def _columns(header: list[str], align: str, rows: list[list[str]]) -> list[str]:
    """Fixed-width lines: each column as wide as its widest cell, `l`eft- or `r`ight-aligned, two spaces apart."""
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    fmt = lambda cells: "  ".join(c.ljust(w) if a == "l" else c.rjust(w) for c, w, a in zip(cells, widths, align))  # noqa: E731
    return [fmt(header).rstrip(), *(fmt(r).rstrip() for r in rows)]


def _storage(storage: Storage) -> dict[str, int]:
    return {"hbm": storage.hbm, "ddr": storage.ddr}


def _ranges(ranks: list[int]) -> str:
    """[0, 1, 2, 5] -> '0-2,5'."""
    out, start = [], None
    for i, r in enumerate(ranks):
        if start is None:
            start = r
        if i + 1 == len(ranks) or ranks[i + 1] != r + 1:
            out.append(f"{start}" if start == r else f"{start}-{r}")
            start = None
    return ",".join(out)


def _grouped(rows: list[tuple]) -> list[tuple[str, tuple]]:
    """Consecutive ranks whose printed row is the same, as one line: ('0-6', row), ('7', other)."""
    out: list[tuple[list[int], tuple]] = []
    for rank, row in enumerate(rows):
        if out and out[-1][1] == row:
            out[-1][0].append(rank)
        else:
            out.append(([rank], row))
    return [(_ranges(ranks), row) for ranks, row in out]
