"""leave_one_out on a hand-built dataset: exact histories, targets, positions, padding."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from td3core.data.preprocess import build_dataset
from td3core.data.split import leave_one_out
from td3core.data.synthetic import generate_interactions
from td3core.data.types import SequenceDataset
from td3core.errors import ConfigError, DataError


def dataset(*seqs: list[int]) -> SequenceDataset:
    n_items = max(max(s) for s in seqs)
    return SequenceDataset(
        item_ids=[None, *(f"i{k}" for k in range(1, n_items + 1))],
        user_ids=[f"u{u}" for u in range(len(seqs))],
        sequences=[np.array(s, dtype=np.int64) for s in seqs],
    )


DS = dataset([1, 2, 3, 4, 5], [3, 1, 2], [2, 4, 1, 3])


def rows(samples) -> list[tuple]:
    return list(
        zip(
            samples.users.tolist(),
            samples.positions.tolist(),
            samples.history.tolist(),
            samples.lengths.tolist(),
            samples.targets.tolist(),
            strict=True,
        )
    )


def test_exact_samples_with_truncation():
    split = leave_one_out(DS, max_len=2)
    # (user, position, history, length, target)
    assert rows(split.train) == [
        (0, 1, [1, 0], 1, 2),
        (0, 2, [1, 2], 2, 3),
        (2, 1, [2, 0], 1, 4),
    ]
    assert rows(split.valid) == [(0, 3, [2, 3], 2, 4), (1, 1, [3, 0], 1, 1), (2, 2, [2, 4], 2, 1)]
    assert rows(split.test) == [(0, 4, [3, 4], 2, 5), (1, 2, [3, 1], 2, 2), (2, 3, [4, 1], 2, 3)]
    assert split.n_items == 5 and split.max_len == 2
    assert split.sequences is DS.sequences


def test_right_padding_when_max_len_exceeds_history():
    split = leave_one_out(DS, max_len=6)
    assert split.test.history.tolist() == [
        [1, 2, 3, 4, 0, 0],
        [3, 1, 0, 0, 0, 0],
        [2, 4, 1, 0, 0, 0],
    ]
    assert split.test.lengths.tolist() == [4, 2, 3]


def test_dtypes_and_shapes():
    split = leave_one_out(DS, max_len=3)
    for part in (split.train, split.valid, split.test):
        for t in (part.users, part.history, part.lengths, part.targets, part.positions):
            assert t.dtype == torch.int64
        assert part.history.shape == (len(part), 3)


def test_matches_the_definition_on_synthetic_data():
    ds = build_dataset(generate_interactions(n_users=50, seed=3))
    max_len = 7
    split = leave_one_out(ds, max_len)
    assert len(split.train) == sum(len(s) - 3 for s in ds.sequences)
    for part in (split.train, split.valid, split.test):
        for u, p, hist, n, target in rows(part):
            seq = ds.sequences[u]
            expected = seq[max(0, p - max_len) : p].tolist()
            assert target == seq[p] and n == len(expected) >= 1
            assert hist == expected + [0] * (max_len - n)
    # Ordered by user, then position.
    key = split.train.users * 10_000 + split.train.positions
    assert torch.equal(key, torch.sort(key).values)


def test_rejects_short_users_and_bad_max_len():
    with pytest.raises(DataError, match="fewer than 3 interactions.*'u1' has 2"):
        leave_one_out(dataset([1, 2, 3], [1, 2]), max_len=2)
    with pytest.raises(ConfigError):
        leave_one_out(DS, max_len=0)
