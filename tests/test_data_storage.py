"""Dataset bytes: lossless round trip, and a DataError for anything that is not one."""

from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors.numpy import save

from td3core.data.preprocess import build_dataset
from td3core.data.storage import FORMAT, dataset_from_bytes, dataset_to_bytes
from td3core.data.synthetic import generate_interactions
from td3core.errors import DataError


def test_round_trip_is_lossless():
    ds = build_dataset(generate_interactions(n_users=30, seed=1))
    back = dataset_from_bytes(dataset_to_bytes(ds))
    assert back.item_ids == ds.item_ids and back.item_ids[0] is None
    assert back.user_ids == ds.user_ids
    assert back.preprocessing == ds.preprocessing
    assert back.source_sha256 == ds.source_sha256
    assert len(back.sequences) == len(ds.sequences)
    for a, b in zip(back.sequences, ds.sequences, strict=True):
        assert a.dtype == np.int64 and np.array_equal(a, b)
    # Not compared as bytes: safetensors writes metadata keys in hash-map order.
    again = dataset_from_bytes(dataset_to_bytes(back))
    assert again.user_ids == ds.user_ids and again.preprocessing == ds.preprocessing


def metadata(**overrides: str) -> dict[str, str]:
    meta = {
        "format": FORMAT,
        "item_ids": json.dumps([None, "a", "b"]),
        "user_ids": json.dumps(["u"]),
        "preprocessing": "{}",
        "source_sha256": "",
    }
    return {**meta, **overrides}


GOOD = {"items": np.array([1, 2, 1], dtype=np.int64), "offsets": np.array([0, 3], dtype=np.int64)}


def test_hand_written_file_loads():
    ds = dataset_from_bytes(save(GOOD, metadata=metadata()))
    assert [s.tolist() for s in ds.sequences] == [[1, 2, 1]]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "too short"),
        (b"PK\x03\x04 this is a zip file", "not a safetensors file"),
        (b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all", "not a safetensors file"),
        (save(GOOD), "without metadata"),
        (save(GOOD, metadata={"format": "td3-summary/1"}), "'td3-summary/1'"),
        (save(GOOD, metadata=metadata(item_ids='["a"]')), "item_ids"),
        (save(GOOD, metadata=metadata(user_ids='["u", "v"]')), "offsets"),
        (save(GOOD, metadata=metadata(item_ids='[null, "a"]')), "outside 1..1"),
        (save(GOOD, metadata=metadata(preprocessing="{oops")), "corrupt"),
        (save({"items": GOOD["items"]}, metadata=metadata()), "corrupt"),
        (save({**GOOD, "items": GOOD["items"].astype(np.float32)}, metadata=metadata()), "int64"),
    ],
)
def test_rejects_foreign_or_corrupt_bytes(data, message):
    with pytest.raises(DataError, match=message):
        dataset_from_bytes(data)


def test_rejects_truncated_file():
    data = dataset_to_bytes(build_dataset(generate_interactions(n_users=10)))
    with pytest.raises(DataError, match="corrupt"):
        dataset_from_bytes(data[:-5])
