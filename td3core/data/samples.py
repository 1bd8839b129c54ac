"""Next-item samples and the leave-one-out split (tensors)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class Samples:
    """Next-item samples: history (right-padded with 0) -> target.

    `positions[i]` is the index of `targets[i]` in its user's full sequence, so
    everything the user saw before the target is `sequences[users[i]][:positions[i]]`
    (histories are truncated to max_len; that prefix is not).
    """

    users: torch.Tensor  # [N] int64
    history: torch.Tensor  # [N, L] int64, right-padded
    lengths: torch.Tensor  # [N] int64, >= 1
    targets: torch.Tensor  # [N] int64, 1..n_items
    positions: torch.Tensor  # [N] int64

    def __len__(self) -> int:
        return int(self.targets.shape[0])

    def select(self, index: torch.Tensor) -> Samples:
        return Samples(
            users=self.users[index],
            history=self.history[index],
            lengths=self.lengths[index],
            targets=self.targets[index],
            positions=self.positions[index],
        )

    def to(self, device: torch.device | str) -> Samples:
        return Samples(
            users=self.users.to(device),
            history=self.history.to(device),
            lengths=self.lengths.to(device),
            targets=self.targets.to(device),
            positions=self.positions.to(device),
        )


@dataclass
class Split:
    """RecBole "LS" leave-one-out split: per user the last sample is test, the
    second-last validation, every earlier prefix a training sample."""

    train: Samples
    valid: Samples
    test: Samples
    sequences: list[np.ndarray]  # the dataset's sequences, for full-ranking masks
    n_items: int
    max_len: int
