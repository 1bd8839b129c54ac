"""build_dataset: dedup, k-core variants, short users, id remapping, stable time order."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydantic
import pytest

from td3core.data.preprocess import PreprocessConfig, build_dataset
from td3core.data.readers import read_interactions
from td3core.data.types import Interactions
from td3core.errors import DataError

NO_FILTER = PreprocessConfig(kcore="none")


def make(rows: list[tuple], source: str = "t.csv") -> Interactions:
    """rows: (user, item, time) or (user, item, time, rating)."""
    return Interactions(
        users=[str(r[0]) for r in rows],
        items=[str(r[1]) for r in rows],
        timestamps=np.array([r[2] for r in rows], dtype=np.float64),
        ratings=np.array([r[3] for r in rows], dtype=np.float64) if len(rows[0]) > 3 else None,
        source=source,
        sha256="ab" * 32,
        fmt="csv",
    )


def originals(ds, u: int) -> list[str | None]:
    return [ds.item_ids[i] for i in ds.sequences[u]]


def test_chronological_order_and_stable_ties():
    rows = [("u", "c", 5), ("u", "a", 1), ("u", "b", 5), ("u", "d", 3)]
    ds = build_dataset(make(rows), NO_FILTER)
    assert originals(ds, 0) == ["a", "d", "c", "b"]  # c before b: equal times keep file order


def test_id_remapping_keeps_originals_and_padding():
    rows = [
        ("u10", "10", 1),
        ("u10", "2", 2),
        ("u10", "33", 3),
        ("u9", "2", 1),
        ("u9", "10", 2),
        ("u9", "2", 3),
    ]
    ds = build_dataset(make(rows), NO_FILTER)
    assert ds.item_ids == [None, "2", "10", "33"]  # numeric order, 0 = padding
    assert ds.user_ids == ["u10", "u9"]  # not all integers: string order
    assert ds.n_items == 3 and ds.n_users == 2
    assert [s.tolist() for s in ds.sequences] == [[2, 1, 3], [1, 2, 1]]
    assert all(s.dtype == np.int64 for s in ds.sequences)
    assert originals(ds, 1) == ["2", "10", "2"]


def test_ids_do_not_depend_on_row_order():
    rows = [(u, i, t) for u in "abc" for t, i in enumerate("xyzw")]
    a = build_dataset(make(rows), NO_FILTER)
    b = build_dataset(make(rows[::-1]), NO_FILTER)
    assert a.item_ids == b.item_ids and a.user_ids == b.user_ids
    assert [s.tolist() for s in a.sequences] == [s.tolist() for s in b.sequences]


DUP_ROWS = [("u", "a", 3), ("u", "b", 1), ("u", "a", 2), ("u", "c", 4), ("u", "d", 5)]


@pytest.mark.parametrize(
    ("dedup", "expected", "dropped"),
    [
        ("none", ["b", "a", "a", "c", "d"], 0),
        ("keep-first", ["b", "a", "c", "d"], 1),  # the earlier "a" (time 2) stays
        ("keep-last", ["b", "a", "c", "d"], 1),
    ],
)
def test_dedup_policies(dedup, expected, dropped):
    ds = build_dataset(make(DUP_ROWS), PreprocessConfig(kcore="none", dedup=dedup))
    assert originals(ds, 0) == expected
    assert ds.preprocessing["dropped_duplicates"] == dropped


def test_dedup_keep_first_vs_keep_last_positions():
    rows = [("u", "a", 1), ("u", "b", 2), ("u", "a", 3), ("u", "c", 4)]
    first = build_dataset(make(rows), PreprocessConfig(kcore="none", dedup="keep-first"))
    last = build_dataset(make(rows), PreprocessConfig(kcore="none", dedup="keep-last"))
    assert originals(first, 0) == ["a", "b", "c"]
    assert originals(last, 0) == ["b", "a", "c"]


# u3's only rare item e goes (count 1 < 2); u3 then has 3 < 4 interactions, which
# only the iterative filter notices.
KCORE_ROWS = [
    (u, i, t)
    for u, items in [("u1", "abcd"), ("u2", "abcd"), ("u3", "abce")]
    for t, i in enumerate(items)
]


def test_one_pass_and_iterative_kcore_differ():
    one = build_dataset(make(KCORE_ROWS), PreprocessConfig(min_user=4, min_item=2))
    it = build_dataset(
        make(KCORE_ROWS), PreprocessConfig(min_user=4, min_item=2, kcore="iterative")
    )
    assert one.user_ids == ["u1", "u2", "u3"] and originals(one, 2) == ["a", "b", "c"]
    assert one.stats().interactions == 11 and one.preprocessing["kcore_rounds"] == 1
    assert it.user_ids == ["u1", "u2"] and it.stats().interactions == 8
    assert it.preprocessing["kcore_rounds"] == 3  # drop e; drop u3; stable
    assert one.item_ids == it.item_ids == [None, "a", "b", "c", "d"]


def test_short_users_are_dropped_and_counted():
    rows = [("long", i, t) for t, i in enumerate("abc")] + [("short", "a", 0), ("short", "b", 1)]
    ds = build_dataset(make(rows), NO_FILTER)
    assert ds.user_ids == ["long"]
    assert ds.preprocessing["dropped_short_users"] == 1
    assert ds.preprocessing["dropped_short_user_interactions"] == 2


def test_every_user_short_raises():
    with pytest.raises(DataError, match="every user has fewer than 3 interactions") as info:
        build_dataset(make([("u", "a", 0), ("u", "b", 1), ("v", "a", 0)]), NO_FILTER)
    assert info.value.file == "t.csv"


def test_filter_leaving_nothing_raises():
    with pytest.raises(DataError, match="no interactions left after filtering") as info:
        build_dataset(make(KCORE_ROWS), PreprocessConfig(min_user=10))
    assert info.value.file == "t.csv" and "min_user=10" in str(info.value)


def test_min_rating():
    rows = [("u", i, t, r) for t, (i, r) in enumerate(zip("abcde", [5, 1, 4, 3, 2], strict=True))]
    ds = build_dataset(make(rows), PreprocessConfig(kcore="none", min_rating=3))
    assert originals(ds, 0) == ["a", "c", "d"]
    assert ds.preprocessing["dropped_by_rating"] == 2
    with pytest.raises(DataError, match="no rating column"):
        build_dataset(make(KCORE_ROWS), PreprocessConfig(min_rating=3))


def test_preprocessing_record_and_source_hash():
    ds = build_dataset(make(KCORE_ROWS), PreprocessConfig(min_user=4, min_item=2))
    p = ds.preprocessing
    assert (p["dedup"], p["kcore"], p["min_user"], p["min_item"], p["min_rating"]) == (
        "none",
        "one-pass",
        4,
        2,
        None,
    )
    assert p["raw_interactions"] == 12 and p["dropped_by_kcore"] == 1
    assert (p["interactions"], p["users"], p["items"]) == (11, 3, 4)
    assert p["source"] == "t.csv"
    assert ds.source_sha256 == "ab" * 32


def test_config_is_strict_and_frozen():
    with pytest.raises(pydantic.ValidationError):
        PreprocessConfig(kcore="twice")  # type: ignore[arg-type]
    with pytest.raises(pydantic.ValidationError):
        PreprocessConfig(min_users=3)  # type: ignore[call-arg]
    with pytest.raises(pydantic.ValidationError):
        PreprocessConfig().min_user = 3  # type: ignore[misc]


# Checks against the real (licensed) data: only where ../shared/data exists beside the repo.
DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
real_data = pytest.mark.skipif(not DATA.is_dir(), reason="no ../shared/data")


@real_data
@pytest.mark.parametrize(
    ("path", "fmt", "expected"),
    [
        ("ml-100k/u.data", "auto", (99_287, 943, 1_349)),
        ("ml-1m/ml-1m.5core.tsv.gz", "auto", (999_611, 6_040, 3_416)),
        ("magazine/Magazine_Subscriptions.csv", "amazon", (4_691, 665, 848)),
    ],
)
def test_real_datasets_match_published_counts(path, fmt, expected):
    ds = build_dataset(read_interactions(DATA / path, fmt=fmt), PreprocessConfig())
    s = ds.stats()
    assert (s.interactions, s.users, s.items) == expected
