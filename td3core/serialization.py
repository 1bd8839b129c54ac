"""Reading the string metadata of a safetensors blob without loading its tensors
(the library's loaders return only the tensors)."""

from __future__ import annotations

import json
import struct

from td3core.errors import DataError

_MAX_HEADER = 100 * 1024 * 1024  # safetensors' own header size limit


def read_metadata(blob: bytes) -> dict[str, str]:
    """The `__metadata__` map of a safetensors blob (8-byte little-endian header
    size, then a JSON header); DataError if the blob is not safetensors or has none."""
    if len(blob) < 8:
        raise DataError("not a safetensors file (too short)")
    (size,) = struct.unpack("<Q", blob[:8])
    if size > min(len(blob) - 8, _MAX_HEADER):
        raise DataError("not a safetensors file (bad header length)")
    try:
        header = json.loads(blob[8 : 8 + size].decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise DataError("not a safetensors file (bad header)") from None
    metadata = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(metadata, dict):
        raise DataError("safetensors file without metadata")
    return metadata
