"""Real-data training sets at the summary's budget (mu x zeta interactions), for the
baselines the summary is compared with (the samplers live in `data.sampling`)."""

from __future__ import annotations

from dataclasses import replace

from td3core.data.samples import Split
from td3core.data.sampling import sample_sequences
from td3core.data.split import prefix_samples


def sampled_split(
    split: Split, method: str, *, users: int, length: int, seed: int
) -> tuple[Split, int]:
    """`split` with its training samples replaced by the prefixes of a budget sample,
    and the sample's interaction count. Validation and test stay the full split's,
    so every run is scored alike."""
    chosen, sequences = sample_sequences(split, method, users=users, length=length, seed=seed)
    train = prefix_samples(sequences, chosen, split.max_len)
    return replace(split, train=train), int(sum(len(s) for s in sequences))
