"""Reading the string metadata of a safetensors blob without loading its tensors
(the library's loaders return only the tensors), and writing safetensors bytes that
depend only on their content."""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping

import numpy as np

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


# numpy dtype -> safetensors dtype name (little-endian storage)
_DTYPES = {
    np.dtype(np.float64): "F64",
    np.dtype(np.float32): "F32",
    np.dtype(np.float16): "F16",
    np.dtype(np.int64): "I64",
    np.dtype(np.int32): "I32",
    np.dtype(np.int16): "I16",
    np.dtype(np.int8): "I8",
    np.dtype(np.uint64): "U64",
    np.dtype(np.uint32): "U32",
    np.dtype(np.uint16): "U16",
    np.dtype(np.uint8): "U8",
    np.dtype(np.bool_): "BOOL",
}


def safetensors_bytes(tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str]) -> bytes:
    """A safetensors file whose bytes depend only on its content: the header's keys
    sorted, tensors stored in name order. (The safetensors library writes the metadata
    in hash-map order, so equal content could give different bytes and digests.)"""
    header: dict[str, object] = {"__metadata__": dict(sorted(metadata.items()))}
    buffers: list[bytes] = []
    offset = 0
    for name in sorted(tensors):
        array = np.ascontiguousarray(tensors[name])
        if array.dtype not in _DTYPES:
            raise TypeError(f"tensor {name!r}: dtype {array.dtype} has no safetensors name")
        data = array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
        header[name] = {
            "dtype": _DTYPES[array.dtype],
            "shape": list(array.shape),
            "data_offsets": [offset, offset + len(data)],
        }
        buffers.append(data)
        offset += len(data)
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned, as the format asks
    return struct.pack("<Q", len(text)) + text + b"".join(buffers)
