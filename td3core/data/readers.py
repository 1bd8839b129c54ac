"""Readers for interaction files -> `Interactions` (columnar, pyarrow; no pandas, no torch).

Formats (text formats may be gzip-compressed; gzip and Parquet are detected by magic
bytes, not by name):
  recbole  RecBole atomic `.inter`: tab-separated, typed header `user_id:token ...`
  csv/tsv  a header row naming the columns (or `columns=` + `has_header=False`)
  ml-100k  MovieLens `u.data`: `user<TAB>item<TAB>rating<TAB>timestamp`, no header
  ml-1m    MovieLens `ratings.dat`: `user::item::rating::timestamp`, no header
  amazon   Amazon "ratings only" csv: `item,user,rating,timestamp`, no header
  jsonl    one JSON object per line (the Amazon review dumps: `user_col=reviewerID
           item_col=asin time_col=unixReviewTime rating_col=overall`)
  parquet  columns by name; integer ids become strings, timestamp columns seconds

Timestamps are numbers (any epoch unit: only their order matters) or ISO-8601 strings
(without a zone: UTC), see `time_format`.

The fast path parses blocks of rows with pyarrow and checks whole columns at once.
When it meets a problem in a text file, a second, line-by-line pass over the same
file (`_diagnose_*`) finds the first bad line and says what is wrong with it, so every
problem is a `DataError` naming the file and, where there is one, the line. Both
passes read through `limits.StreamGuard`, which bounds decompressed bytes, rows and
line length while streaming; `max_distinct_ids` is checked as row blocks arrive.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import hashlib
import io
import json
import math
import os
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.json as pa_json
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from td3core.data.limits import (
    PARQUET_MAGIC,
    GuardedReader,
    LimitError,
    Limits,
    Readable,
    StreamGuard,
)
from td3core.data.types import Interactions
from td3core.errors import DataError

Format = Literal["auto", "recbole", "csv", "tsv", "ml-100k", "ml-1m", "amazon", "jsonl", "parquet"]
FORMATS: tuple[str, ...] = (
    "recbole",
    "csv",
    "tsv",
    "ml-100k",
    "ml-1m",
    "amazon",
    "jsonl",
    "parquet",
)
TimeFormat = Literal["auto", "number", "iso8601"]

_MOVIELENS_COLUMNS = ("user_id", "item_id", "rating", "timestamp")
# Formats without a header row: (delimiter, column names in file order).
_HEADERLESS: dict[str, tuple[str, tuple[str, ...]]] = {
    "ml-100k": ("\t", _MOVIELENS_COLUMNS),
    "ml-1m": ("::", _MOVIELENS_COLUMNS),
    "amazon": (",", ("item_id", "user_id", "rating", "timestamp")),
}
_SNIFF_DELIMITERS = ("\t", ",", ";", "|")
_JSON_SUFFIXES = (".jsonl", ".ndjson", ".json")
# pyarrow parses blocks of this size in parallel; a row must fit in one block.
_BLOCK = 8 << 20
# A multi-character delimiter is rewritten to this byte before pyarrow sees the data.
_UNIT_SEPARATOR = b"\x1f"


class ReaderOptions(BaseModel):
    """How to read an interaction file: the one definition of the reader's options
    (the library, the CLI and the HTTP upload all take these)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    fmt: Format = Field("auto", description="file format; auto: detected from the content")
    user_col: str = Field("user_id", min_length=1, max_length=100)
    item_col: str = Field("item_id", min_length=1, max_length=100)
    time_col: str | None = Field(
        "timestamp",
        max_length=100,
        description="None (an HTTP query or the CLI: empty): file order is time",
    )
    rating_col: str | None = Field(
        None, max_length=100, description='None: a column named "rating" if there is one'
    )
    delimiter: str | None = Field(None, min_length=1, max_length=4)
    columns: tuple[str, ...] | None = Field(
        None, max_length=100, description="column names of a file without a header"
    )
    has_header: bool | None = Field(
        None, description="default: True, or False when columns is given"
    )
    time_format: TimeFormat = Field(
        "auto",
        description="auto: numbers, else ISO-8601 strings; number: only numbers; "
        "iso8601: only ISO-8601 strings (JSONL/Parquet columns of numbers or "
        "timestamps are read as such)",
    )


def read_interactions(
    path: str | os.PathLike[str],
    options: ReaderOptions | None = None,
    *,
    limits: Limits | None = None,
    **overrides: Any,
) -> Interactions:
    """Read an interaction file with `options` (or `ReaderOptions(**overrides)`),
    refusing it with a `LimitError` as soon as it exceeds `limits`.

    `rating_col=None` reads a column named "rating" when there is one (ratings
    are optional); `time_col=None` uses file order as time. `columns` names the
    columns of a file without a header (`has_header` then defaults to False;
    pass True to skip and replace an existing header).
    """
    options = _options(options, overrides)
    path = Path(path)
    name = str(path)
    digest = hashlib.sha256()
    try:
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    except FileNotFoundError:
        raise DataError("file not found", file=name) from None
    except IsADirectoryError:
        raise DataError("is a directory, not a file", file=name) from None
    except OSError as e:
        raise DataError(f"cannot read the file ({e.strerror})", file=name) from None
    return _read(lambda: path.open("rb"), name, digest.hexdigest(), options, limits or Limits())


def read_interactions_bytes(
    data: bytes,
    name: str = "upload",
    options: ReaderOptions | None = None,
    *,
    limits: Limits | None = None,
    **overrides: Any,
) -> Interactions:
    """`read_interactions` on in-memory bytes (an HTTP upload); `name` is used for
    format detection and in error messages."""
    options = _options(options, overrides)
    return _read(
        lambda: io.BytesIO(data),
        name,
        hashlib.sha256(data).hexdigest(),
        options,
        limits or Limits(),
    )


def _options(options: ReaderOptions | None, overrides: dict[str, Any]) -> ReaderOptions:
    if options is not None and overrides:
        raise TypeError("pass either options or keyword overrides, not both")
    if options is not None:
        return options
    try:
        return ReaderOptions(**overrides)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise DataError(f"invalid reader options: {problems}") from None


Opener = Callable[[], BinaryIO]


@dataclass(frozen=True)
class _Source:
    """The file being read: its raw bytes (`open_raw`) and its checked,
    decompressed bytes (`open`, a fresh guard each time)."""

    open_raw: Opener
    name: str
    limits: Limits

    @contextlib.contextmanager
    def open(self) -> Iterator[GuardedReader]:
        with (
            self.open_raw() as raw,
            GuardedReader(raw, StreamGuard(self.limits, name=self.name)) as f,
        ):
            yield f

    def head(self, n: int) -> bytes:
        with self.open() as f:
            return f.read(n) or b""


def _read(
    open_raw: Opener, name: str, sha256: str, options: ReaderOptions, limits: Limits
) -> Interactions:
    src = _Source(open_raw, name, limits)
    fmt: str = options.fmt
    delimiter = options.delimiter
    if fmt == "auto":
        fmt, sniffed = _detect(src, options)
        delimiter = delimiter or sniffed
    if fmt == "parquet":
        out = _read_parquet(src, options)
    elif fmt == "jsonl":
        out = _read_jsonl(src, options)
    else:
        out = _read_delimited(src, fmt, delimiter, options)
    return Interactions(
        users=out.users,
        items=out.items,
        timestamps=out.times,
        ratings=out.ratings,
        source=name,
        sha256=sha256,
        fmt=fmt,
    )


# ------------------------------------------------------------------ columns -> values
@dataclass(frozen=True)
class _Columns:
    """Where the wanted values sit in a row (None: not read)."""

    names: tuple[str, ...]
    user: int
    item: int
    time: int | None
    rating: int | None

    @property
    def wanted(self) -> list[str]:
        picks = (self.user, self.item, self.time, self.rating)
        return list(dict.fromkeys(self.names[i] for i in picks if i is not None))


def _resolve(
    names: tuple[str, ...], options: ReaderOptions, file: str, line: int | None
) -> _Columns:
    def index(col: str, hint: str = "") -> int:
        if col in names:
            return names.index(col)
        found = ", ".join(repr(n) for n in names)
        raise DataError(
            f"missing required column {col!r}; columns found: {found}{hint}", file=file, line=line
        )

    rating: int | None = None
    if options.rating_col is not None:
        rating = index(options.rating_col)
    elif "rating" in names:
        rating = names.index("rating")
    time_col = options.time_col
    return _Columns(
        names=names,
        user=index(options.user_col),
        item=index(options.item_col),
        time=None if time_col is None else index(time_col, " (time_col=None uses file order)"),
        rating=rating,
    )


class _BadValue(Exception):
    """A value the fast path cannot take; `row` counts data rows from 0."""

    def __init__(self, problem: str, row: int):
        super().__init__(problem)
        self.problem = problem
        self.row = row


class _Collector:
    """Converts blocks of rows to ids, times and ratings, counts them against the
    limits, and keeps them (ids stay Arrow strings: ~10 bytes a row, not ~60)."""

    def __init__(self, cols: _Columns, options: ReaderOptions, name: str, limits: Limits):
        self.cols = cols
        self.time_format = options.time_format
        self.name = name
        self.limits = limits
        self.rows = 0
        self.users: list[pa.Array] = []
        self.items: list[pa.Array] = []
        self.times: list[np.ndarray] = []
        self.ratings: list[np.ndarray] = []
        self._distinct: list[pa.Array] = []  # unique ids per block, merged now and then
        self._distinct_known = 0

    def add(self, batch: pa.RecordBatch | pa.Table) -> None:
        cols, n = self.cols, batch.num_rows
        if n == 0:
            return
        if self.limits.max_rows and self.rows + n > self.limits.max_rows:
            raise LimitError(
                f"more than {self.limits.max_rows} rows", limit="max_rows", file=self.name
            )
        users = _ids(batch.column(cols.names[cols.user]), "user", cols.names[cols.user], self.rows)
        items = _ids(batch.column(cols.names[cols.item]), "item", cols.names[cols.item], self.rows)
        if cols.time is None:
            times = np.arange(self.rows, self.rows + n, dtype=np.float64)
        else:
            times = _times(batch.column(cols.names[cols.time]), self.time_format, self.rows)
        if cols.rating is not None:
            self.ratings.append(
                _numbers(batch.column(cols.names[cols.rating]), "rating", self.rows)
            )
        self.users.append(users)
        self.items.append(items)
        self.times.append(times)
        self.rows += n
        self._count_distinct(users, items)

    def _count_distinct(self, users: pa.Array, items: pa.Array) -> None:
        limit = self.limits.max_distinct_ids
        if not limit:
            return
        self._distinct += [pc.unique(users), pc.unique(items)]
        upper = sum(len(a) for a in self._distinct)
        # The sum of per-block counts bounds the true count from above; merge (exact
        # count) only when it passes the limit and has doubled since the last merge, so
        # the merging costs amortised linear time.
        if upper <= limit or upper <= 2 * self._distinct_known:
            return
        merged = [
            pc.unique(pa.chunked_array(self._distinct[side::2], pa.string()).combine_chunks())
            for side in (0, 1)
        ]
        self._distinct = merged
        self._distinct_known = len(merged[0]) + len(merged[1])
        if self._distinct_known > limit:
            raise LimitError(
                f"more than {limit} distinct user and item ids",
                limit="max_distinct_ids",
                file=self.name,
            )

    def result(self, empty: str) -> _Columnar:
        if self.rows == 0:
            raise DataError(empty, file=self.name)
        return _Columnar(
            users=pa.chunked_array(self.users, pa.string()),
            items=pa.chunked_array(self.items, pa.string()),
            times=np.concatenate(self.times),
            ratings=np.concatenate(self.ratings) if self.cols.rating is not None else None,
        )


@dataclass(frozen=True)
class _Columnar:
    users: pa.ChunkedArray
    items: pa.ChunkedArray
    times: np.ndarray
    ratings: np.ndarray | None


def _ids(column: pa.Array | pa.ChunkedArray, what: str, col: str, offset: int) -> pa.Array:
    values = _one_array(column)
    if not pa.types.is_string(values.type) and not pa.types.is_large_string(values.type):
        if not (pa.types.is_integer(values.type) or pa.types.is_dictionary(values.type)):
            raise _BadValue(f"{what} ids must be strings or integers, not {values.type}", offset)
        values = values.cast(pa.string())
    values = pc.utf8_trim_whitespace(values.cast(pa.string()))
    empty = pc.fill_null(pc.equal(pc.utf8_length(values), 0), True)
    if pc.any(empty).as_py():
        row = int(pc.index(empty, True).as_py())
        raise _BadValue(f"empty {what} id (column {col!r})", offset + row)
    return values


def _numbers(column: pa.Array | pa.ChunkedArray, what: str, offset: int) -> np.ndarray:
    values = _one_array(column)
    if pa.types.is_string(values.type) or pa.types.is_large_string(values.type):
        values = pc.utf8_trim_whitespace(values)
        try:
            values = values.cast(pa.float64())
        except pa.ArrowInvalid:
            return _each(values, what, _parse_number, offset)
    elif pa.types.is_integer(values.type) or pa.types.is_floating(values.type):
        values = values.cast(pa.float64())
    else:
        raise _BadValue(f"{what} values must be numbers, not {values.type}", offset)
    return _finite(values, what, offset)


def _times(column: pa.Array | pa.ChunkedArray, time_format: TimeFormat, offset: int) -> np.ndarray:
    values = _one_array(column)
    if pa.types.is_timestamp(values.type) or pa.types.is_date(values.type):
        return _epoch_seconds(values, offset)
    if not (pa.types.is_string(values.type) or pa.types.is_large_string(values.type)):
        return _numbers(values, "timestamp", offset)
    values = pc.utf8_trim_whitespace(values)
    if time_format != "iso8601":
        with contextlib.suppress(pa.ArrowInvalid):
            return _finite(values.cast(pa.float64()), "timestamp", offset)
    if time_format != "number":
        # ISO-8601 without a zone is read as UTC; with one, converted to UTC.
        for target in (pa.timestamp("us"), pa.timestamp("us", tz="UTC")):
            with contextlib.suppress(pa.ArrowInvalid):
                return _epoch_seconds(values.cast(target), offset)
    # several kinds in one block (dates with and without a zone, numbers and dates)
    return _each(
        values, "timestamp", functools.partial(_parse_time, time_format=time_format), offset
    )


_PER_SECOND = {"s": 1.0, "ms": 1e3, "us": 1e6, "ns": 1e9}


def _epoch_seconds(values: pa.Array, offset: int) -> np.ndarray:
    if values.null_count:
        raise _BadValue("missing timestamp", offset + _first_null(values))
    if pa.types.is_date(values.type):
        values = values.cast(pa.timestamp("s"))
    ticks = values.cast(pa.int64()).to_numpy(zero_copy_only=False)
    return ticks.astype(np.float64) / _PER_SECOND[values.type.unit]


def _finite(values: pa.Array, what: str, offset: int) -> np.ndarray:
    if values.null_count:
        raise _BadValue(f"missing {what}", offset + _first_null(values))
    out = values.to_numpy(zero_copy_only=False).astype(np.float64, copy=False)
    bad = ~np.isfinite(out)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise _BadValue(f"non-finite {what} {values[row].as_py()!r}", offset + row)
    return out


def _first_null(values: pa.Array) -> int:
    return int(pc.index(pc.is_null(values), True).as_py())


def _each(values: pa.Array, what: str, parse: Callable[[str], float], offset: int) -> np.ndarray:
    """Value by value, the rules of the line-by-line pass: for the few blocks Arrow's
    casts refuse (bounded: one block), and to locate the bad value for the message."""
    out = np.empty(len(values), dtype=np.float64)
    for row, text in enumerate(values.to_pylist()):
        if text is None:
            raise _BadValue(f"missing {what}", offset + row)
        try:
            out[row] = parse(text)
        except ValueError as e:
            raise _BadValue(str(e), offset + row) from None
    return out


def _one_array(column: pa.Array | pa.ChunkedArray) -> pa.Array:
    if isinstance(column, pa.ChunkedArray):
        return column.combine_chunks()
    return column


# ---------------------------------------------------------- per-value rules (slow path)
def _parse_number(text: str, what: str = "rating") -> float:
    try:
        x = float(text)
    except ValueError:
        raise ValueError(f"non-numeric {what} {text!r}") from None
    if not math.isfinite(x):
        raise ValueError(f"non-finite {what} {text!r}")
    return x


def _parse_time(text: str, time_format: TimeFormat) -> float:
    text = text.strip()
    if time_format != "iso8601" and _is_number(text):
        return _parse_number(text, "timestamp")
    if time_format == "number":
        raise ValueError(f"non-numeric timestamp {text!r}")
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        if time_format == "iso8601":
            raise ValueError(f"not an ISO-8601 timestamp {text!r}") from None
        raise ValueError(f"non-numeric timestamp {text!r} (nor an ISO-8601 date)") from None
    # without a zone, UTC (as the fast path reads it)
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


# ----------------------------------------------------------------------- delimited text
@dataclass(frozen=True)
class _Layout:
    delimiter: str
    names: tuple[str, ...]  # empty: from the header
    header: bool


def _layout(fmt: str, delimiter: str | None, options: ReaderOptions, name: str) -> _Layout:
    columns, has_header = options.columns, options.has_header
    if fmt in _HEADERLESS:
        fixed_delim, fixed_names = _HEADERLESS[fmt]
        layout = _Layout(
            delimiter or fixed_delim,
            tuple(columns) if columns is not None else fixed_names,
            bool(has_header),
        )
    else:
        layout = _Layout(
            delimiter or {"recbole": "\t", "tsv": "\t", "csv": ","}[fmt],
            tuple(columns) if columns is not None else (),
            has_header if has_header is not None else columns is None,
        )
    if not layout.names and not layout.header:
        raise DataError(
            "a file without a header needs `columns` to name its columns "
            "(the upload's `columns=user_id,item_id,...` query parameter, the CLI's --columns)",
            file=name,
        )
    return layout


def _read_delimited(
    src: _Source, fmt: str, delimiter: str | None, options: ReaderOptions
) -> _Columnar:
    layout = _layout(fmt, delimiter, options, src.name)
    first = _first_line(src)
    if first is None:
        raise DataError("the file is empty", file=src.name)
    first_no, first_text = first
    names, skip = layout.names, 0
    if layout.header:
        if not names:
            # RecBole headers carry a type: "user_id:token" -> "user_id".
            names = tuple(f.strip().split(":")[0] for f in _split(first_text, layout.delimiter))
        skip = first_no  # the header and any blank lines before it
    cols = _resolve(names, options, src.name, first_no if layout.header else None)
    collector = _Collector(cols, options, src.name, src.limits)
    single = len(layout.delimiter) == 1
    try:
        with src.open() as f:
            stream: Readable = f if single else _Translate(f, layout.delimiter.encode())
            reader = pa_csv.open_csv(
                stream,
                read_options=pa_csv.ReadOptions(
                    column_names=[f"{i}:{n}" for i, n in enumerate(names)],
                    skip_rows=skip,
                    block_size=_BLOCK,
                ),
                parse_options=pa_csv.ParseOptions(
                    delimiter=layout.delimiter if single else _UNIT_SEPARATOR.decode(),
                    quote_char='"' if single else False,
                    ignore_empty_lines=True,
                ),
                convert_options=pa_csv.ConvertOptions(
                    include_columns=[f"{names.index(n)}:{n}" for n in cols.wanted],
                    column_types={f"{names.index(n)}:{n}": pa.string() for n in cols.wanted},
                    strings_can_be_null=False,
                    quoted_strings_can_be_null=False,
                ),
            )
            for batch in reader:
                collector.add(_renamed(batch, cols))
    except (pa.ArrowException, _BadValue, UnicodeDecodeError) as exc:
        _diagnose_delimited(src, layout, cols, options, skip)
        raise _unlocated(exc, src.name) from None
    return collector.result(
        "the file has a header but no interactions" if layout.header else "the file is empty"
    )


def _renamed(batch: pa.RecordBatch, cols: _Columns) -> pa.Table:
    """Arrow columns are named `index:name` (header names may repeat); back to names."""
    table = pa.Table.from_batches([batch])
    return table.rename_columns([n.split(":", 1)[1] for n in table.column_names])


def _unlocated(exc: BaseException, name: str) -> DataError:
    """The fast path's error when the line-by-line pass found no bad line."""
    if isinstance(exc, _BadValue):
        return DataError(f"{exc.problem} (data row {exc.row + 1})", file=name)
    return DataError(f"cannot parse the file ({exc})", file=name)


def _diagnose_delimited(
    src: _Source, layout: _Layout, cols: _Columns, options: ReaderOptions, skip: int
) -> None:
    """Find the first bad line and raise its DataError (returns if all lines pass)."""
    with contextlib.closing(_lines(src)) as lines:
        for line_no, text in lines:
            if line_no <= skip or not text.strip():
                continue
            fields = _split(text, layout.delimiter)
            if len(fields) != len(cols.names):
                raise DataError(
                    f"wrong number of fields: expected {len(cols.names)} "
                    f"({', '.join(cols.names)}), found {len(fields)}",
                    file=src.name,
                    line=line_no,
                )
            values = dict(zip(cols.names, fields, strict=True))
            _check_record(values, cols, options, src.name, line_no)


def _check_record(
    values: dict[str, Any], cols: _Columns, options: ReaderOptions, name: str, line_no: int
) -> None:
    """The per-value rules of the fast path, for one row of any text format."""
    for what, index in (("user", cols.user), ("item", cols.item)):
        col = cols.names[index]
        value = values.get(col)
        if value is None or not str(value).strip():
            raise DataError(f"empty {what} id (column {col!r})", file=name, line=line_no)
    try:
        if cols.time is not None:
            _value(values.get(cols.names[cols.time]), "timestamp", options.time_format)
        if cols.rating is not None:
            _value(values.get(cols.names[cols.rating]), "rating", "number")
    except ValueError as e:
        raise DataError(str(e), file=name, line=line_no) from None


def _value(value: Any, what: str, time_format: TimeFormat) -> float:
    if value is None:
        raise ValueError(f"missing {what}")
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError(f"{what} must be a number or a string, not {value!r}")
    if isinstance(value, str):
        return _parse_time(value, time_format) if what == "timestamp" else _parse_number(value)
    if not math.isfinite(value):
        raise ValueError(f"non-finite {what} {value!r}")
    return float(value)


class _Translate(io.RawIOBase):
    """`f` with a multi-byte delimiter rewritten to one byte pyarrow can split on."""

    def __init__(self, f: Readable, delimiter: bytes):
        self._f = f
        self._delimiter = delimiter
        self._carry = b""
        self._out = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        while not self._out:
            chunk = self._f.read(_BLOCK) or b""
            if _UNIT_SEPARATOR in chunk:
                raise DataError("the data contains the byte 0x1f, which is not text")
            if not chunk and not self._carry:
                return 0
            out = (self._carry + chunk).replace(self._delimiter, _UNIT_SEPARATOR)
            # hold back an unfinished delimiter at the end: the next read may complete it
            keep = (
                next(
                    (
                        k
                        for k in range(len(self._delimiter) - 1, 0, -1)
                        if out.endswith(self._delimiter[:k])
                    ),
                    0,
                )
                if chunk
                else 0
            )
            self._carry = out[len(out) - keep :] if keep else b""
            self._out = memoryview(out[: len(out) - keep])
        n = min(len(buffer), len(self._out))
        buffer[:n] = self._out[:n]
        self._out = self._out[n:]
        return n


# ---------------------------------------------------------------------------- JSON lines
def _read_jsonl(src: _Source, options: ReaderOptions) -> _Columnar:
    first = _first_line(src)
    if first is None:
        raise DataError("the file is empty", file=src.name)
    first_no, first_text = first
    try:
        record = json.loads(first_text)
    except ValueError as e:
        raise DataError(f"not a JSON object ({e})", file=src.name, line=first_no) from None
    if not isinstance(record, dict):
        raise DataError("not a JSON object", file=src.name, line=first_no)
    cols = _resolve(tuple(record), options, src.name, first_no)
    # Only the wanted keys are parsed (reviews carry long texts). Ids keep the first
    # record's type, so a later record of another type is an error, not a guess; times
    # and ratings that are numbers are read as float64 (ints and floats may mix).
    numeric = {cols.names[i] for i in (cols.time, cols.rating) if i is not None}
    schema = pa.schema(
        [
            (
                n,
                pa.float64()
                if n in numeric and _json_type(record[n]) == pa.int64()
                else _json_type(record[n]),
            )
            for n in cols.wanted
        ]
    )
    collector = _Collector(cols, options, src.name, src.limits)
    try:
        with src.open() as f:
            reader = pa_json.open_json(
                f,
                read_options=pa_json.ReadOptions(block_size=_BLOCK),
                parse_options=pa_json.ParseOptions(
                    explicit_schema=schema, unexpected_field_behavior="ignore"
                ),
            )
            for batch in reader:
                collector.add(batch)
    except (pa.ArrowException, _BadValue) as exc:
        _diagnose_jsonl(src, cols, options, schema)
        raise _unlocated(exc, src.name) from None
    return collector.result("the file is empty")


def _json_type(value: Any) -> pa.DataType:
    if isinstance(value, bool):
        return pa.bool_()
    if isinstance(value, int):
        return pa.int64()
    if isinstance(value, float):
        return pa.float64()
    return pa.string()


def _diagnose_jsonl(
    src: _Source, cols: _Columns, options: ReaderOptions, schema: pa.Schema
) -> None:
    with contextlib.closing(_lines(src)) as lines:
        for line_no, text in lines:
            if not text.strip():
                continue
            try:
                record = json.loads(text)
            except ValueError as e:
                raise DataError(f"not a JSON object ({e})", file=src.name, line=line_no) from None
            if not isinstance(record, dict):
                raise DataError("not a JSON object", file=src.name, line=line_no)
            for field in schema:
                value = record.get(field.name)
                if value is not None and _json_type(value) != field.type:
                    if field.type == pa.float64() and _json_type(value) == pa.int64():
                        continue  # an integer where the first record had a float is fine
                    raise DataError(
                        f"{field.name!r} is {json.dumps(value)}, but the first record has "
                        f"a {field.type} there",
                        file=src.name,
                        line=line_no,
                    )
            _check_record(record, cols, options, src.name, line_no)


# ------------------------------------------------------------------------------- Parquet
def _read_parquet(src: _Source, options: ReaderOptions) -> _Columnar:
    with src.open_raw() as raw:
        if raw.read(len(PARQUET_MAGIC)) != PARQUET_MAGIC:
            raise DataError(
                "not a Parquet file (a Parquet file compresses itself: send it without gzip)",
                file=src.name,
            )
        raw.seek(0)
        try:
            parquet = pq.ParquetFile(raw)
        except pa.ArrowException as e:
            raise DataError(f"corrupt Parquet file ({e})", file=src.name) from None
        meta, limits = parquet.metadata, src.limits
        if limits.max_rows and meta.num_rows > limits.max_rows:
            raise LimitError(f"more than {limits.max_rows} rows", limit="max_rows", file=src.name)
        size = sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
        if limits.max_decompressed_bytes and size > limits.max_decompressed_bytes:
            raise LimitError(
                f"the data is larger than {limits.max_decompressed_bytes} bytes once decompressed",
                limit="max_decompressed_bytes",
                file=src.name,
            )
        cols = _resolve(tuple(parquet.schema_arrow.names), options, src.name, None)
        collector = _Collector(cols, options, src.name, limits)
        try:
            for batch in parquet.iter_batches(batch_size=1 << 20, columns=cols.wanted):
                collector.add(batch)
        except _BadValue as exc:
            raise DataError(f"{exc.problem} (row {exc.row + 1})", file=src.name) from None
        except pa.ArrowException as e:
            raise DataError(f"corrupt Parquet file ({e})", file=src.name) from None
    return collector.result("the file has no rows")


# ---------------------------------------------------------------------- lines, detection
def _lines(src: _Source) -> Generator[tuple[int, str]]:
    """Decoded lines (1-based numbers) of the checked, decompressed stream."""
    with src.open() as f:
        for line_no, data in enumerate(io.BufferedReader(f, _BLOCK), start=1):
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError as e:
                bad = data[e.start : e.start + 4]
                raise DataError(
                    f"undecodable bytes {bad!r} at column {e.start + 1} (the file must be UTF-8)",
                    file=src.name,
                    line=line_no,
                ) from None
            if line_no == 1:
                text = text.removeprefix("\ufeff")  # a UTF-8 byte order mark is not data
            yield line_no, text.rstrip("\r\n")


def _first_line(src: _Source) -> tuple[int, str] | None:
    with contextlib.closing(_lines(src)) as lines:
        return next(((no, text) for no, text in lines if text.strip()), None)


def _split(text: str, delimiter: str) -> list[str]:
    # Only quoted fields need the csv module; plain split is much faster.
    if len(delimiter) == 1 and '"' in text:
        return next(csv.reader([text], delimiter=delimiter))
    return text.split(delimiter)


def _detect(src: _Source, options: ReaderOptions) -> tuple[str, str | None]:
    """Guess (format, delimiter) from the file name, the magic bytes, then from the
    first non-blank line."""
    base = Path(src.name).name.lower().removesuffix(".gz")
    if base.endswith(".inter"):
        return "recbole", None
    if base == "u.data":
        return "ml-100k", None
    if base == "ratings.dat":
        return "ml-1m", None
    if src.head(len(PARQUET_MAGIC)) == PARQUET_MAGIC:
        return "parquet", None
    first = _first_line(src)
    if first is None:
        raise DataError("the file is empty", file=src.name)
    first_no, text = first
    if base.endswith(_JSON_SUFFIXES) or text.lstrip().startswith("{"):
        return "jsonl", None
    if "::" in text:
        return "ml-1m", None
    delim = options.delimiter or next((d for d in _SNIFF_DELIMITERS if d in text), ",")
    fields = [f.strip() for f in _split(text, delim)]
    typed = [f.split(":")[0] for f in fields if ":" in f]
    if options.user_col in typed or options.item_col in typed:
        return "recbole", None
    if options.columns is None and all(_is_number(f) for f in fields if f):
        if delim == "\t" and len(fields) == 4:
            return "ml-100k", None
        raise DataError(
            "the first line is not a header (all its fields are numbers); pass the format "
            f"(one of {', '.join(FORMATS)}), or `columns` naming the columns of a file "
            "without a header (the upload's `columns=user_id,item_id,...` query parameter, "
            "the CLI's --columns)",
            file=src.name,
            line=first_no,
        )
    return ("tsv" if delim == "\t" else "csv"), delim


def _is_number(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True
