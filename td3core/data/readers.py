"""Readers for interaction files -> `Interactions` (streaming, numpy only, no pandas).

Formats (each may be gzip-compressed; detected by magic bytes, not by name):
  recbole  RecBole atomic `.inter`: tab-separated, typed header `user_id:token ...`
  csv/tsv  a header row naming the columns (or `columns=` + `has_header=False`)
  ml-100k  MovieLens `u.data`: `user<TAB>item<TAB>rating<TAB>timestamp`, no header
  ml-1m    MovieLens `ratings.dat`: `user::item::rating::timestamp`, no header
  amazon   Amazon "ratings only" csv: `item,user,rating,timestamp`, no header

Every problem is a `DataError` naming the file and, where there is one, the line.
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import hashlib
import io
import math
import os
import zlib
from collections.abc import Callable, Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from td3core.data.types import Interactions
from td3core.errors import DataError

Format = Literal["auto", "recbole", "csv", "tsv", "ml-100k", "ml-1m", "amazon"]
FORMATS: tuple[str, ...] = ("recbole", "csv", "tsv", "ml-100k", "ml-1m", "amazon")

_GZIP_MAGIC = b"\x1f\x8b"
_MOVIELENS_COLUMNS = ("user_id", "item_id", "rating", "timestamp")
# Formats without a header row: (delimiter, column names in file order).
_HEADERLESS: dict[str, tuple[str, tuple[str, ...]]] = {
    "ml-100k": ("\t", _MOVIELENS_COLUMNS),
    "ml-1m": ("::", _MOVIELENS_COLUMNS),
    "amazon": (",", ("item_id", "user_id", "rating", "timestamp")),
}
_SNIFF_DELIMITERS = ("\t", ",", ";", "|")


@dataclass(frozen=True)
class _Columns:
    """Where the wanted values sit in a row (None: not read)."""

    names: tuple[str, ...]
    user: int
    item: int
    time: int | None
    rating: int | None


class ReaderOptions(BaseModel):
    """How to read an interaction file: the one definition of the reader's options
    (the library, the CLI and the HTTP upload all take these)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    fmt: Format = Field("auto", description="file format; auto: detected from the content")
    user_col: str = Field("user_id", min_length=1, max_length=100)
    item_col: str = Field("item_id", min_length=1, max_length=100)
    time_col: str | None = Field(
        "timestamp", max_length=100, description="None: file order is time"
    )
    rating_col: str | None = Field(
        None, max_length=100, description='None: a column named "rating" if there is one'
    )
    delimiter: str | None = Field(None, min_length=1, max_length=4)
    columns: tuple[str, ...] | None = Field(
        None, description="column names of a file without a header"
    )
    has_header: bool | None = Field(
        None, description="default: True, or False when columns is given"
    )


def read_interactions(
    path: str | os.PathLike[str], options: ReaderOptions | None = None, **overrides: Any
) -> Interactions:
    """Read an interaction file with `options` (or `ReaderOptions(**overrides)`).

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
    return _read(lambda: path.open("rb"), name, digest.hexdigest(), options)


def read_interactions_bytes(
    data: bytes, name: str = "upload", options: ReaderOptions | None = None, **overrides: Any
) -> Interactions:
    """`read_interactions` on in-memory bytes (an HTTP upload); `name` is used for
    format detection and in error messages."""
    options = _options(options, overrides)
    return _read(lambda: io.BytesIO(data), name, hashlib.sha256(data).hexdigest(), options)


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


def _read(
    open_raw: Callable[[], BinaryIO],
    name: str,
    sha256: str,
    options: ReaderOptions,
) -> Interactions:
    fmt: str = options.fmt
    delimiter, columns, has_header = options.delimiter, options.columns, options.has_header
    user_col, item_col = options.user_col, options.item_col
    time_col, rating_col = options.time_col, options.rating_col
    if fmt == "auto":
        fmt, sniffed = _detect(open_raw, name, user_col, item_col, delimiter)
        delimiter = delimiter or sniffed

    if fmt in _HEADERLESS:
        fixed_delim, fixed_names = _HEADERLESS[fmt]
        delim = delimiter or fixed_delim
        names = tuple(columns) if columns is not None else fixed_names
        header = bool(has_header)
    else:
        delim = delimiter or {"recbole": "\t", "tsv": "\t", "csv": ","}[fmt]
        names = tuple(columns) if columns is not None else ()
        header = has_header if has_header is not None else columns is None
    if not names and not header:
        raise DataError("a file without a header needs `columns=` to name its columns", file=name)

    users: list[str] = []
    items: list[str] = []
    times: list[float] = []
    ratings: list[float] = []
    cols: _Columns | None = None
    if names:
        cols = _resolve(names, user_col, item_col, time_col, rating_col, name, None)
    seen_any_line = False
    with contextlib.closing(_lines(open_raw, name)) as lines:
        for line_no, text in lines:
            if not text.strip():
                continue
            fields = _split(text, delim)
            if not seen_any_line:
                seen_any_line = True
                if header:
                    if not names:
                        # RecBole headers carry a type: "user_id:token" -> "user_id".
                        names = tuple(f.strip().split(":")[0] for f in fields)
                    cols = _resolve(names, user_col, item_col, time_col, rating_col, name, line_no)
                    continue
            assert cols is not None
            if len(fields) != len(cols.names):
                raise DataError(
                    f"wrong number of fields: expected {len(cols.names)} "
                    f"({', '.join(cols.names)}), found {len(fields)}",
                    file=name,
                    line=line_no,
                )
            user = fields[cols.user].strip()
            item = fields[cols.item].strip()
            if not user:
                raise DataError(
                    f"empty user id (column {cols.names[cols.user]!r})", file=name, line=line_no
                )
            if not item:
                raise DataError(
                    f"empty item id (column {cols.names[cols.item]!r})", file=name, line=line_no
                )
            users.append(user)
            items.append(item)
            if cols.time is None:
                times.append(float(len(times)))
            else:
                times.append(_number(fields[cols.time], "timestamp", name, line_no))
            if cols.rating is not None:
                ratings.append(_number(fields[cols.rating], "rating", name, line_no))

    if not seen_any_line:
        raise DataError("the file is empty", file=name)
    if not users:
        raise DataError("the file has a header but no interactions", file=name)
    assert cols is not None
    return Interactions(
        users=users,
        items=items,
        timestamps=np.asarray(times, dtype=np.float64),
        ratings=np.asarray(ratings, dtype=np.float64) if cols.rating is not None else None,
        source=name,
        sha256=sha256,
        fmt=fmt,
    )


def _lines(open_raw: Callable[[], BinaryIO], name: str) -> Generator[tuple[int, str]]:
    """Decoded lines (1-based numbers), gunzipping when the bytes say gzip."""
    with open_raw() as raw:
        compressed = raw.read(2) == _GZIP_MAGIC
        raw.seek(0)
        stream: BinaryIO = gzip.GzipFile(fileobj=raw, mode="rb") if compressed else raw  # type: ignore[assignment]
        it = iter(stream)
        line_no = 0
        while True:
            try:
                data = next(it)
            except StopIteration:
                return
            except (OSError, EOFError, zlib.error) as e:
                # gzip reports truncation as EOFError and bad data as BadGzipFile/zlib.error.
                raise DataError(f"corrupt gzip data ({e})", file=name, line=line_no + 1) from None
            line_no += 1
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError as e:
                bad = data[e.start : e.start + 4]
                raise DataError(
                    f"undecodable bytes {bad!r} at column {e.start + 1} (the file must be UTF-8)",
                    file=name,
                    line=line_no,
                ) from None
            if line_no == 1:
                text = text.removeprefix("\ufeff")  # a UTF-8 byte order mark is not data
            yield line_no, text.rstrip("\r\n")


def _split(text: str, delimiter: str) -> list[str]:
    # Only quoted fields need the csv module; plain split is much faster.
    if len(delimiter) == 1 and '"' in text:
        return next(csv.reader([text], delimiter=delimiter))
    return text.split(delimiter)


def _number(value: str, what: str, name: str, line_no: int) -> float:
    try:
        x = float(value)
    except ValueError:
        raise DataError(f"non-numeric {what} {value!r}", file=name, line=line_no) from None
    if not math.isfinite(x):
        raise DataError(f"non-finite {what} {value!r}", file=name, line=line_no)
    return x


def _resolve(
    names: tuple[str, ...],
    user_col: str,
    item_col: str,
    time_col: str | None,
    rating_col: str | None,
    file: str,
    line: int | None,
) -> _Columns:
    def index(col: str, hint: str = "") -> int:
        if col in names:
            return names.index(col)
        found = ", ".join(repr(n) for n in names)
        raise DataError(
            f"missing required column {col!r}; columns found: {found}{hint}", file=file, line=line
        )

    rating: int | None = None
    if rating_col is not None:
        rating = index(rating_col)
    elif "rating" in names:
        rating = names.index("rating")
    return _Columns(
        names=names,
        user=index(user_col),
        item=index(item_col),
        time=None if time_col is None else index(time_col, " (time_col=None uses file order)"),
        rating=rating,
    )


def _detect(
    open_raw: Callable[[], BinaryIO],
    name: str,
    user_col: str,
    item_col: str,
    delimiter: str | None,
) -> tuple[str, str | None]:
    """Guess (format, delimiter) from the file name, then from the first non-blank line."""
    base = Path(name).name.lower().removesuffix(".gz")
    if base.endswith(".inter"):
        return "recbole", None
    if base == "u.data":
        return "ml-100k", None
    if base == "ratings.dat":
        return "ml-1m", None
    first, first_no = "", 0
    with contextlib.closing(_lines(open_raw, name)) as lines:
        for line_no, text in lines:
            if text.strip():
                first, first_no = text, line_no
                break
    if not first:
        raise DataError("the file is empty", file=name)
    if "::" in first:
        return "ml-1m", None
    delim = delimiter or next((d for d in _SNIFF_DELIMITERS if d in first), ",")
    fields = [f.strip() for f in _split(first, delim)]
    typed = [f.split(":")[0] for f in fields if ":" in f]
    if user_col in typed or item_col in typed:
        return "recbole", None
    if all(_is_number(f) for f in fields if f):
        if delim == "\t" and len(fields) == 4:
            return "ml-100k", None
        raise DataError(
            "the first line is not a header (all its fields are numbers); pass fmt= one of "
            f"{', '.join(FORMATS)}, or columns=(...) for a file without a header",
            file=name,
            line=first_no,
        )
    return ("tsv" if delim == "\t" else "csv"), delim


def _is_number(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True
