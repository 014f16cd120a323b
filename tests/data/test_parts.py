"""Per-rank input: each rank's part of a split, batches drawn from those parts, the history read by user, whole
columns read once per owner."""

from __future__ import annotations

import logging

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from mmdlrm.config import ModelConfig
from mmdlrm.data import parts
from mmdlrm.data.batches import BatchBuilder, BatchLoader, SplitRows, user_history, virtual_shards
from mmdlrm.data.parts import SplitColumns
from mmdlrm.data.prepare import load_prepared

SPLITS = ("train", "val", "test")
BATCH = 96


class _Rows:
    """A stand-in for BatchBuilder that returns the split positions of the rows asked for: what a batch holds."""

    def build(self, rows: SplitRows, index: torch.Tensor, leave_one_out: bool = False, negatives=None, generator=None) -> torch.Tensor:
        return rows.positions()[index]


def _parts(folder, split: str, world_size: int) -> list[SplitRows]:
    return [SplitRows.from_prepared(load_prepared(folder, rank, world_size), split) for rank in range(world_size)]


@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
@pytest.mark.parametrize("split", SPLITS)
def test_the_ranks_parts_are_exactly_the_split(tiny_prepared, world_size, split):
    whole = tiny_prepared.splits[split]
    parts = _parts(tiny_prepared.folder, split, world_size)
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1
    for name in ("user", "movie", "rating"):  # in rank order, the parts are the split's rows in order
        np.testing.assert_array_equal(torch.cat([getattr(p, name) for p in parts]).numpy(), whole[name])
    positions = torch.cat([p.positions() for p in parts])
    assert torch.equal(positions, torch.arange(len(whole["user"])))  # no row twice, none missing


def _global_batches(folder, world_size: int, seed: int, epoch: int = 0) -> list[torch.Tensor]:
    """Each step's rows (split positions) over all ranks, each rank reading its own part."""
    loaders = [BatchLoader(_Rows(), part, BATCH, shuffle=True, seed=seed, rank=rank, world_size=world_size)
               for rank, part in enumerate(_parts(folder, "train", world_size))]  # fmt: skip
    assert len({len(loader) for loader in loaders}) == 1, "every rank takes the same number of steps"
    for loader in loaders:
        loader.set_epoch(epoch)
    return [torch.cat(step) for step in zip(*loaders)]


@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
def test_an_epoch_takes_each_row_at_most_once_and_leaves_less_than_a_batch_per_range(tiny_prepared, world_size):
    rows = tiny_prepared.split_rows("train")
    steps = _global_batches(tiny_prepared.folder, world_size, seed=3)
    global_batch = BATCH // world_size * world_size
    assert all(len(step) == global_batch for step in steps)
    seen = torch.cat(steps)
    assert len(torch.unique(seen)) == len(seen)
    shards = virtual_shards(world_size, global_batch)
    assert rows - len(seen) <= shards * -(-global_batch // shards)  # each range leaves at most its share of a batch


def test_batches_are_the_same_for_1_2_and_4_processes_and_set_by_the_seed(tiny_prepared):
    one = _global_batches(tiny_prepared.folder, 1, seed=3)
    for world_size in (2, 4):
        assert all(torch.equal(a, b) for a, b in zip(one, _global_batches(tiny_prepared.folder, world_size, seed=3)))
    again = _global_batches(tiny_prepared.folder, 1, seed=3)
    assert all(torch.equal(a, b) for a, b in zip(one, again))
    other_seed = _global_batches(tiny_prepared.folder, 1, seed=4)
    other_epoch = _global_batches(tiny_prepared.folder, 1, seed=3, epoch=1)
    assert not torch.equal(one[0], other_seed[0]) and not torch.equal(one[0], other_epoch[0])
    # Three processes draw from 6 ranges instead of 8: another order, as valid, as reproducible.
    three = _global_batches(tiny_prepared.folder, 3, seed=3)
    assert all(torch.equal(a, b) for a, b in zip(three, _global_batches(tiny_prepared.folder, 3, seed=3)))


def test_resuming_mid_epoch_yields_the_rest_of_the_same_epoch(tiny_prepared):
    part = _parts(tiny_prepared.folder, "train", 2)[1]
    loader = BatchLoader(_Rows(), part, BATCH, shuffle=True, seed=3, rank=1, world_size=2)
    loader.set_epoch(2)
    whole = list(loader)
    assert all(torch.equal(a, b) for a, b in zip(whole[5:], loader.batches(5)))


@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
def test_evaluation_reads_every_row_once_over_the_ranks(tiny_prepared, world_size):
    parts = _parts(tiny_prepared.folder, "val", world_size)
    loaders = [BatchLoader(_Rows(), part, 70, shuffle=False, rank=r, world_size=world_size) for r, part in enumerate(parts)]
    assert len({len(loader) for loader in loaders}) == 1
    seen = torch.cat([torch.cat(list(loader)) for loader in loaders])
    assert torch.equal(seen, torch.arange(tiny_prepared.split_rows("val")))


def test_a_whole_split_mask_filters_a_part_and_rows_read_for_another_rank_are_refused(tiny_prepared):
    liked = torch.from_numpy(tiny_prepared.splits["train"]["rating"] >= 4)
    part = _parts(tiny_prepared.folder, "train", 2)[1].where(liked)
    whole = SplitRows.from_prepared(tiny_prepared, "train").where(liked)
    half = whole.part_for(1, 2)
    assert torch.equal(part.positions(), half.positions()) and torch.equal(part.rating, half.rating)
    assert (part.rating >= 4).all()
    with pytest.raises(ValueError, match="rows read for rank 1 of 2 given to rank 0 of 2"):
        BatchLoader(_Rows(), part, BATCH, shuffle=True, rank=0, world_size=2)


def test_history_read_by_row_group_equals_the_in_memory_history(tiny_prepared):
    train = tiny_prepared.splits["train"]
    for length in (1, 7, 1000):
        expected = user_history(train["user"], train["movie"], train["timestamp"], tiny_prepared.num_users, length)
        for got, want in zip(tiny_prepared.history(length), expected):
            np.testing.assert_array_equal(got, want)
    offsets, values = user_history(train["user"], train["movie"], train["timestamp"], tiny_prepared.num_users, 7)
    _, lengths, history = BatchBuilder(tiny_prepared, ModelConfig(history_length=7)).history
    np.testing.assert_array_equal(lengths.numpy(), np.diff(offsets))
    np.testing.assert_array_equal(history.numpy(), values)


def test_a_whole_column_indexed_row_by_row_costs_one_parquet_read(tiny_prepared, monkeypatch, caplog):
    columns = SplitColumns(tiny_prepared.split_path("test"))  # an owner of its own: the fixture's is shared
    assert sorted(columns) == ["movie", "rating", "timestamp", "user"] and columns.held_bytes == 0
    reads = []
    real = parts.read_range
    monkeypatch.setattr(parts, "read_range", lambda path, *args: reads.append(path.name) or real(path, *args))
    caplog.set_level(logging.INFO, logger="mmdlrm.data.parts")
    total = sum(int(columns["user"][i]) for i in range(columns.rows()))  # the per-row loop of issue 21
    assert reads == ["test.parquet"]
    assert total == int(pq.read_table(tiny_prepared.split_path("test"))["user"].to_numpy().sum())
    assert columns.held_bytes == columns["user"].nbytes and "test.parquet column user whole" in caplog.text
    columns["rating"]
    assert reads == ["test.parquet"] * 2 and columns.held_bytes == 2 * 4 * columns.rows()  # int32 + float32
    columns.release()
    assert columns.held_bytes == 0
    assert len(columns["rating"]) == tiny_prepared.split_rows("test") and len(reads) == 3  # released: read again
