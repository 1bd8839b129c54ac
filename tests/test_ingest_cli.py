"""The CLI names columns: --user-col/--item-col/--time-col/--rating-col, --delimiter,
--columns with --no-header, through the reader's one options model."""

from __future__ import annotations

import pytest

from td3.cli import build_parser
from td3.library_commands import _load_dataset


def load(path, *options: str):
    args = build_parser().parse_args(
        ["baseline", str(path), "--method", "full", "--users", "2", "--length", "3", "--quiet"]
        + ["--kcore", "none", *options]
    )
    return _load_dataset(args)


def test_headerless_file_named_by_columns_in_file_order(tmp_path):
    path = tmp_path / "data.txt"
    path.write_text("".join(f"i{i}|u{u}|{9 - i}\n" for u in range(3) for i in range(4)))
    ds = load(
        path,
        "--columns",
        "item,user,score",
        "--no-header",
        "--delimiter",
        "|",
        "--user-col",
        "user",
        "--item-col",
        "item",
        "--time-col",
        "",
    )
    assert ds.user_ids == ["u0", "u1", "u2"]
    assert [ds.item_ids[i] for i in ds.sequences[0]] == ["i0", "i1", "i2", "i3"]


def test_named_time_and_rating_columns(tmp_path):
    path = tmp_path / "data.csv"
    rows = [f"u{u},i{i},{100 - i},{i % 5}" for u in range(2) for i in range(4)]
    path.write_text("who,what,when,stars\n" + "\n".join(rows) + "\n")
    ds = load(
        path,
        "--user-col",
        "who",
        "--item-col",
        "what",
        "--time-col",
        "when",
        "--rating-col",
        "stars",
    )
    assert [ds.item_ids[i] for i in ds.sequences[0]] == ["i3", "i2", "i1", "i0"]


def test_a_bad_mapping_is_a_one_line_error(tmp_path, capsys):
    from td3.cli import main

    path = tmp_path / "data.csv"
    path.write_text("user_id,item_id,timestamp\nu,i,1\n")
    assert (
        main(
            [
                "baseline",
                str(path),
                "--method",
                "full",
                "--users",
                "1",
                "--length",
                "2",
                "--user-col",
                "who",
                "--quiet",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "missing required column 'who'" in err and "Traceback" not in err
    with pytest.raises(SystemExit):
        build_parser().parse_args(["baseline", str(path), "--format", "xlsx"])
