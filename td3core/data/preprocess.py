"""Interactions -> SequenceDataset: rating filter, dedup, k-core, chronological sequences.

Steps, in this order: keep ratings >= min_rating; sort each user's rows by time
(stable: equal timestamps keep file order); drop repeated (user, item) pairs per
`dedup` ("keep-first" keeps the earliest, "keep-last" the latest); k-core filter;
drop users left with < 3 interactions (leave-one-out needs train, valid and test).

Internal ids are assigned in sorted order of the original ids (numerically when
every id is an integer, else as strings), so they do not depend on row order:
items get 1..n_items (0 is padding), users 0..n_users-1.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Field

from td3core.data.types import Interactions, SequenceDataset
from td3core.errors import DataError

MIN_SEQUENCE = 3  # one train, one valid and one test target need >= 3 items

Dedup = Literal["none", "keep-first", "keep-last"]
KCore = Literal["none", "one-pass", "iterative"]


class PreprocessConfig(BaseModel):
    """How raw interactions become sequences. Defaults are the TD3 authors' filter."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    dedup: Dedup = "none"
    kcore: KCore = Field(
        "one-pass",
        description="'one-pass': users and items both counted on the unfiltered "
        "data (the TD3 authors' filter); 'iterative': repeat until every count holds",
    )
    min_user: int = Field(5, ge=1)
    min_item: int = Field(5, ge=1)
    min_rating: float | None = None


def build_dataset(inter: Interactions, config: PreprocessConfig | None = None) -> SequenceDataset:
    """Filter and group `inter` into per-user chronological item sequences."""
    config = config or PreprocessConfig()
    n_raw = len(inter)
    if n_raw == 0:
        raise DataError("no interactions to build a dataset from", file=inter.source or None)
    user_codes, user_names = _factorize(inter.user_column)
    item_codes, item_names = _factorize(inter.item_column)
    times = np.asarray(inter.timestamps, dtype=np.float64)
    if times.shape != (n_raw,) or len(inter.item_column) != n_raw:
        raise DataError("users, items and timestamps differ in length", file=inter.source or None)

    keep = np.ones(n_raw, dtype=bool)
    if config.min_rating is not None:
        if inter.ratings is None:
            raise DataError(
                "min_rating is set but the data has no rating column", file=inter.source or None
            )
        keep &= np.asarray(inter.ratings) >= config.min_rating
    dropped_by_rating = int(n_raw - keep.sum())

    # Chronological per user, ties in file order (Arrow's sort is stable and much
    # faster than np.lexsort). User codes follow the sorted original ids, so this is
    # also the final order of the users; from here on only masks keep or drop rows.
    rows = pc.sort_indices(
        pa.table({"user": user_codes, "time": times}),
        sort_keys=[("user", "ascending"), ("time", "ascending")],
    ).to_numpy()
    rows = rows[keep[rows]]
    users, items = user_codes[rows], item_codes[rows]
    del rows

    before = len(users)
    if config.dedup != "none":
        pairs = users * len(item_names) + items
        if config.dedup == "keep-first":
            _, first = np.unique(pairs, return_index=True)
        else:  # keep-last: the first occurrence in reversed order
            _, first = np.unique(pairs[::-1], return_index=True)
            first = len(pairs) - 1 - first
        chosen = np.sort(first)
        users, items = users[chosen], items[chosen]
    dropped_duplicates = before - len(users)

    before = len(users)
    rounds = 0
    if config.kcore != "none":
        while True:
            rounds += 1
            item_count = np.bincount(items, minlength=len(item_names))
            user_count = np.bincount(users, minlength=len(user_names))
            ok = (item_count[items] >= config.min_item) & (user_count[users] >= config.min_user)
            users, items = users[ok], items[ok]
            if config.kcore == "one-pass" or ok.all():
                break
    dropped_by_kcore = before - len(users)
    where = inter.source or None
    if len(users) == 0:
        raise DataError(
            f"no interactions left after filtering (min_rating={config.min_rating}, "
            f"kcore={config.kcore}, min_user={config.min_user}, min_item={config.min_item}); "
            "relax the filter",
            file=where,
        )

    user_count = np.bincount(users, minlength=len(user_names))
    short = user_count[users] < MIN_SEQUENCE
    dropped_short_users = int(((user_count > 0) & (user_count < MIN_SEQUENCE)).sum())
    dropped_short_interactions = int(short.sum())
    users, items = users[~short], items[~short]
    if len(users) == 0:
        raise DataError(
            f"every user has fewer than {MIN_SEQUENCE} interactions after filtering; "
            "leave-one-out needs at least 3 per user",
            file=where,
        )

    # Compact ids over what survived (in code order, which is the original ids' order).
    user_count = np.bincount(users, minlength=len(user_names))
    kept_users = np.flatnonzero(user_count)
    kept_items = np.flatnonzero(np.bincount(items, minlength=len(item_names)))
    new_item = np.zeros(len(item_names), dtype=np.int64)
    new_item[kept_items] = np.arange(1, len(kept_items) + 1)
    flat = new_item[items]
    ends = np.cumsum(user_count[kept_users]).tolist()
    sequences = [flat[a:b].copy() for a, b in zip([0, *ends[:-1]], ends, strict=True)]

    return SequenceDataset(
        item_ids=[None, *item_names.take(kept_items).to_pylist()],
        user_ids=user_names.take(kept_users).to_pylist(),
        sequences=sequences,
        source_sha256=inter.sha256,
        preprocessing={
            **config.model_dump(),
            # the file's name only: a path says where it sat (a server's temporary
            # folder, a home directory), not what it holds, and would make the same
            # data give different datasets and summaries
            "source": Path(inter.source).name,
            "format": inter.fmt,
            "id_order": "sorted original ids (numeric when all are integers)",
            "raw_interactions": n_raw,
            "dropped_by_rating": dropped_by_rating,
            "dropped_duplicates": dropped_duplicates,
            "dropped_by_kcore": dropped_by_kcore,
            "kcore_rounds": rounds,
            "dropped_short_users": dropped_short_users,
            "dropped_short_user_interactions": dropped_short_interactions,
            "interactions": int(len(flat)),
            "users": len(kept_users),
            "items": len(kept_items),
        },
    )


def _factorize(values: pa.ChunkedArray) -> tuple[np.ndarray, pa.Array]:
    """Codes (int64) and the distinct values, codes numbered in sorted order of the
    values (see `_sort_ids`), so internal ids never depend on row order."""
    # one chunk (large_string: no 2 GiB limit): encoding chunk by chunk rebuilds the
    # dictionary for each chunk
    strings = values.cast(pa.large_string()).combine_chunks()
    numbers = _canonical_integers(strings)
    # integer ids (the usual case) hash as int64 in a fraction of the time strings take
    encoded = pc.dictionary_encode(strings if numbers is None else numbers)
    order = _sort_ids(encoded.dictionary)
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    codes = rank[encoded.indices.to_numpy(zero_copy_only=False)]
    return codes, encoded.dictionary.take(order).cast(pa.string())


def _canonical_integers(strings: pa.Array) -> pa.Array | None:
    """The ids as int64 when each is an integer written the one canonical way (so two
    distinct strings never become one number: no "+", no leading zeros); else None."""
    try:
        numbers = strings.cast(pa.int64())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None
    # "+1", "01" and "-0" / "-01" would each share a number with another string
    padded = pc.and_(pc.starts_with(strings, "0"), pc.greater(pc.binary_length(strings), 1))
    for odd in (pc.starts_with(strings, "+"), padded, pc.starts_with(strings, "-0")):
        if pc.any(odd).as_py():
            return None
    return numbers


def _sort_ids(ids: pa.Array) -> np.ndarray:
    """Argsort of ids: numerically when all are integers ("2" < "10"), else as strings
    (Arrow compares UTF-8 bytes, which orders like Python's str)."""
    try:
        numbers = ids.cast(pa.int64()).to_numpy(zero_copy_only=False)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OverflowError):
        return pc.array_sort_indices(ids).to_numpy(zero_copy_only=False).astype(np.int64)
    return np.argsort(numbers, kind="stable")
