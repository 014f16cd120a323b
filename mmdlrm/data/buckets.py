"""On-disk buckets and Parquet row-group writing: how `streaming` regroups more rows than fit in memory.

`Buckets` appends rows to one of `count` Arrow IPC files by a bucket index per row, and reads a bucket back
memory-mapped, so regrouping n rows (by user, by a random key) costs one write and one read of them and memory
for one chunk or one bucket. `RowGroupWriter` writes a stream of tables into one Parquet file in row groups of a
fixed size, so the file's layout does not depend on how the stream was cut.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

MAX_BUCKETS = 256
"""Files open at once per set of buckets; past MAX_BUCKETS * rows per bucket, the buckets grow instead."""


def bucket_count(rows: int, rows_per_bucket: int) -> int:
    """How many buckets keep `rows` rows at about `rows_per_bucket` each (at most MAX_BUCKETS)."""
    return max(1, min(MAX_BUCKETS, math.ceil(rows / rows_per_bucket)))


class Buckets:
    """Rows of one schema spread over `count` Arrow IPC stream files in `folder` (see the module docstring)."""

    def __init__(self, folder: Path, name: str, count: int, schema: pa.Schema) -> None:
        self.folder = folder / name
        self.folder.mkdir(parents=True)
        self.count, self.schema = count, schema
        self._writers: dict[int, pa.ipc.RecordBatchStreamWriter] = {}
        self._sinks: dict[int, pa.NativeFile] = {}
        self.rows = np.zeros(count, dtype=np.int64)

    def append(self, bucket: np.ndarray, columns: dict[str, np.ndarray]) -> None:
        """Add rows (`columns`, one array per schema field) to the buckets `bucket` names, one per row."""
        order = np.argsort(bucket, kind="stable")
        sizes = np.bincount(bucket, minlength=self.count)
        bounds = np.r_[0, np.cumsum(sizes)]
        for b in np.flatnonzero(sizes).tolist():
            rows = order[bounds[b] : bounds[b + 1]]
            batch = pa.record_batch([pa.array(columns[f.name][rows], f.type) for f in self.schema], schema=self.schema)
            self._writer(b).write_batch(batch)
        self.rows += sizes

    def close(self) -> None:
        """Finish writing (before reading)."""
        for writer in self._writers.values():
            writer.close()
        for sink in self._sinks.values():
            sink.close()
        self._writers.clear()
        self._sinks.clear()

    def read(self, b: int) -> pa.Table:
        """Bucket `b` (memory-mapped: its columns are views of the file until copied)."""
        path = self._path(b)
        if not path.exists():
            return self.schema.empty_table()
        return pa.ipc.open_stream(pa.memory_map(str(path))).read_all()  # the buffers keep the map open

    def drop(self, b: int) -> None:
        """Delete bucket `b`'s file once read (a table read from it stays valid: the map outlives the name)."""
        self._path(b).unlink(missing_ok=True)

    def remove(self) -> None:
        """Delete the bucket files."""
        self.close()
        shutil.rmtree(self.folder, ignore_errors=True)

    def _writer(self, b: int) -> pa.ipc.RecordBatchStreamWriter:
        if b not in self._writers:
            self._sinks[b] = pa.OSFile(str(self._path(b)), "wb")
            self._writers[b] = pa.ipc.new_stream(self._sinks[b], self.schema)
        return self._writers[b]

    def _path(self, b: int) -> Path:
        return self.folder / f"{b:05d}.arrows"


class RowGroupWriter:
    """Writes tables, in order, into one zstd Parquet file in row groups of `rows` rows.

    With `whole` (a column name), a group is cut only where that column's value changes (the first such place
    at or after `rows` rows), so no value spans two groups: a user's ratings stay in one row group.
    """

    def __init__(self, path: Path, schema: pa.Schema, rows: int, whole: str | None = None) -> None:
        self.writer = pq.ParquetWriter(str(path), schema, compression="zstd")
        self.rows, self.whole = rows, whole
        self.pending: pa.Table = schema.empty_table()

    def write(self, table: pa.Table) -> None:
        self.pending = pa.concat_tables([self.pending, table]) if self.pending.num_rows else table
        while self.pending.num_rows >= self.rows:
            cut = self._cut()
            if cut is None:
                return
            self._emit(cut)

    def close(self) -> None:
        if self.pending.num_rows:
            self._emit(self.pending.num_rows)
        self.writer.close()

    def _cut(self) -> int | None:
        if self.whole is None:
            return self.rows
        values = self.pending[self.whole].slice(self.rows - 1).to_numpy()
        change = np.flatnonzero(values[1:] != values[:-1])
        return self.rows + int(change[0]) if len(change) else None

    def _emit(self, cut: int) -> None:
        group = self.pending.slice(0, cut).combine_chunks()
        self.writer.write_table(group, row_group_size=cut)
        self.pending = self.pending.slice(cut)
