"""Reading delimited text into typed Arrow tables, with errors that name the file, line and column.

The fast path is pyarrow's multithreaded CSV reader with the final column types. Only when it fails (or when bad
rows are to be skipped) does a second, slower pass read the file as text to find which line is wrong.

Before parsing, the raw bytes are checked: a compressed file (gzip, zip, bzip2, xz, zstd) or another binary file
is refused with the fix, and a UTF-8 byte-order mark (spreadsheet programs write one) is dropped. A file that should
be UTF-8 but is not is read as Latin-1, the encoding of MovieLens' older releases, with a warning that names the
file and the line of the first invalid byte: every byte sequence is valid Latin-1, so this never loses a row, and
the warning says what to do if the titles look wrong.

Line numbers are file lines (1-based, header included). pyarrow skips blank lines and lets a quoted value span
lines, so row i is not always line i + 2; on the error path the rows are mapped back to file lines by finding the
non-blank records (`_record_lines`), never on the fast path. `parse_text` parses either a whole file or a run of
its lines that starts on a given file line: `chunks.BlockReader` reads files too big for memory that way, with the
same checks and the same messages.
"""

from __future__ import annotations

import io
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

log = logging.getLogger(__name__)

OnBadRows = Literal["error", "skip"]

_NUMBER_PATTERNS = {
    "int": r"^\s*[+-]?\d+\s*$",
    "float": r"^\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*$",
}
_BOM = b"\xef\xbb\xbf"
# (leading bytes, format, command that undoes it)
_COMPRESSED = [
    (b"\x1f\x8b", "gzip", "gunzip"),
    (b"PK\x03\x04", "zip", "unzip"),
    (b"PK\x05\x06", "zip", "unzip"),
    (b"\xfd7zXZ\x00", "xz", "unxz"),
    (b"\x28\xb5\x2f\xfd", "zstd", "unzstd"),
]
_LINE_END = re.compile(rb"\r\n|\r|\n")


class DataError(ValueError):
    """Bad input data; the message names the file, the line (1-based, header included) and the fix."""


@dataclass
class BadRows:
    """Rows dropped under `on_bad_rows=skip`, counted by file and reason."""

    counts: dict[str, int] = field(default_factory=dict)
    quiet: bool = False
    """Count without a warning per call (a file read in blocks warns once, with its totals: see `merge`)."""

    def add(self, path: Path, reason: str, count: int) -> None:
        if count:
            key = f"{path.name}: {reason}"
            self.counts[key] = self.counts.get(key, 0) + int(count)
            if not self.quiet:
                log.warning("skipped %d rows of %s (%s)", count, path, reason)

    def merge(self, path: Path, other: BadRows) -> None:
        """Add the counts of `other` (rows of `path`), one warning per reason."""
        prefix = f"{path.name}: "
        for key, count in other.counts.items():
            self.add(path, key.removeprefix(prefix), count)

    @property
    def total(self) -> int:
        return sum(self.counts.values())


@dataclass(frozen=True)
class TextFormat:
    """How one file is laid out: its delimiter, header and encoding."""

    delimiter: str = ","
    header: bool = True
    encoding: str = "utf-8"
    multi_char_delimiter: str | None = None
    """The `::` of ml-1m / ml-10m, replaced by `delimiter` before parsing."""
    quoting: bool = True


def read_table(
    path: Path,
    columns: dict[str, pa.DataType],
    fmt: TextFormat,
    *,
    names: list[str] | None = None,
    rename: dict[str, str] | None = None,
    on_bad_rows: OnBadRows = "error",
    bad_rows: BadRows | None = None,
) -> pa.Table:
    """Read the named `columns` of a delimited file into an Arrow table with those types.

    Args:
        columns: source column name -> Arrow type, in the order wanted.
        names: column names for a file without a header (all of its columns, in file order).
        rename: source name -> output name.

    Raises:
        DataError: missing, empty, compressed or binary file, missing column, truncated line, value that does not
            parse (NaN included).
    """
    bad_rows = bad_rows if bad_rows is not None else BadRows()
    data = _load_bytes(path, fmt)
    header = _check_header(path, data, columns, fmt, names)
    table = parse_text(path, data, columns, fmt, names=names, header=header, on_bad_rows=on_bad_rows, bad_rows=bad_rows)
    if table.num_rows == 0:
        raise DataError(f"{path}: no data rows{' after the header' if fmt.header else ''}; is the file complete?")
    if rename:
        table = table.rename_columns([rename.get(c, c) for c in table.column_names])
    return table


def parse_text(
    path: Path,
    data: bytes,
    columns: dict[str, pa.DataType],
    fmt: TextFormat,
    *,
    names: list[str] | None,
    header: list[str],
    on_bad_rows: OnBadRows,
    bad_rows: BadRows,
    first_line: int = 1,
) -> pa.Table:
    """Parse `data` (UTF-8 text of `path` with single-character delimiters) into the typed `columns`.

    `data` may be the whole file or a run of whole lines of it starting on file line `first_line` (see `chunks`):
    error messages name the file's line either way.

    Raises:
        DataError: a truncated line, a value that does not parse, an empty value or NaN (under "error").
    """
    read_opts = pacsv.ReadOptions(column_names=names, autogenerate_column_names=False, use_threads=True)
    parse_opts = pacsv.ParseOptions(delimiter=fmt.delimiter, quote_char='"' if fmt.quoting else False)
    # Only an empty field is null: pyarrow's defaults would also read "NaN" or "NA" as an empty value.
    convert = pacsv.ConvertOptions(
        column_types=columns, include_columns=list(columns), strings_can_be_null=False, null_values=[""]
    )
    if on_bad_rows == "skip":
        return _read_skipping(path, data, columns, fmt, names, bad_rows)
    try:
        table = pacsv.read_csv(pa.BufferReader(data), read_opts, parse_opts, convert)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        _raise_first_problem(path, data, columns, fmt, names, header, first_line)
        raise  # _raise_first_problem always raises; this keeps pyarrow's error if it ever does not
    _check_complete(path, data, table, header, fmt, first_line)
    return table


def read_header(path: Path, fmt: TextFormat, columns: dict[str, pa.DataType] | None = None) -> list[str]:
    """The column names on the header line of `path` (its first non-blank line).

    Raises:
        DataError: one of `columns` is not in the header (naming the header's line).
    """
    with open(path, "rb") as f:
        head = f.read(1 << 16)  # a header line is short; the rest of the file is not needed
    return _check_header(path, head.removeprefix(_BOM), columns or {}, fmt, None)


def file_lines(path: Path, fmt: TextFormat, rows: np.ndarray) -> np.ndarray:
    """1-based file lines of data rows `rows` (0-based, in file order, as `read_table` returned them).

    Blank lines (which the reader skips) and quoted values spanning lines are counted, so the lines are the ones
    an editor shows. Reads the file again: for error messages only.
    """
    return text_lines(_raw_bytes(path), fmt, rows)


def text_lines(data: bytes, fmt: TextFormat, rows: np.ndarray, first_line: int = 1) -> np.ndarray:
    """File lines of data rows `rows` of `data`: text that starts on file line `first_line` (a header first if
    `fmt.header`)."""
    return _row_lines(_record_lines(data, fmt.quoting), np.asarray(rows), fmt) + (first_line - 1)


def first_line(path: Path, mask: np.ndarray, fmt: TextFormat) -> int:
    """1-based file line of the first row where `mask` is True."""
    return int(file_lines(path, fmt, np.flatnonzero(mask)[:1])[0])


def _row_lines(record_lines: np.ndarray, rows: np.ndarray, fmt: TextFormat) -> np.ndarray:
    records = rows.astype(np.int64) + int(fmt.header)
    if not len(record_lines):
        return records + 1
    found = records < len(record_lines)
    # A stray, unbalanced quote can hide record ends from the mapping; fall back to one line per row there.
    return np.where(found, record_lines[np.minimum(records, len(record_lines) - 1)], records + 1)


def _record_lines(data: bytes, quoting: bool) -> np.ndarray:
    """1-based file line on which each non-blank record starts (the header is record 0), as pyarrow counts them.

    Line ends are `\\n`, `\\r\\n` or a lone `\\r`. With quoting, a line end after an odd number of `"` is inside a
    quoted value and does not end the record (an escaped `""` counts twice, so the parity still holds).
    """
    buf = np.frombuffer(data, np.uint8)
    n = len(buf)
    lf = _positions(buf, ord("\n"))
    cr = _positions(buf, ord("\r"))
    if len(cr):
        after = np.minimum(cr + 1, n - 1)
        lone = cr[(cr + 1 >= n) | (buf[after] != ord("\n"))]
        ends = np.union1d(lf, lone) if len(lone) else lf
    else:
        ends = lf
    record_ends = ends
    if quoting:
        quotes = _positions(buf, ord('"'))
        if len(quotes):
            record_ends = ends[np.searchsorted(quotes, ends) % 2 == 0]
    if not len(record_ends) or record_ends[-1] != n - 1:
        record_ends = np.r_[record_ends, n]  # the last line has no line end
    starts = np.r_[0, record_ends[:-1] + 1]
    length = record_ends - starts
    has_cr = (length > 0) & (buf[np.clip(record_ends - 1, 0, max(n - 1, 0))] == ord("\r"))
    nonblank = length - has_cr > 0
    lines = np.searchsorted(ends, starts) + 1
    return lines[nonblank]


def _positions(buf: np.ndarray, value: int, block: int = 1 << 26) -> np.ndarray:
    """Offsets of `value` in `buf`, a block at a time (a whole-file boolean mask would be as big as the file)."""
    parts = [np.flatnonzero(buf[i : i + block] == value) + i for i in range(0, len(buf), block)]
    return np.concatenate(parts) if parts else np.zeros(0, np.int64)


def _line_of_offset(data: bytes, offset: int) -> int:
    return (data.count(b"\n", 0, offset) or data.count(b"\r", 0, offset)) + 1


def _check_complete(path: Path, data: bytes, table: pa.Table, header: list[str], fmt: TextFormat, first_line: int = 1) -> None:
    """Refuse empty values and NaN, which pyarrow reads without complaint."""
    for name in table.column_names:
        column = table.column(name)
        if column.null_count:
            bad, problem = column.is_null(), "empty value; fill it in"
        elif pa.types.is_floating(column.type) and pc.any(pc.is_nan(column)).as_py():
            bad, problem = pc.is_nan(column), "NaN is not a number; fix the value"
        else:
            continue
        index = np.flatnonzero(bad.to_numpy(zero_copy_only=False))[:1]
        line = int(text_lines(data, fmt, index, first_line)[0])
        raise DataError(
            f"{path} line {line}, column {header.index(name) + 1} ({name}): {problem}, "
            "or pass data.on_bad_rows=skip to drop such rows"
        )


def _raw_bytes(path: Path) -> bytes:
    """The file's bytes, refusing what is not delimited text (missing, empty, compressed, binary)."""
    check_text_file(path)
    data = path.read_bytes()
    if data.isspace():
        raise DataError(f"{path}: file is empty; re-download or re-extract the release")
    return data


def check_text_file(path: Path) -> None:
    """Refuse, from its first bytes, a file that is not delimited text: missing, empty, compressed, UTF-16, binary.

    Raises:
        DataError: naming the file and the fix (decompress it, save it as UTF-8, ...).
    """
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    with open(path, "rb") as f:
        head = f.read(8192)
    if not head or (head.isspace() and path.stat().st_size == len(head)):
        raise DataError(f"{path}: file is empty; re-download or re-extract the release")
    for magic, kind, tool in _COMPRESSED:
        if head.startswith(magic):
            raise DataError(
                f"{path}: this is a {kind}-compressed file, not text; decompress it ({tool} {path.name}) and point "
                "at the extracted file"
            )
    if head.startswith(b"BZh") and head[3:4].isdigit():
        raise DataError(f"{path}: this is a bzip2-compressed file, not text; decompress it (bunzip2 {path.name}) first")
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise DataError(f"{path}: this is UTF-16 text; save it again as UTF-8 (\"CSV UTF-8\" in spreadsheet programs)")
    if b"\x00" in head:
        raise DataError(f"{path}: holds binary data (NUL bytes), not delimited text; is it the right file?")


def _load_bytes(path: Path, fmt: TextFormat) -> bytes:
    """The file as UTF-8 bytes with single-character delimiters, ready for pyarrow."""
    return decode_text(path, _raw_bytes(path), fmt)[0]


def decode_text(
    path: Path, data: bytes, fmt: TextFormat, first_line: int = 1, latin1: bool = False
) -> tuple[bytes, bool]:
    """Raw bytes of `path` (the whole file, or whole lines of it from file line `first_line`) as UTF-8 with
    single-character delimiters, ready for pyarrow; and whether they were read as Latin-1.

    A UTF-8 byte-order mark is dropped from the file's start. A UTF-8 file whose bytes are not valid UTF-8 is read
    as Latin-1 with a warning naming the line; `latin1` says an earlier part of the file already was (read this
    part the same way, without another warning).
    """
    if first_line == 1:
        data = data.removeprefix(_BOM)
    if fmt.encoding.lower().replace("_", "-") not in ("utf-8", "utf8"):
        data = data.decode(fmt.encoding).encode("utf-8")
    elif latin1:
        data = data.decode("latin-1").encode("utf-8")
    else:
        bad = utf8_error(data)
        if bad is not None:
            warn_latin1(path, _line_of_offset(data, bad) + first_line - 1, data[bad])
            data, latin1 = data.decode("latin-1").encode("utf-8"), True
    if fmt.multi_char_delimiter:
        data = data.replace(fmt.multi_char_delimiter.encode(), fmt.delimiter.encode())
    return data, latin1


def utf8_error(data: bytes) -> int | None:
    """Offset of the first byte that is not valid UTF-8, or None when `data` is valid UTF-8."""
    offsets = pa.py_buffer(np.array([0, len(data)], np.int64).tobytes())
    try:  # pyarrow checks UTF-8 at memory speed, without making a Python string of the whole file
        pa.Array.from_buffers(pa.large_string(), 1, [None, offsets, pa.py_buffer(data)]).validate(full=True)
        return None
    except pa.ArrowInvalid:
        pass
    try:
        data.decode("utf-8")
        return None
    except UnicodeDecodeError as err:
        return err.start


def warn_latin1(path: Path, line: int, byte: int) -> None:
    """Say that `path` is not UTF-8 (first at `line`) and is read as Latin-1."""
    log.warning(
        "%s line %d: not valid UTF-8 (byte 0x%02X), which MovieLens CSV files are; reading the file as Latin-1, "
        "the encoding of MovieLens' older releases. If titles look wrong, save the file again as UTF-8",
        path, line, byte,
    )  # fmt: skip


def _check_header(
    path: Path, data: bytes, columns: dict[str, pa.DataType], fmt: TextFormat, names: list[str] | None
) -> list[str]:
    if names is not None:
        return names
    text = data.lstrip(b"\r\n")  # pyarrow skips blank lines before the header too
    line = _line_of_offset(data, len(data) - len(text))
    end = _LINE_END.search(text)
    header = text[: end.start() if end else len(text)].decode("utf-8", "replace").split(fmt.delimiter)
    header = [h.strip().strip('"') for h in header]
    missing = [c for c in columns if c not in header]
    if missing:
        raise DataError(
            f"{path} line {line}: missing column {', '.join(missing)} (header is {','.join(header)}); "
            f"expected columns {','.join(columns)}"
        )
    return header


def _invalid_rows(path: Path, data: bytes, fmt: TextFormat, names: list[str] | None) -> tuple[pa.Table, list]:
    """Read every column as text, single-threaded so that bad rows come with their record numbers."""
    invalid: list[pacsv.InvalidRow] = []

    def handler(row: pacsv.InvalidRow) -> str:
        invalid.append(row)
        return "skip"

    read_opts = pacsv.ReadOptions(column_names=names, use_threads=False)
    parse_opts = pacsv.ParseOptions(
        delimiter=fmt.delimiter, quote_char='"' if fmt.quoting else False, invalid_row_handler=handler
    )
    header = names or _check_header(path, data, {}, fmt, None)
    convert = pacsv.ConvertOptions(column_types={c: pa.string() for c in header}, strings_can_be_null=False)
    return pacsv.read_csv(io.BytesIO(data), read_opts, parse_opts, convert), invalid


def _value_problems(text: pa.Table, columns: dict[str, pa.DataType]) -> list[tuple[str, np.ndarray, str]]:
    """(column, mask of bad rows, what was expected) for each column with values that do not parse."""
    problems = []
    for name, dtype in columns.items():
        values = text.column(name)
        if pa.types.is_integer(dtype):
            kind = "an integer"
            ok = pc.match_substring_regex(values, _NUMBER_PATTERNS["int"])
        elif pa.types.is_floating(dtype):
            kind = "a number"
            ok = pc.match_substring_regex(values, _NUMBER_PATTERNS["float"])
        else:
            continue
        bad = ~ok.to_numpy(zero_copy_only=False)
        if bad.any():
            problems.append((name, bad, kind))
    return problems


def _raise_first_problem(
    path: Path, data: bytes, columns: dict[str, pa.DataType], fmt: TextFormat, names: list[str] | None, header,
    first_line: int = 1,
) -> None:
    text, invalid = _invalid_rows(path, data, fmt, names)
    lines = _record_lines(data, fmt.quoting)
    if invalid:
        row = invalid[0]
        # pyarrow numbers records from 1, header included, skipping blank lines: record n is lines[n - 1]
        known = row.number is not None and row.number <= len(lines)
        line = int(lines[row.number - 1]) + first_line - 1 if known else "?"
        raise DataError(
            f"{path} line {line}: expected {row.expected_columns} columns, got {row.actual_columns} "
            f"(truncated or malformed line: {row.text[:80]!r}); fix or delete the line, or pass "
            "data.on_bad_rows=skip"
        )
    for name, bad, kind in _value_problems(text, columns):
        index = np.flatnonzero(bad)[:1]
        value = text.column(name)[int(index[0])].as_py()
        col = header.index(name) + 1
        raise DataError(
            f"{path} line {int(_row_lines(lines, index, fmt)[0]) + first_line - 1}, column {col} ({name}): {value!r} is not {kind}; "
            "fix the value, or pass data.on_bad_rows=skip to drop such rows"
        )
    raise DataError(f"{path}: could not be parsed as {'::' if fmt.multi_char_delimiter else fmt.delimiter!r}-separated text")


def _read_skipping(
    path: Path,
    data: bytes,
    columns: dict[str, pa.DataType],
    fmt: TextFormat,
    names: list[str] | None,
    bad_rows: BadRows,
) -> pa.Table:
    text, invalid = _invalid_rows(path, data, fmt, names)
    bad_rows.add(path, "wrong number of columns", len(invalid))
    keep = np.ones(text.num_rows, dtype=bool)
    for name, bad, kind in _value_problems(text, columns):
        bad_rows.add(path, f"{name} is not {kind}", int((bad & keep).sum()))
        keep &= ~bad
    text = text.filter(pa.array(keep)) if not keep.all() else text
    return pa.table({name: pc.cast(pc.utf8_trim_whitespace(text.column(name)), dtype) for name, dtype in columns.items()})
