"""Real-data training sets at the summary's budget (mu x zeta interactions).

Each sampler sees only the training part of every user (the sequence minus its
validation and test items), so no baseline trains on what it is evaluated on.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from td3core.data.samples import Split
from td3core.data.split import prefix_samples
from td3core.errors import ConfigError

SAMPLERS = ("random-users", "random-interactions", "longest")


def training_sequences(split: Split) -> list[np.ndarray]:
    """Per user, the items that training samples use: everything but the last two."""
    return [seq[:-2] for seq in split.sequences]


def sample_sequences(
    split: Split, method: str, *, users: int, length: int, seed: int
) -> tuple[np.ndarray, list[np.ndarray]]:
    """(user ids, sequences) of a budget-sized real sample.

    random-users: the last `length` training items of `users` random users (a much
      stronger baseline than the paper's "Random");
    random-interactions: users x length interactions drawn uniformly from all training
      interactions, kept in each user's time order (the paper's "Random");
    longest: the last `length` training items of the `users` longest users (paper's
      "Longest")."""
    train = training_sequences(split)
    rng = np.random.default_rng(seed)
    n_users = len(train)
    if method == "random-users":
        chosen = np.sort(rng.choice(n_users, size=min(users, n_users), replace=False))
        return chosen, [train[u][-length:] for u in chosen]
    if method == "longest":
        order = np.argsort(-np.array([len(s) for s in train]), kind="stable")
        chosen = np.sort(order[:users])
        return chosen, [train[u][-length:] for u in chosen]
    if method == "random-interactions":
        lengths = np.array([len(s) for s in train])
        offsets = np.concatenate(([0], np.cumsum(lengths)))
        budget = min(users * length, int(offsets[-1]))
        picked = np.sort(rng.choice(int(offsets[-1]), size=budget, replace=False))
        owner = np.searchsorted(offsets, picked, side="right") - 1
        chosen = np.unique(owner)
        flat = np.concatenate(train)
        return chosen, [flat[picked[owner == u]] for u in chosen]
    raise ConfigError(f"unknown sampling method {method!r}; choose from {', '.join(SAMPLERS)}")


def sampled_split(
    split: Split, method: str, *, users: int, length: int, seed: int
) -> tuple[Split, int]:
    """`split` with its training samples replaced by the prefixes of a budget sample,
    and the sample's interaction count. Validation and test stay the full split's,
    so every run is scored alike."""
    chosen, sequences = sample_sequences(split, method, users=users, length=length, seed=seed)
    train = prefix_samples(sequences, chosen, split.max_len)
    return replace(split, train=train), int(sum(len(s) for s in sequences))
