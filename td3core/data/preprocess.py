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

from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from td3core.data.types import Interactions, SequenceDataset
from td3core.errors import DataError

MIN_SEQUENCE = 3  # one train, one valid and one test target need >= 3 items


class PreprocessConfig(BaseModel):
    """How raw interactions become sequences. Defaults are the TD3 authors' filter."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    dedup: Literal["none", "keep-first", "keep-last"] = "none"
    kcore: Literal["none", "one-pass", "iterative"] = Field(
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
    user_codes, user_names = _factorize(inter.users)
    item_codes, item_names = _factorize(inter.items)
    times = np.asarray(inter.timestamps, dtype=np.float64)
    if times.shape != (n_raw,) or len(inter.items) != n_raw:
        raise DataError("users, items and timestamps differ in length", file=inter.source or None)

    keep = np.ones(n_raw, dtype=bool)
    if config.min_rating is not None:
        if inter.ratings is None:
            raise DataError(
                "min_rating is set but the data has no rating column", file=inter.source or None
            )
        keep &= np.asarray(inter.ratings) >= config.min_rating
    dropped_by_rating = int(n_raw - keep.sum())

    # Chronological per user; the row index as last key keeps ties in file order.
    rows = np.lexsort((np.arange(n_raw), times, user_codes))
    rows = rows[keep[rows]]

    before = len(rows)
    if config.dedup != "none":
        pairs = user_codes[rows] * len(item_names) + item_codes[rows]
        if config.dedup == "keep-first":
            _, first = np.unique(pairs, return_index=True)
        else:  # keep-last: the first occurrence in reversed order
            _, first = np.unique(pairs[::-1], return_index=True)
            first = len(rows) - 1 - first
        rows = rows[np.sort(first)]
    dropped_duplicates = before - len(rows)

    before = len(rows)
    rounds = 0
    if config.kcore != "none":
        while True:
            rounds += 1
            item_count = np.bincount(item_codes[rows], minlength=len(item_names))
            user_count = np.bincount(user_codes[rows], minlength=len(user_names))
            ok = (item_count[item_codes[rows]] >= config.min_item) & (
                user_count[user_codes[rows]] >= config.min_user
            )
            rows = rows[ok]
            if config.kcore == "one-pass" or ok.all():
                break
    dropped_by_kcore = before - len(rows)
    where = inter.source or None
    if len(rows) == 0:
        raise DataError(
            f"no interactions left after filtering (min_rating={config.min_rating}, "
            f"kcore={config.kcore}, min_user={config.min_user}, min_item={config.min_item}); "
            "relax the filter",
            file=where,
        )

    user_count = np.bincount(user_codes[rows], minlength=len(user_names))
    short = user_count[user_codes[rows]] < MIN_SEQUENCE
    dropped_short_users = int(((user_count > 0) & (user_count < MIN_SEQUENCE)).sum())
    dropped_short_interactions = int(short.sum())
    rows = rows[~short]
    if len(rows) == 0:
        raise DataError(
            f"every user has fewer than {MIN_SEQUENCE} interactions after filtering; "
            "leave-one-out needs at least 3 per user",
            file=where,
        )

    # Compact ids over what survived, in sorted order of the original ids.
    kept_users = np.unique(user_codes[rows])
    kept_items = np.unique(item_codes[rows])
    user_order = kept_users[_sort_ids([user_names[c] for c in kept_users])]
    item_order = kept_items[_sort_ids([item_names[c] for c in kept_items])]
    new_user = np.full(len(user_names), -1, dtype=np.int64)
    new_user[user_order] = np.arange(len(user_order))
    new_item = np.zeros(len(item_names), dtype=np.int64)
    new_item[item_order] = np.arange(1, len(item_order) + 1)

    # Regroup by the new user ids; a stable sort keeps each user's chronological order.
    u = new_user[user_codes[rows]]
    order = np.argsort(u, kind="stable")
    flat = new_item[item_codes[rows[order]]]
    counts = np.bincount(u, minlength=len(user_order))
    sequences = [s.copy() for s in np.split(flat, np.cumsum(counts)[:-1])]

    return SequenceDataset(
        item_ids=[None, *(item_names[c] for c in item_order)],
        user_ids=[user_names[c] for c in user_order],
        sequences=sequences,
        source_sha256=inter.sha256,
        preprocessing={
            **config.model_dump(),
            "source": inter.source,
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
            "users": len(user_order),
            "items": len(item_order),
        },
    )


def _factorize(values: list[str]) -> tuple[np.ndarray, list[str]]:
    """Codes in order of first appearance (a dict is faster than sorting strings)."""
    index: dict[str, int] = {}
    codes = np.fromiter(
        (index.setdefault(v, len(index)) for v in values), dtype=np.int64, count=len(values)
    )
    return codes, list(index)


def _sort_ids(ids: list[str]) -> np.ndarray:
    """Argsort of ids: numerically when all are integers ("2" < "10"), else as strings."""
    try:
        keys: list[int] | list[str] = [int(i) for i in ids]
    except ValueError:
        keys = ids
    return np.asarray(sorted(range(len(ids)), key=keys.__getitem__), dtype=np.int64)
