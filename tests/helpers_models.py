"""Hand-built Samples/Split for the model, evaluation and training tests (independent
of td3core.data.split so these tests do not wait for it)."""

from __future__ import annotations

import numpy as np
import torch

from td3core.data.samples import Samples, Split


def make_samples(rows: list[tuple[int, np.ndarray, int]], max_len: int) -> Samples:
    """rows: (user, full sequence, target position) -> right-padded samples."""
    history = np.zeros((len(rows), max_len), dtype=np.int64)
    lengths = np.zeros(len(rows), dtype=np.int64)
    for i, (_, seq, pos) in enumerate(rows):
        prefix = seq[max(0, pos - max_len) : pos]
        history[i, : len(prefix)] = prefix
        lengths[i] = len(prefix)
    return Samples(
        users=torch.tensor([u for u, _, _ in rows], dtype=torch.long),
        history=torch.from_numpy(history),
        lengths=torch.from_numpy(lengths),
        targets=torch.tensor([int(seq[p]) for _, seq, p in rows], dtype=torch.long),
        positions=torch.tensor([p for _, _, p in rows], dtype=torch.long),
    )


def make_split(sequences: list[np.ndarray], n_items: int, max_len: int) -> Split:
    """Leave-one-out: per user last target -> test, second-last -> valid, rest -> train."""
    train, valid, test = [], [], []
    for user, seq in enumerate(sequences):
        assert len(seq) >= 3
        train += [(user, seq, p) for p in range(1, len(seq) - 2)]
        valid.append((user, seq, len(seq) - 2))
        test.append((user, seq, len(seq) - 1))
    return Split(
        make_samples(train, max_len),
        make_samples(valid, max_len),
        make_samples(test, max_len),
        sequences,
        n_items,
        max_len,
    )


def random_sequences(
    n_users: int, n_items: int, min_len: int = 5, max_len: int = 20, seed: int = 0
) -> list[np.ndarray]:
    """Unstructured histories: nothing to learn, distinct items per user."""
    rng = np.random.default_rng(seed)
    return [
        rng.choice(
            np.arange(1, n_items + 1), size=rng.integers(min_len, max_len + 1), replace=False
        )
        for _ in range(n_users)
    ]


def chain_sequences(
    n_users: int, n_items: int, length: int = 12, seed: int = 0, noise: float = 0.1
) -> list[np.ndarray]:
    """Learnable histories: the next item is usually the previous one + 1 (mod n)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_users):
        seq = [int(rng.integers(1, n_items + 1))]
        for _ in range(length - 1):
            if rng.random() < noise:
                seq.append(int(rng.integers(1, n_items + 1)))
            else:
                seq.append(seq[-1] % n_items + 1)
        out.append(np.array(seq, dtype=np.int64))
    return out
