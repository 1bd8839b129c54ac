"""The dataset type: users' chronological histories (numpy and pyarrow, no torch,
so the API can parse uploads without loading torch).

Internal item ids run 1..n_items; 0 is the padding id. Internal user ids run
0..n_users-1 and index `SequenceDataset.sequences`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa


class Interactions:
    """Raw (user, item, time[, rating]) rows as read from a file, in file order.

    Ids stay the original strings, held as Arrow string columns (`user_column`,
    `item_column`: about 10 bytes a row, where Python strings take 60); `users` and
    `items` are Python lists made on request, for small data and tests. `sha256` is
    over the file's raw bytes (before any gunzip), so a dataset can name exactly
    what it was built from.
    """

    def __init__(
        self,
        users: Sequence[str] | pa.Array | pa.ChunkedArray,
        items: Sequence[str] | pa.Array | pa.ChunkedArray,
        timestamps: np.ndarray,  # float64 [N]
        ratings: np.ndarray | None = None,  # float64 [N] when the file has a rating column
        source: str = "",
        sha256: str = "",
        fmt: str = "",  # the format the reader used (after "auto" detection)
    ):
        self.user_column = _strings(users)
        self.item_column = _strings(items)
        self.timestamps = timestamps
        self.ratings = ratings
        self.source = source
        self.sha256 = sha256
        self.fmt = fmt

    @property
    def users(self) -> list[str]:
        return self.user_column.to_pylist()

    @property
    def items(self) -> list[str]:
        return self.item_column.to_pylist()

    def __len__(self) -> int:
        return len(self.user_column)


def _strings(values: Sequence[str] | pa.Array | pa.ChunkedArray) -> pa.ChunkedArray:
    if isinstance(values, pa.ChunkedArray):
        return values
    if isinstance(values, pa.Array):
        return pa.chunked_array([values])
    return pa.chunked_array([pa.array(values, pa.string())], pa.string())


@dataclass(frozen=True)
class DatasetStats:
    """The columns of the paper's Table 1."""

    users: int
    items: int
    interactions: int
    avg_length: float
    sparsity: float  # percent of the user x item matrix that is empty

    def as_dict(self) -> dict[str, float | int]:
        return {
            "users": self.users,
            "items": self.items,
            "interactions": self.interactions,
            "avg_length": self.avg_length,
            "sparsity": self.sparsity,
        }


@dataclass
class SequenceDataset:
    """Users' chronological item histories after preprocessing.

    `item_ids[k]` is the original id of internal item k (`item_ids[0] is None`:
    padding). `sequences[u]` holds internal item ids of user u in time order.
    """

    item_ids: list[str | None]
    user_ids: list[str]
    sequences: list[np.ndarray]  # int64 arrays, values in 1..n_items
    source_sha256: str = ""
    preprocessing: dict = field(default_factory=dict)

    @property
    def n_items(self) -> int:
        return len(self.item_ids) - 1

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    def stats(self) -> DatasetStats:
        interactions = int(sum(len(s) for s in self.sequences))
        users, items = self.n_users, self.n_items
        return DatasetStats(
            users=users,
            items=items,
            interactions=interactions,
            avg_length=interactions / users if users else 0.0,
            sparsity=100.0 * (1.0 - interactions / (users * items)) if users and items else 100.0,
        )
