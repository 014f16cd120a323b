"""Reading a large delimited file a block of whole lines at a time, with `read_table`'s checks and true line numbers.

A block is cut after a line end that is outside quotes, so no record spans two blocks. Each block is parsed by
`tables.parse_text`, the parser `read_table` uses, told the file line the block starts on: a bad value in a late
block is reported with its line in the file, blank lines and quoted line breaks counted, as for a whole file. The
file is checked once from its first bytes (compressed, UTF-16, binary, empty, header columns); a UTF-8 file
with an invalid byte is read as Latin-1 from that block on, with one warning naming the line. Memory is one block
(`block_bytes`, plus the line that straddles its end) and its parsed table, whatever the file's size.

`BlockReader.lines(rows)` maps data rows (as numbered across all blocks) back to file lines by reading again only
the blocks that hold them: for error messages about rows found later, such as a (user, movie) pair rated twice.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pyarrow as pa

from mmdlrm.data.tables import (
    BadRows,
    DataError,
    OnBadRows,
    TextFormat,
    check_text_file,
    decode_text,
    parse_text,
    read_header,
    text_lines,
)

BLOCK_BYTES = 16 << 20
"""Bytes read per block: about 650,000 MovieLens rating lines (parsing one costs a few times its size)."""


@dataclass(frozen=True)
class Block:
    """Where one block lies in the file."""

    offset: int
    """Byte offset of its first byte."""
    size: int
    first_line: int
    """File line (1-based) its first byte is on."""
    first_row: int
    """Data rows in the blocks before it."""
    header: bool
    """It starts with the file's header line."""


class BlockReader:
    """The typed `columns` of a delimited file, one table per block of whole lines (see the module docstring).

    Args:
        names: column names for a file without a header (all of its columns, in file order).
        rename: source name -> output name.
        progress: called with the raw bytes of each block once it is parsed.

    Raises:
        DataError: as `read_table`: missing, empty, compressed or binary file, missing column, a bad line (under
            on_bad_rows="error", naming its file line), no data rows at all.
    """

    def __init__(
        self,
        path: Path,
        columns: dict[str, pa.DataType],
        fmt: TextFormat,
        *,
        names: list[str] | None = None,
        rename: dict[str, str] | None = None,
        on_bad_rows: OnBadRows = "error",
        bad_rows: BadRows | None = None,
        block_bytes: int = BLOCK_BYTES,
        progress: Callable[[int], object] | None = None,
    ) -> None:
        check_text_file(path)
        self.path, self.columns, self.fmt, self.names = path, columns, fmt, names
        self.rename, self.on_bad_rows, self.block_bytes, self.progress = rename or {}, on_bad_rows, block_bytes, progress
        self.bad_rows = bad_rows if bad_rows is not None else BadRows()
        self.header = names if names is not None else read_header(path, fmt, columns)
        self.blocks: list[Block] = []
        self.rows = 0
        """Data rows read so far (all of them once iteration has ended)."""

    def __iter__(self) -> Iterator[pa.Table]:
        self.blocks, self.rows = [], 0
        self._skipped = BadRows(quiet=True)
        line, latin1 = 1, False
        for offset, raw in self._raw_blocks():
            text, latin1 = decode_text(self.path, raw, self.fmt, line, latin1)
            first = offset == 0 and self.fmt.header
            table = self._parse(text, first, line)
            self.blocks.append(Block(offset, len(raw), line, self.rows, first))
            self.rows += table.num_rows
            line += raw.count(b"\n") + raw.count(b"\r") - raw.count(b"\r\n")
            if self.progress is not None:
                self.progress(len(raw))
            if table.num_rows:
                yield table.rename_columns([self.rename.get(c, c) for c in table.column_names])
        self.bad_rows.merge(self.path, self._skipped)
        if self.rows == 0:
            raise DataError(f"{self.path}: no data rows{' after the header' if self.fmt.header else ''}; is the file complete?")

    def lines(self, rows: np.ndarray) -> np.ndarray:
        """File lines of data rows `rows` (numbered across the blocks read), reading only the blocks that hold them."""
        rows = np.asarray(rows, dtype=np.int64)
        out = np.zeros(len(rows), dtype=np.int64)
        starts = [b.first_row for b in self.blocks]
        with open(self.path, "rb") as f:
            for i, row in enumerate(rows.tolist()):
                block = self.blocks[bisect.bisect_right(starts, row) - 1]
                f.seek(block.offset)
                raw = f.read(block.size)
                fmt = replace(self.fmt, header=block.header)
                out[i] = int(text_lines(raw, fmt, np.array([row - block.first_row]), block.first_line)[0])
        return out

    def column(self, name: str) -> int:
        """1-based position of source column `name` in the file."""
        return self.header.index(name) + 1

    def _parse(self, text: bytes, first: bool, line: int) -> pa.Table:
        if not text.strip():  # blank lines only: pyarrow would call it an empty file
            return pa.table({c: pa.array([], t) for c, t in self.columns.items()})
        fmt = self.fmt if first else replace(self.fmt, header=False)
        names = None if first else self.header
        return parse_text(self.path, text, self.columns, fmt, names=names, header=self.header,
                          on_bad_rows=self.on_bad_rows, bad_rows=self._skipped, first_line=line)  # fmt: skip

    def _raw_blocks(self) -> Iterator[tuple[int, bytes]]:
        """(offset, bytes) of runs of whole records; the first holds the header line whole."""
        offset, pending = 0, b""
        with open(self.path, "rb") as f:
            while True:
                data = f.read(self.block_bytes)
                buffer = pending + data
                if not data:
                    if buffer:
                        yield offset, buffer
                    return
                cut = _last_record_end(buffer, self.fmt.quoting)
                if offset == 0 and self.fmt.header and cut and not _holds_a_line(buffer[:cut]):
                    cut = 0  # blank lines only so far: the header must come with the first block
                if cut == 0:
                    pending = buffer  # a record longer than a block: read on
                    continue
                yield offset, buffer[:cut]
                offset += cut
                pending = buffer[cut:]


def _holds_a_line(data: bytes) -> bool:
    return bool(data.strip(b"\r\n"))


def _last_record_end(buffer: bytes, quoting: bool) -> int:
    """Length of the longest prefix of `buffer` that ends with a line end outside quotes (0 if none)."""
    if not (quoting and b'"' in buffer):
        lf = buffer.rfind(b"\n")
        if lf >= 0:
            return lf + 1
        cr = buffer.rfind(b"\r", 0, len(buffer) - 1)  # a final \r may be the first half of \r\n
        return cr + 1 if cr >= 0 else 0
    data = np.frombuffer(buffer, np.uint8)
    ends = np.flatnonzero(data == ord("\n"))
    if not len(ends):
        cr = np.flatnonzero(data[:-1] == ord("\r"))
        ends = cr
    quotes = np.flatnonzero(data == ord('"'))
    outside = ends[np.searchsorted(quotes, ends) % 2 == 0]
    return int(outside[-1]) + 1 if len(outside) else 0
