"""Bounds on what reading a file may cost, checked while the bytes stream past.

A small upload can expand enormously (a 2 MB gzip of zeros is 2 GiB; a 1.5 MB gzip
of short lines is 100M rows), so the size that matters is the decompressed one, and
it must be refused while decompressing, before anything is held. `StreamGuard`
decompresses (gzip, by magic bytes) in bounded pieces and counts bytes, lines and
the longest line; the readers pull through it (`GuardedReader`) and the HTTP upload
pushes each received chunk through it, so both refuse the same files the same way.
"""

from __future__ import annotations

import io
import zlib
from collections.abc import Iterator
from typing import Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from td3core.errors import DataError

GZIP_MAGIC = b"\x1f\x8b"
PARQUET_MAGIC = b"PAR1"
_PIECE = 1 << 20  # at most this much decompressed data exists at once per feed step


class Limits(BaseModel):
    """What one file may hold; None: unbounded (the library's default; the service
    sets every one)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_decompressed_bytes: int | None = Field(None, ge=1)
    max_rows: int | None = Field(None, ge=1, description="data rows (lines of a text file)")
    max_line_bytes: int | None = Field(None, ge=16)
    max_distinct_ids: int | None = Field(None, ge=1, description="distinct users + items")


class LimitError(DataError):
    """The file is larger than a limit allows (`limit`: the `Limits` field)."""

    def __init__(self, problem: str, *, limit: str, file: str | None = None):
        super().__init__(problem, file=file)
        self.limit = limit


class StreamGuard:
    """Push raw bytes in (`feed`), get decompressed bytes out, with every limit on the
    decompressed stream checked as it passes. Binary content (Parquet) is counted
    but has no lines."""

    def __init__(self, limits: Limits, *, name: str):
        self.limits = limits
        self.name = name
        self.decompressed = 0
        self.lines = 0
        self.compressed: bool | None = None  # decided by the first two bytes
        self.binary: bool | None = None  # decided by the first four decompressed bytes
        self._head = b""
        self._inflate: zlib._Decompress | None = None
        self._line = 0  # bytes of the unfinished last line so far
        self._ended_member = False

    def feed(self, raw: bytes) -> Iterator[bytes]:
        """Decompressed pieces of `raw` (each at most 1 MiB)."""
        if self.compressed is None:
            self._head += raw
            if len(self._head) < len(GZIP_MAGIC):
                return
            raw, self._head = self._head, b""
            self.compressed = raw.startswith(GZIP_MAGIC)
        if not self.compressed:
            yield from self._out(raw)
            return
        while raw:
            if self._inflate is None or self._inflate.eof:
                # a gzip file may hold several members; each needs a fresh decompressor
                self._inflate = zlib.decompressobj(wbits=31)
            try:
                piece = self._inflate.decompress(raw, _PIECE)
            except zlib.error as e:
                raise DataError(f"corrupt gzip data ({e})", file=self.name) from None
            raw = self._inflate.unconsumed_tail or self._inflate.unused_data
            yield from self._out(piece)

    def finish(self) -> Iterator[bytes]:
        """The end of the raw stream: flush what is left and refuse truncated gzip."""
        if self.compressed is None and self._head:
            self.compressed = False
            yield from self._out(self._head)
        if self.compressed and self._inflate is not None and not self._inflate.eof:
            raise DataError(
                "corrupt gzip data (truncated: the compressed stream ends early)", file=self.name
            )

    def _out(self, piece: bytes) -> Iterator[bytes]:
        if not piece:
            return
        if self.binary is None:
            self.binary = piece.startswith(PARQUET_MAGIC)
        self.decompressed += len(piece)
        limits = self.limits
        if limits.max_decompressed_bytes and self.decompressed > limits.max_decompressed_bytes:
            raise LimitError(
                f"the data is larger than {limits.max_decompressed_bytes} bytes once decompressed",
                limit="max_decompressed_bytes",
                file=self.name,
            )
        if not self.binary:
            self._count_lines(piece)
        yield piece

    def _count_lines(self, piece: bytes) -> None:
        limits = self.limits
        newlines = np.flatnonzero(np.frombuffer(piece, dtype=np.uint8) == 0x0A)
        if len(newlines):
            # lengths of the lines that end in this piece, the first one carried over
            longest = max(self._line + int(newlines[0]), int(np.diff(newlines).max(initial=0)))
            self._line = len(piece) - 1 - int(newlines[-1])
        else:
            self._line += len(piece)
            longest = self._line
        if limits.max_line_bytes and max(longest, self._line) > limits.max_line_bytes:
            raise LimitError(
                f"a line is longer than {limits.max_line_bytes} bytes",
                limit="max_line_bytes",
                file=self.name,
            )
        self.lines += len(newlines)
        # a line without a final newline counts as a row too, hence the +1 headroom
        if limits.max_rows and self.lines > limits.max_rows + 1:
            raise LimitError(f"more than {limits.max_rows} rows", limit="max_rows", file=self.name)


class Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes | None: ...


class GuardedReader(io.RawIOBase):
    """A read-only binary file of the decompressed, checked bytes of `raw`."""

    def __init__(self, raw: Readable, guard: StreamGuard):
        self._raw = raw
        self._guard = guard
        self._pieces: Iterator[bytes] = iter(())
        self._buffer = memoryview(b"")  # a view: small reads must not copy the rest
        self._done = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        # Fill the whole buffer when the data is there: pyarrow parses what one read
        # returns as one block, and blocks of 1 MiB would cost it its parallelism.
        filled = 0
        while filled < len(buffer):
            if not self._buffer and not self._next_piece():
                break
            n = min(len(buffer) - filled, len(self._buffer))
            buffer[filled : filled + n] = self._buffer[:n]
            self._buffer = self._buffer[n:]
            filled += n
        return filled

    def _next_piece(self) -> bool:
        """Load the next decompressed piece; False at the end of the data."""
        while True:
            piece = next(self._pieces, None)
            if piece is not None:
                self._buffer = memoryview(piece)
                return True
            if self._done:
                return False
            raw = self._raw.read(_PIECE)
            if raw:
                self._pieces = self._guard.feed(raw)
            else:
                self._done = True
                self._pieces = self._guard.finish()
