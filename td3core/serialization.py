"""Reading the string metadata of a safetensors blob without loading its tensors."""

from __future__ import annotations

import json
import struct

from td3core.errors import DataError


def read_metadata(blob: bytes) -> dict[str, str]:
    """The `__metadata__` map of a safetensors blob (8-byte little-endian header
    size, then a JSON header); DataError if the blob is not safetensors."""
    try:
        (size,) = struct.unpack("<Q", blob[:8])
        header = json.loads(blob[8 : 8 + size])
        metadata = header.get("__metadata__") or {}
    except (struct.error, ValueError, AttributeError, UnicodeDecodeError) as exc:
        raise DataError(f"not a safetensors file ({exc})") from exc
    if not isinstance(metadata, dict):
        raise DataError("safetensors metadata is not a string map")
    return metadata
