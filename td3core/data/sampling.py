"""Real interactions at a budget (mu x zeta): the samples the baselines train on and
the rows a summary can start from.

Each sampler sees only the training part of every user (the sequence minus its
validation and test items), so nothing trained on a sample sees what it is evaluated on.
"""

from __future__ import annotations

import numpy as np

from td3core.config import SAMPLERS
from td3core.data.samples import Split
from td3core.errors import ConfigError


def training_sequences(split: Split) -> list[np.ndarray]:
    """Per user, the items that training samples use: everything but the last two."""
    return [seq[:-2] for seq in split.sequences]


def _fill_budget(
    train: list[np.ndarray], order: np.ndarray, length: int, budget: int
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Recent histories (<= `length` items) of users in `order` until `budget`
    interactions are used; the last user keeps only its most recent remaining items.
    Returned sorted by user id."""
    chosen: dict[int, np.ndarray] = {}
    left = budget
    for user in order.tolist():
        if left == 0:
            break
        take = min(length, len(train[user]), left)
        if take:
            chosen[user] = train[user][-take:]
            left -= take
    users = np.array(sorted(chosen), dtype=np.int64)
    return users, [chosen[u] for u in users.tolist()]


def sample_sequences(
    split: Split, method: str, *, users: int, length: int, seed: int
) -> tuple[np.ndarray, list[np.ndarray]]:
    """(user ids, sequences) of a real sample of exactly `users` x `length`
    interactions (all training interactions when there are fewer), sorted by user.

    random-users: the most recent <= `length` training items of random users until
      the budget is used up (a much stronger baseline than the paper's "Random");
    longest: likewise from the users with the longest training parts (the paper's
      "Longest"; ties broken by user id);
    random-interactions: interactions drawn uniformly from all training interactions,
      kept in each user's time order (the paper's "Random").
    The last user of random-users and longest keeps only its most recent items that
    still fit, so every method spends the same budget."""
    train = training_sequences(split)
    lengths = np.array([len(s) for s in train], dtype=np.int64)
    budget = min(users * length, int(lengths.sum()))
    rng = np.random.default_rng(seed)
    if method == "random-users":
        return _fill_budget(train, rng.permutation(len(train)), length, budget)
    if method == "longest":
        return _fill_budget(train, np.argsort(-lengths, kind="stable"), length, budget)
    if method == "random-interactions":
        offsets = np.concatenate(([0], np.cumsum(lengths)))
        picked = np.sort(rng.choice(int(offsets[-1]), size=budget, replace=False))
        owner = np.searchsorted(offsets, picked, side="right") - 1
        chosen = np.unique(owner)
        flat = np.concatenate(train)
        return chosen, [flat[picked[owner == u]] for u in chosen]
    raise ConfigError(f"unknown sampling method {method!r}; choose from {', '.join(SAMPLERS)}")


def packed_rows(split: Split, method: str, *, users: int, length: int, seed: int) -> np.ndarray:
    """`users` x `length` real training items, [users, length]: the `method` sample of
    that budget (`sample_sequences`) with its histories laid end to end and cut into
    rows (short histories share a row, as in a concatenated corpus), repeated from the
    start when the training parts hold fewer interactions."""
    _, sequences = sample_sequences(split, method, users=users, length=length, seed=seed)
    return np.resize(np.concatenate(sequences), (users, length))
