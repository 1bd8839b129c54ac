"""Columnar ingestion: JSONL, Parquet, ISO-8601 times, headerless files named by
`columns`, errors located in late blocks, and the limits refusing bombs while
streaming (tests/test_data_readers.py covers the original formats and messages)."""

from __future__ import annotations

import gzip
import json
import resource
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from td3core.data import PreprocessConfig, build_dataset
from td3core.data.limits import LimitError, Limits, StreamGuard
from td3core.data.readers import ReaderOptions, read_interactions, read_interactions_bytes
from td3core.errors import DataError

AMAZON = {"user_col": "reviewerID", "item_col": "asin", "time_col": "unixReviewTime"}


def jsonl(records: list[dict]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in records).encode()


def parquet_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()


def error_for(data: bytes, name: str = "f.csv", **kw) -> DataError:
    with pytest.raises(DataError) as info:
        read_interactions_bytes(data, name, **kw)
    return info.value


# ------------------------------------------------------------------------------ formats
def test_jsonl_amazon_reviews_keep_only_the_named_keys():
    data = jsonl(
        [
            {"reviewerID": "A1", "asin": "B2", "overall": 5.0, "unixReviewTime": 20, "text": "x"},
            {"reviewerID": "A2", "asin": "B1", "overall": 3, "unixReviewTime": 10},
        ]
    )
    inter = read_interactions_bytes(data, "reviews.json.gz", rating_col="overall", **AMAZON)
    assert inter.fmt == "jsonl"
    assert inter.users == ["A1", "A2"] and inter.items == ["B2", "B1"]
    assert inter.timestamps.tolist() == [20.0, 10.0]
    assert inter.ratings is not None and inter.ratings.tolist() == [5.0, 3.0]


def test_jsonl_detected_by_content_and_gzip():
    data = gzip.compress(jsonl([{"user_id": 1, "item_id": 2, "timestamp": "2020-01-01"}]))
    inter = read_interactions_bytes(data, "upload")
    assert inter.fmt == "jsonl" and inter.users == ["1"] and inter.items == ["2"]
    assert inter.timestamps.tolist() == [1577836800.0]


def test_jsonl_bad_lines_are_located():
    good = {"user_id": "u", "item_id": "i", "timestamp": 1}
    e = error_for(jsonl([good, good]) + b"not json\n", "f.jsonl")
    assert e.line == 3 and "not a JSON object" in e.problem
    e = error_for(jsonl([good, {**good, "user_id": 7}]), "f.jsonl")
    assert e.line == 2 and "'user_id' is 7" in e.problem
    e = error_for(jsonl([good, {"user_id": "u", "timestamp": 1}]), "f.jsonl")
    assert e.line == 2 and "empty item id" in e.problem
    e = error_for(jsonl([{"user": "u", "item_id": "i", "timestamp": 1}]), "f.jsonl")
    assert e.line == 1 and "missing required column 'user_id'" in e.problem


def test_parquet_integer_ids_timestamp_column_and_detection_by_magic():
    table = pa.table(
        {
            "user_id": pa.array([3, 1], pa.int64()),
            "item_id": pa.array(["a", "b"]),
            "timestamp": pa.array([1_000_000, 2_000_000], pa.timestamp("ms")),
            "rating": pa.array([4, 5], pa.int8()),
        }
    )
    inter = read_interactions_bytes(parquet_bytes(table), "upload")
    assert inter.fmt == "parquet" and inter.users == ["3", "1"] and inter.items == ["a", "b"]
    assert inter.timestamps.tolist() == [1000.0, 2000.0]
    assert inter.ratings is not None and inter.ratings.tolist() == [4.0, 5.0]


def test_parquet_errors():
    table = pa.table({"user_id": ["u", ""], "item_id": ["a", "b"], "timestamp": [1, 2]})
    e = error_for(parquet_bytes(table), "f.parquet")
    assert "empty user id" in e.problem and "(row 2)" in e.problem
    e = error_for(gzip.compress(parquet_bytes(table)), "f.parquet", fmt="parquet")
    assert "without gzip" in e.problem
    e = error_for(parquet_bytes(table.drop(["item_id"])), "f.parquet")
    assert "missing required column 'item_id'" in e.problem
    e = error_for(b"PAR1" + b"\0" * 100, "f.parquet")
    assert "corrupt Parquet" in e.problem


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("2020-01-01T00:00:00Z", 1577836800.0),
        ("2020-01-01T01:00:00+01:00", 1577836800.0),
        ("2020-01-01 00:00:01", 1577836801.0),
        ("2020-01-01", 1577836800.0),
    ],
)
def test_iso_8601_timestamps(text, seconds):
    inter = read_interactions_bytes(f"user_id,item_id,timestamp\nu,i,{text}\n".encode(), "f.csv")
    assert inter.timestamps.tolist() == [seconds]


def test_iso_with_and_without_zone_in_one_file_and_time_format_rules():
    data = b"user_id,item_id,timestamp\nu,i,2020-01-01T00:00:00Z\nu,j,2020-01-01 00:00:02\n"
    assert read_interactions_bytes(data, "f.csv").timestamps.tolist() == [
        1577836800.0,
        1577836802.0,
    ]
    e = error_for(data, time_format="number")
    assert e.line == 2 and "non-numeric timestamp" in e.problem
    e = error_for(b"user_id,item_id,timestamp\nu,i,12\n", time_format="iso8601")
    assert e.line == 2 and "not an ISO-8601 timestamp '12'" in e.problem


def test_headerless_auto_with_columns_and_the_hint_names_the_option():
    data = b"1,10,5,100\n2,11,4,101\n"
    inter = read_interactions_bytes(
        data, "upload", columns=("user_id", "item_id", "rating", "timestamp")
    )
    assert inter.fmt == "csv" and inter.users == ["1", "2"]
    e = error_for(data, "upload")
    assert "columns=user_id,item_id" in e.problem and "--columns" in e.problem


def test_ml_1m_delimiter_split_across_reads(tmp_path):
    # 8 MiB blocks: "::" pairs fall on block edges somewhere in ~30 MB
    rows = [f"{u}::{u % 977}::{u % 5 + 1}::{900_000_000 + u}\n" for u in range(1_200_000)]
    path = tmp_path / "ratings.dat"
    path.write_text("".join(rows))
    inter = read_interactions(path)
    assert len(inter) == len(rows)
    assert inter.item_column[123_457].as_py() == str(123_457 % 977)
    assert inter.ratings is not None and inter.ratings[-1] == (1_199_999 % 5 + 1)


def test_an_error_after_many_blocks_names_its_line(tmp_path):
    n = 2_000_000
    lines = ["user_id,item_id,timestamp\n", *(f"u{i},i{i % 50},{i}\n" for i in range(n))]
    lines[n - 5] = "u,i,yesterday\n"
    path = tmp_path / "big.csv"
    path.write_text("".join(lines))
    with pytest.raises(DataError) as info:
        read_interactions(path)
    assert info.value.line == n - 4 and "non-numeric timestamp 'yesterday'" in info.value.problem


def test_multi_member_gzip_reads_every_member():
    data = gzip.compress(b"user_id,item_id,timestamp\nu,a,1\n") + gzip.compress(b"u,b,2\n")
    assert read_interactions_bytes(data, "f.csv").items == ["a", "b"]


def test_interactions_hold_arrow_columns_and_preprocessing_keeps_no_path(tmp_path):
    path = tmp_path / "deep" / "x.csv"
    path.parent.mkdir()
    path.write_text(
        "user_id,item_id,timestamp\n"
        + "".join(f"{u},{i},{t}\n" for u in "ab" for t, i in enumerate("xyz"))
    )
    inter = read_interactions(path)
    assert isinstance(inter.user_column, pa.ChunkedArray)
    ds = build_dataset(inter, PreprocessConfig(kcore="none"))
    assert ds.preprocessing["source"] == "x.csv"
    assert str(tmp_path) not in json.dumps(ds.preprocessing)


# ------------------------------------------------------------------------------- limits
def test_gzip_bomb_without_newlines_is_refused_at_the_line_limit_quickly():
    bomb = gzip.compress(b"\0" * (64 << 20), 9)  # 64 KiB expanding to 64 MiB
    limits = Limits(max_line_bytes=1 << 16, max_decompressed_bytes=1 << 30)
    start = time.perf_counter()
    with pytest.raises(LimitError) as info:
        read_interactions_bytes(bomb, "bomb.csv", limits=limits)
    assert info.value.limit == "max_line_bytes" and "longer than 65536" in info.value.problem
    assert time.perf_counter() - start < 2


def test_line_bomb_is_refused_at_the_row_limit_with_bounded_memory():
    bomb = gzip.compress(b"user_id,item_id,timestamp\n" + b"1,1,1\n" * 20_000_000, 9)
    assert len(bomb) < 1 << 20  # about 0.2 MB expanding to 120 MB
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(LimitError) as info:
        read_interactions_bytes(bomb, "lines.csv", limits=Limits(max_rows=100_000))
    assert info.value.limit == "max_rows" and "more than 100000 rows" in info.value.problem
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < 100


def test_decompressed_size_and_distinct_ids_limits():
    rows = b"user_id,item_id,timestamp\n" + b"".join(b"u%d,i%d,1\n" % (i, i) for i in range(5000))
    with pytest.raises(LimitError) as info:
        read_interactions_bytes(
            gzip.compress(rows), "f.csv", limits=Limits(max_decompressed_bytes=10_000)
        )
    assert info.value.limit == "max_decompressed_bytes"
    with pytest.raises(LimitError) as info:
        read_interactions_bytes(rows, "f.csv", limits=Limits(max_distinct_ids=1000))
    assert info.value.limit == "max_distinct_ids"
    assert (
        len(read_interactions_bytes(rows, "f.csv", limits=Limits(max_distinct_ids=10_000))) == 5000
    )


def test_parquet_limits_come_from_its_metadata():
    table = pa.table({"user_id": ["u"] * 50, "item_id": ["i"] * 50, "timestamp": list(range(50))})
    with pytest.raises(LimitError) as info:
        read_interactions_bytes(parquet_bytes(table), "f.parquet", limits=Limits(max_rows=10))
    assert info.value.limit == "max_rows"


def test_stream_guard_pushed_in_small_pieces_counts_like_the_reader():
    data = b"user_id,item_id\n" + b"u,i\n" * 1000
    packed = gzip.compress(data)
    guard = StreamGuard(Limits(), name="x")
    out = b"".join(
        piece for i in range(0, len(packed), 7) for piece in guard.feed(packed[i : i + 7])
    )
    out += b"".join(guard.finish())
    assert out == data and guard.compressed and guard.lines == 1001
    assert guard.decompressed == len(data)
    truncated = StreamGuard(Limits(), name="x")
    list(truncated.feed(packed[:-20]))
    with pytest.raises(DataError, match="truncated"):
        list(truncated.finish())


def test_reader_options_reject_bad_values():
    with pytest.raises(ValueError):
        ReaderOptions(time_format="julian")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        ReaderOptions(delimiter="")
    assert np.isclose(
        read_interactions_bytes(b"user_id\titem_id\ttimestamp\nu\ti\t1.5\n", "f.tsv").timestamps[0],
        1.5,
    )


# ------------------------------------------------------------------- deterministic bytes
def test_safetensors_bytes_load_back_and_depend_only_on_content():
    import subprocess
    import sys

    from safetensors.numpy import load

    from td3core.serialization import read_metadata, safetensors_bytes

    tensors = {"b": np.arange(5, dtype=np.int64), "a": np.ones((2, 3), dtype=np.float32)}
    blob = safetensors_bytes(tensors, {"z": "1", "format": "x"})
    loaded = load(blob)
    assert np.array_equal(loaded["b"], tensors["b"]) and loaded["a"].shape == (2, 3)
    assert read_metadata(blob) == {"format": "x", "z": "1"}
    assert blob == safetensors_bytes(dict(reversed(tensors.items())), {"format": "x", "z": "1"})
    with pytest.raises(TypeError):
        safetensors_bytes({"c": np.array(["x"])}, {})
    # another process (another hash seed) writes the same dataset bytes
    code = (
        "import sys, hashlib\n"
        "from td3core.data import build_dataset, dataset_to_bytes, generate_interactions\n"
        "ds = build_dataset(generate_interactions(40, 30, 10, 0))\n"
        "print(hashlib.sha256(dataset_to_bytes(ds)).hexdigest())\n"
    )
    digests = {
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout
        for _ in range(2)
    }
    assert len(digests) == 1


def test_jsonl_numbers_may_mix_ints_and_floats():
    data = jsonl(
        [
            {"user_id": "a", "item_id": "x", "timestamp": 1, "rating": 5},
            {"user_id": "b", "item_id": "y", "timestamp": 2.5, "rating": 4.5},
        ]
    )
    inter = read_interactions_bytes(data, "f.jsonl")
    assert inter.timestamps.tolist() == [1.0, 2.5]
    assert inter.ratings is not None and inter.ratings.tolist() == [5.0, 4.5]


def test_distinct_ids_counted_exactly_across_many_blocks(tmp_path):
    # ~30 MB: several 8 MiB blocks, the same 2000 ids repeating in every block
    path = tmp_path / "many.csv"
    with path.open("w") as f:
        f.write("user_id,item_id,timestamp\n")
        for _ in range(40):
            f.write("".join(f"user{i % 1000},item{i % 1000},{i}\n" for i in range(40_000)))
    inter = read_interactions(path, limits=Limits(max_distinct_ids=2000))
    assert len(inter) == 1_600_000
    with pytest.raises(LimitError):
        read_interactions(path, limits=Limits(max_distinct_ids=1999))


@pytest.mark.parametrize(
    ("items", "order"),
    [
        (["10", "2", "-3"], ["-3", "2", "10"]),  # integers: numeric order, the fast path
        (["10", "5", "05"], ["5", "05", "10"]),  # one number written two ways: 2 items
        (["0", "-0", "7"], ["0", "-0", "7"]),
        (["b", "10", "2"], ["10", "2", "b"]),  # not all integers: string order
    ],
)
def test_item_ids_stay_distinct_strings_in_sorted_order(items, order):
    rows = [("u", item, t) for t, item in enumerate(items)]
    inter = read_interactions_bytes(
        ("user_id,item_id,timestamp\n" + "".join(f"{u},{i},{t}\n" for u, i, t in rows)).encode(),
        "f.csv",
    )
    ds = build_dataset(inter, PreprocessConfig(kcore="none"))
    assert ds.item_ids[1:] == order
    assert [ds.item_ids[i] for i in ds.sequences[0]] == items
