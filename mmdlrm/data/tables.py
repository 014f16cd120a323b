"""Reading delimited text into typed Arrow tables, with errors that name the file, line and column.

The fast path is pyarrow's multithreaded CSV reader with the final column types. Only when it fails (or when bad
rows are to be skipped) does a second, slower pass read the file as text to find which line is wrong.
"""

from __future__ import annotations

import io
import logging
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


class DataError(ValueError):
    """Bad input data; the message names the file, the line (1-based, header included) and the fix."""


@dataclass
class BadRows:
    """Rows dropped under `on_bad_rows=skip`, counted by file and reason."""

    counts: dict[str, int] = field(default_factory=dict)

    def add(self, path: Path, reason: str, count: int) -> None:
        if count:
            key = f"{path.name}: {reason}"
            self.counts[key] = self.counts.get(key, 0) + int(count)
            log.warning("skipped %d rows of %s (%s)", count, path, reason)

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
        DataError: missing or empty file, missing column, truncated line, value that does not parse.
    """
    bad_rows = bad_rows if bad_rows is not None else BadRows()
    data = _load_bytes(path, fmt)
    header = _check_header(path, data, columns, fmt, names)
    read_opts = pacsv.ReadOptions(column_names=names, autogenerate_column_names=False, use_threads=True)
    parse_opts = pacsv.ParseOptions(delimiter=fmt.delimiter, quote_char='"' if fmt.quoting else False)
    convert = pacsv.ConvertOptions(column_types=columns, include_columns=list(columns), strings_can_be_null=False)
    if on_bad_rows == "error":
        try:
            table = pacsv.read_csv(pa.BufferReader(data), read_opts, parse_opts, convert)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            _raise_first_problem(path, data, columns, fmt, names, header)
            raise  # _raise_first_problem always raises; this keeps pyarrow's error if it ever does not
        _check_no_nulls(path, table, header, fmt)
    else:
        table = _read_skipping(path, data, columns, fmt, names, bad_rows)
    if table.num_rows == 0:
        raise DataError(f"{path}: no data rows{' after the header' if fmt.header else ''}; is the file complete?")
    if rename:
        table = table.rename_columns([rename.get(c, c) for c in table.column_names])
    return table


def first_line(path: Path, mask: np.ndarray, header: bool = True) -> int:
    """1-based file line of the first row where `mask` is True (assumes one line per row)."""
    return int(np.flatnonzero(mask)[0]) + 1 + int(header)


def _check_no_nulls(path: Path, table: pa.Table, header: list[str], fmt: TextFormat) -> None:
    for name in table.column_names:
        column = table.column(name)
        if column.null_count:
            line = first_line(path, column.is_null().to_numpy(zero_copy_only=False), fmt.header)
            raise DataError(
                f"{path} line {line}, column {header.index(name) + 1} ({name}): empty value; "
                "fill it in, or pass data.on_bad_rows=skip to drop such rows"
            )


def _load_bytes(path: Path, fmt: TextFormat) -> bytes:
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    data = path.read_bytes()
    if not data.strip():
        raise DataError(f"{path}: file is empty; re-download or re-extract the release")
    if fmt.encoding.lower() not in ("utf-8", "utf8"):
        data = data.decode(fmt.encoding).encode("utf-8")
    if fmt.multi_char_delimiter:
        data = data.replace(fmt.multi_char_delimiter.encode(), fmt.delimiter.encode())
    return data


def _check_header(
    path: Path, data: bytes, columns: dict[str, pa.DataType], fmt: TextFormat, names: list[str] | None
) -> list[str]:
    if names is not None:
        return names
    header = data.split(b"\n", 1)[0].decode("utf-8", "replace").strip().split(fmt.delimiter)
    header = [h.strip().strip('"') for h in header]
    missing = [c for c in columns if c not in header]
    if missing:
        raise DataError(
            f"{path} line 1: missing column {', '.join(missing)} (header is {','.join(header)}); "
            f"expected columns {','.join(columns)}"
        )
    return header


def _invalid_rows(path: Path, data: bytes, fmt: TextFormat, names: list[str] | None) -> tuple[pa.Table, list]:
    """Read every column as text, single-threaded so that bad rows come with their line numbers."""
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
    path: Path, data: bytes, columns: dict[str, pa.DataType], fmt: TextFormat, names: list[str] | None, header
) -> None:
    text, invalid = _invalid_rows(path, data, fmt, names)
    if invalid:
        row = invalid[0]
        line = row.number if row.number is not None else "?"
        raise DataError(
            f"{path} line {line}: expected {row.expected_columns} columns, got {row.actual_columns} "
            f"(truncated or malformed line: {row.text[:80]!r}); fix or delete the line, or pass "
            "data.on_bad_rows=skip"
        )
    for name, bad, kind in _value_problems(text, columns):
        index = int(np.flatnonzero(bad)[0])
        value = text.column(name)[index].as_py()
        col = header.index(name) + 1
        raise DataError(
            f"{path} line {index + 1 + int(fmt.header)}, column {col} ({name}): {value!r} is not {kind}; "
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
