"""Readers: every format (plain and gzip) and a precise DataError for each bad input."""

from __future__ import annotations

import gzip
import hashlib
from pathlib import Path

import numpy as np
import pytest

from td3core.data.readers import read_interactions, read_interactions_bytes
from td3core.errors import DataError

ROWS = [("u1", "i1", 5.0, 10.0), ("u1", "i2", 3.0, 20.0), ("u2", "i1", 4.0, 15.0)]


def write(tmp_path: Path, name: str, content: str | bytes, gz: bool = False) -> Path:
    data = content.encode() if isinstance(content, str) else content
    path = tmp_path / name
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def check_rows(inter, with_rating: bool = True) -> None:
    assert inter.users == [r[0] for r in ROWS]
    assert inter.items == [r[1] for r in ROWS]
    assert inter.timestamps.dtype == np.float64
    assert inter.timestamps.tolist() == [r[3] for r in ROWS]
    if with_rating:
        assert inter.ratings is not None and inter.ratings.tolist() == [r[2] for r in ROWS]
    else:
        assert inter.ratings is None


def render(fmt: str) -> tuple[str, str]:
    """(file name, text) of ROWS in the given format."""
    if fmt == "recbole":
        head = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
        return "x.inter", head + "".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in ROWS)
    if fmt == "csv":
        return "x.csv", "timestamp,item_id,user_id,rating\n" + "".join(
            f"{t},{i},{u},{r}\n" for u, i, r, t in ROWS
        )
    if fmt == "tsv":
        return "x.tsv", "user_id\titem_id\trating\ttimestamp\n" + "".join(
            f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in ROWS
        )
    if fmt == "ml-100k":
        return "u.data", "".join(f"{u}\t{i}\t{int(r)}\t{int(t)}\n" for u, i, r, t in ROWS)
    if fmt == "ml-1m":
        return "ratings.dat", "".join(f"{u}::{i}::{int(r)}::{int(t)}\n" for u, i, r, t in ROWS)
    if fmt == "amazon":
        return "mag.csv", "".join(f"{i},{u},{r},{int(t)}\n" for u, i, r, t in ROWS)
    raise AssertionError(fmt)


FORMATS = ["recbole", "csv", "tsv", "ml-100k", "ml-1m", "amazon"]


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_plain_and_gzip(tmp_path, fmt, gz):
    name, text = render(fmt)
    path = write(tmp_path, name + (".gz" if gz else ""), text, gz=gz)
    inter = read_interactions(path, fmt=fmt)
    check_rows(inter)
    assert inter.fmt == fmt
    assert inter.source == str(path)
    assert inter.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("fmt", ["recbole", "csv", "tsv", "ml-100k", "ml-1m"])
def test_auto_detects_format_by_name(tmp_path, fmt):
    name, text = render(fmt)
    inter = read_interactions(write(tmp_path, name, text))
    assert inter.fmt == fmt
    check_rows(inter)


@pytest.mark.parametrize(
    ("fmt", "name"),
    [("recbole", "data.txt"), ("ml-1m", "data.txt"), ("csv", "data.txt"), ("tsv", "data")],
)
def test_auto_detects_format_by_content(tmp_path, fmt, name):
    _, text = render(fmt)
    inter = read_interactions(write(tmp_path, name, text))
    assert inter.fmt == fmt
    check_rows(inter)


def test_auto_detects_numeric_tab_separated_as_ml_100k():
    inter = read_interactions_bytes(b"196\t242\t3\t881250949\n186\t302\t3\t891717742\n", "x")
    assert inter.fmt == "ml-100k"
    assert inter.users == ["196", "186"] and inter.items == ["242", "302"]
    assert inter.ratings is not None and inter.ratings.tolist() == [3.0, 3.0]


def test_gzip_detected_by_magic_bytes_not_name(tmp_path):
    _, text = render("ml-1m")
    path = write(tmp_path, "ratings.dat", text, gz=True)  # compressed, no .gz suffix
    check_rows(read_interactions(path))


def test_bytes_variant_matches_file(tmp_path):
    name, text = render("tsv")
    data = gzip.compress(text.encode())
    from_bytes = read_interactions_bytes(data, name + ".gz")
    from_file = read_interactions(write(tmp_path, name + ".gz", data))
    check_rows(from_bytes)
    assert from_bytes.sha256 == from_file.sha256 == hashlib.sha256(data).hexdigest()
    assert from_bytes.source == "x.tsv.gz"


def test_csv_custom_columns_optional_rating_and_quotes():
    text = 'uid;when;iid\n"a;1";7;x\nb;3;"y"\n'
    inter = read_interactions_bytes(
        text.encode(), "f.csv", delimiter=";", user_col="uid", item_col="iid", time_col="when"
    )
    assert inter.users == ["a;1", "b"] and inter.items == ["x", "y"]
    assert inter.timestamps.tolist() == [7.0, 3.0]
    assert inter.ratings is None


def test_explicit_rating_col_and_no_time_col_uses_file_order():
    text = "user_id,item_id,stars\nu,a,4\nu,b,2\n"
    inter = read_interactions_bytes(text.encode(), "f.csv", time_col=None, rating_col="stars")
    assert inter.timestamps.tolist() == [0.0, 1.0]
    assert inter.ratings is not None and inter.ratings.tolist() == [4.0, 2.0]


def test_headerless_csv_with_given_columns():
    text = "i1,u1,5,10\ni2,u1,3,20\ni1,u2,4,15\n"
    inter = read_interactions_bytes(
        text.encode(), "f.csv", fmt="csv", columns=("item_id", "user_id", "rating", "timestamp")
    )
    check_rows(inter)


def test_bom_crlf_and_blank_lines_are_tolerated():
    text = (
        "\ufeffuser_id,item_id,rating,timestamp\r\n\r\n"
        + "".join(f"{u},{i},{r},{t}\r\n" for u, i, r, t in ROWS)
        + "\n\n"
    )
    check_rows(read_interactions_bytes(text.encode(), "f.csv"))


def error_for(content: str | bytes, name: str = "f.csv", **kw) -> DataError:
    data = content.encode() if isinstance(content, str) else content
    with pytest.raises(DataError) as info:
        read_interactions_bytes(data, name, **kw)
    return info.value


HEAD = "user_id,item_id,rating,timestamp\n"


def test_empty_file():
    for content in ("", "\n  \n"):
        e = error_for(content)
        assert "empty" in e.problem and e.file == "f.csv"
    assert "empty" in error_for(gzip.compress(b"")).problem


def test_header_without_rows():
    assert "no interactions" in error_for(HEAD).problem


def test_missing_column_is_named_and_found_columns_listed():
    e = error_for("user_id,item,timestamp\nu,i,1\n")
    assert "'item_id'" in e.problem
    assert "'user_id', 'item', 'timestamp'" in e.problem
    assert e.line == 1


def test_missing_timestamp_mentions_file_order_option():
    e = error_for("user_id,item_id\nu,i\n")
    assert "'timestamp'" in e.problem and "time_col=None" in e.problem


def test_missing_explicit_rating_column():
    e = error_for("user_id,item_id,timestamp\nu,i,1\n", rating_col="stars")
    assert "'stars'" in e.problem


def test_wrong_number_of_fields_names_the_line():
    e = error_for(HEAD + "u,i,5,1\nu,i,5\n")
    assert e.line == 3
    assert "expected 4" in e.problem and "found 3" in e.problem
    assert str(e).startswith("f.csv:3: ")


def test_wrong_number_of_fields_headerless():
    e = error_for("1\t2\t3\t4\n1\t2\t3\t4\t5\n", "u.data")
    assert e.line == 2 and "found 5" in e.problem


def test_non_numeric_timestamp_is_quoted():
    e = error_for(HEAD + "u,i,5,1\n\nu,i,5,yesterday\n")
    assert e.line == 4
    assert "non-numeric timestamp 'yesterday'" in e.problem


def test_non_finite_timestamp():
    assert "non-finite timestamp 'nan'" in error_for(HEAD + "u,i,5,nan\n").problem


def test_non_numeric_rating():
    e = error_for("1::2::five::3\n", "ratings.dat")
    assert e.line == 1 and "non-numeric rating 'five'" in e.problem


@pytest.mark.parametrize(
    ("row", "what"), [(" ,i,5,1", "empty user id"), ("u,,5,1", "empty item id")]
)
def test_empty_ids(row, what):
    e = error_for(HEAD + "u,i,5,1\n" + row + "\n")
    assert e.line == 3 and what in e.problem


def test_undecodable_bytes():
    e = error_for(HEAD.encode() + b"u,i,5,1\nu\xff\xfe,i,5,2\n")
    assert e.line == 3 and "undecodable" in e.problem and "UTF-8" in e.problem


def test_corrupt_gzip():
    data = gzip.compress((HEAD + "u,i,5,1\n" * 1000).encode())
    e = error_for(data[: len(data) // 2])
    assert "gzip" in e.problem
    e = error_for(data[:10] + b"\x00" * 50)
    assert "gzip" in e.problem


def test_missing_file_and_unknown_format(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        read_interactions(tmp_path / "nope.csv")
    with pytest.raises(DataError, match="invalid reader options: fmt"):
        read_interactions_bytes(b"x", fmt="xlsx")  # type: ignore[arg-type]


def test_auto_refuses_a_headerless_file_it_cannot_place():
    e = error_for("1,2,3\n")
    assert "not a header" in e.problem and "columns=" in e.problem
