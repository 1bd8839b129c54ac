"""SequenceDataset <-> bytes (safetensors + JSON metadata; never pickle).

Tensors: `items` (int64, every sequence concatenated) and `offsets` (int64,
n_users + 1; user u's sequence is items[offsets[u]:offsets[u+1]]). Metadata
(safetensors allows str -> str only): `format` = "td3-dataset/1" and JSON strings
for item_ids, user_ids, preprocessing, plus source_sha256. The bytes depend only on
the content (`td3core.serialization.safetensors_bytes`): equal datasets, equal bytes.
"""

from __future__ import annotations

import json

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load

from td3core.data.types import SequenceDataset
from td3core.errors import DataError
from td3core.serialization import read_metadata, safetensors_bytes

FORMAT = "td3-dataset/1"


def dataset_to_bytes(ds: SequenceDataset) -> bytes:
    lengths = np.fromiter((len(s) for s in ds.sequences), dtype=np.int64, count=ds.n_users)
    offsets = np.concatenate(([0], np.cumsum(lengths))).astype(np.int64)
    items = (
        np.concatenate(ds.sequences).astype(np.int64)
        if ds.sequences
        else np.zeros(0, dtype=np.int64)
    )
    metadata = {
        "format": FORMAT,
        "item_ids": json.dumps(ds.item_ids),
        "user_ids": json.dumps(ds.user_ids),
        "preprocessing": json.dumps(ds.preprocessing, sort_keys=True),
        "source_sha256": ds.source_sha256,
    }
    return safetensors_bytes({"items": items, "offsets": offsets}, metadata)


def dataset_from_bytes(b: bytes) -> SequenceDataset:
    """Parse bytes written by `dataset_to_bytes`; anything else raises DataError."""
    try:
        meta = read_metadata(bytes(b))
    except DataError as exc:
        raise DataError(f"not a td3 dataset: {exc}") from None
    if meta.get("format") != FORMAT:
        raise DataError(f"not a td3 dataset: format is {meta.get('format')!r}, expected {FORMAT!r}")
    try:
        tensors = load(bytes(b))
        item_ids = json.loads(meta["item_ids"])
        user_ids = json.loads(meta["user_ids"])
        preprocessing = json.loads(meta["preprocessing"])
        source_sha256 = meta["source_sha256"]
        items, offsets = tensors["items"], tensors["offsets"]
    except (SafetensorError, KeyError, ValueError, TypeError) as e:
        raise DataError(f"corrupt td3 dataset ({type(e).__name__}: {e})") from None
    _check(items, offsets, item_ids, user_ids, preprocessing)
    sequences = [s.copy() for s in np.split(items, offsets[1:-1])] if len(user_ids) else []
    return SequenceDataset(
        item_ids=item_ids,
        user_ids=user_ids,
        sequences=sequences,
        source_sha256=source_sha256,
        preprocessing=preprocessing,
    )


def _check(
    items: np.ndarray, offsets: np.ndarray, item_ids: object, user_ids: object, prep: object
) -> None:
    def bad(why: str) -> DataError:
        return DataError(f"corrupt td3 dataset: {why}")

    if not (
        isinstance(item_ids, list)
        and item_ids
        and item_ids[0] is None
        and all(isinstance(i, str) for i in item_ids[1:])
    ):
        raise bad("item_ids must be a list starting with null (padding) then strings")
    if not (isinstance(user_ids, list) and all(isinstance(u, str) for u in user_ids)):
        raise bad("user_ids must be a list of strings")
    if not isinstance(prep, dict):
        raise bad("preprocessing must be an object")
    if items.dtype != np.int64 or offsets.dtype != np.int64 or items.ndim != 1 or offsets.ndim != 1:
        raise bad("items and offsets must be 1-d int64")
    if (
        len(offsets) != len(user_ids) + 1
        or offsets[0] != 0
        or offsets[-1] != len(items)
        or (np.diff(offsets) < 0).any()
    ):
        raise bad("offsets do not match the users and items")
    n_items = len(item_ids) - 1
    if len(items) and (items.min() < 1 or items.max() > n_items):
        raise bad(f"item ids outside 1..{n_items}")
