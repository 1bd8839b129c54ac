"""Leave-one-out split (RecBole "LS"): every prefix of a user's sequence is a sample;
per user the last target is test, the second-last validation, the rest training."""

from __future__ import annotations

import numpy as np
import torch

from td3core.data.samples import Samples, Split
from td3core.data.types import SequenceDataset
from td3core.errors import ConfigError, DataError

_CHUNK = 1 << 16  # samples per vectorised block: bounds temporary memory on big datasets


def leave_one_out(dataset: SequenceDataset, max_len: int) -> Split:
    """Split `dataset` into train/valid/test samples with histories of <= `max_len` items.

    For a sequence s of length n, the target s[i] (i = 1..n-1) has as history the last
    <= max_len items before it, right-padded with 0. Test is i = n-1, valid i = n-2,
    train i = 1..n-3. Samples are ordered by user, then position.
    """
    if max_len < 1:
        raise ConfigError(f"max_len must be >= 1, got {max_len}")
    lengths = np.fromiter(
        (len(s) for s in dataset.sequences), dtype=np.int64, count=dataset.n_users
    )
    short = np.flatnonzero(lengths < 3)
    if len(short):
        u = int(short[0])
        raise DataError(
            f"{len(short)} user(s) have fewer than 3 interactions (e.g. user "
            f"{dataset.user_ids[u]!r} has {int(lengths[u])}); leave-one-out needs 3"
        )
    flat = (
        np.concatenate(dataset.sequences).astype(np.int64, copy=False)
        if dataset.n_users
        else np.zeros(0, dtype=np.int64)
    )
    offsets = np.concatenate(([0], np.cumsum(lengths)))

    users = np.arange(dataset.n_users, dtype=np.int64)
    # Training positions 1..n-3 for every user, flattened in (user, position) order.
    n_train = lengths - 3
    train_users = np.repeat(users, n_train)
    starts = np.cumsum(n_train) - n_train
    train_pos = np.arange(len(train_users), dtype=np.int64) - np.repeat(starts, n_train) + 1

    return Split(
        train=_samples(flat, offsets, train_users, train_pos, max_len),
        valid=_samples(flat, offsets, users, lengths - 2, max_len),
        test=_samples(flat, offsets, users, lengths - 1, max_len),
        sequences=dataset.sequences,
        n_items=dataset.n_items,
        max_len=max_len,
    )


def prefix_samples(sequences: list[np.ndarray], users: np.ndarray, max_len: int) -> Samples:
    """Every prefix of every sequence as a training sample (targets at positions 1..n-1);
    `users[k]` is the user id of `sequences[k]`. Used for budget-sized real samples."""
    lengths = np.fromiter((len(s) for s in sequences), dtype=np.int64, count=len(sequences))
    flat = (
        np.concatenate(sequences).astype(np.int64, copy=False)
        if len(sequences)
        else np.zeros(0, dtype=np.int64)
    )
    offsets = np.concatenate(([0], np.cumsum(lengths)))
    n_targets = np.maximum(lengths - 1, 0)
    rows = np.repeat(np.arange(len(sequences), dtype=np.int64), n_targets)
    starts = np.cumsum(n_targets) - n_targets
    positions = np.arange(len(rows), dtype=np.int64) - np.repeat(starts, n_targets) + 1
    samples = _samples(flat, offsets, rows, positions, max_len)
    samples.users = torch.as_tensor(np.asarray(users, dtype=np.int64)[rows])
    return samples


def _samples(
    flat: np.ndarray, offsets: np.ndarray, users: np.ndarray, positions: np.ndarray, max_len: int
) -> Samples:
    n = len(users)
    ends = offsets[users] + positions  # flat index of each target
    hist_len = np.minimum(positions, max_len)
    starts = ends - hist_len
    # Every history is a contiguous slice flat[start:start+len] followed by zeros: gather
    # fixed-size windows (max_len trailing zeros keep the last window in bounds), then
    # zero the tail past each length.
    windows = np.lib.stride_tricks.sliding_window_view(
        np.concatenate((flat, np.zeros(max_len, dtype=np.int64))), max_len
    )
    history = np.empty((n, max_len), dtype=np.int64)
    steps = np.arange(max_len)
    for lo in range(0, n, _CHUNK):
        hi = min(lo + _CHUNK, n)
        block = windows[starts[lo:hi]]
        block[steps[None, :] >= hist_len[lo:hi, None]] = 0
        history[lo:hi] = block
    return Samples(
        users=torch.from_numpy(users.astype(np.int64, copy=True)),
        history=torch.from_numpy(history),
        lengths=torch.from_numpy(hist_len.astype(np.int64, copy=False)),
        targets=torch.from_numpy(flat[ends]),
        positions=torch.from_numpy(positions.astype(np.int64, copy=True)),
    )
