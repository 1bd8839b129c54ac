"""Input handling every learner shares: ids or soft item distributions in, a
validity mask for right-padded batches. Kept apart from the models so each model
file holds only what makes that model different."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn


def embed_input(table: nn.Embedding, items: Tensor | None, probs: Tensor | None) -> Tensor:
    """Item vectors [B, L, E] for ids [B, L] or soft input probs [B, L, n_items+1].

    Soft input is `probs @ E` with E the model's own item table: a one-hot row gives
    exactly that item's embedding, so both paths agree on real ids."""
    if (items is None) == (probs is None):
        raise ValueError("pass exactly one of items or probs")
    if items is not None:
        return table(items)
    assert probs is not None
    if probs.shape[-1] != table.num_embeddings:
        raise ValueError(
            f"probs has {probs.shape[-1]} columns, expected n_items + 1 = {table.num_embeddings}"
        )
    return probs @ table.weight  # [B, L, n+1] @ [n+1, E] -> [B, L, E]


def valid_positions(
    batch: int, length: int, device: torch.device, items: Tensor | None, lengths: Tensor | None
) -> Tensor:
    """[B, L] True at real positions: `< lengths` when given, else non-padding ids,
    else (soft input without lengths) every position."""
    if lengths is not None:
        return torch.arange(length, device=device) < lengths.unsqueeze(-1)
    if items is not None:
        return items != 0
    return torch.ones(batch, length, dtype=torch.bool, device=device)


def gather_last(features: Tensor, lengths: Tensor) -> Tensor:
    """[B, L, H] -> [B, H] at positions lengths - 1."""
    index = (lengths - 1).view(-1, 1, 1).expand(-1, 1, features.shape[-1])  # [B, 1, H]
    return features.gather(1, index).squeeze(1)


Output = Literal["features", "last", "logits", "scores"]


class SequentialRecommender(nn.Module):
    """What every learner of the zoo shares: the output over the model's own item table
    (tied), scoring for evaluation, and one `forward` for `torch.func.functional_call`
    (which only calls forward). A model defines `sequence_features` and
    `last_features`; a bidirectional one (BERT4Rec) also its own `forward`."""

    def __init__(self, n_items: int, max_len: int, dim: int):
        super().__init__()
        self.n_items = n_items
        self.max_len = max_len
        self.item_embedding = nn.Embedding(n_items + 1, dim, padding_idx=0)  # row 0 = padding

    def sequence_features(
        self,
        items: Tensor | None = None,
        lengths: Tensor | None = None,
        probs: Tensor | None = None,
    ) -> Tensor:  # [B, L, H]
        raise NotImplementedError

    def last_features(self, items: Tensor, lengths: Tensor) -> Tensor:  # [B, H]
        raise NotImplementedError

    def logits(self, features: Tensor) -> Tensor:
        """Tied output: [..., H] -> [..., n_items+1] (column 0 is padding)."""
        return features @ self.item_embedding.weight.T

    def score_all(self, items: Tensor, lengths: Tensor) -> Tensor:
        return self.logits(self.last_features(items, lengths))  # [B, n_items+1]

    def forward(
        self,
        items: Tensor | None = None,
        lengths: Tensor | None = None,
        probs: Tensor | None = None,
        output: Output = "features",
    ) -> Tensor:
        """ "features" [B, L, H] and "logits" [B, L, n+1] cover every position; "last"
        [B, H] and "scores" [B, n+1] the last valid one (lengths - 1, or L - 1 without
        lengths)."""
        features = self.sequence_features(items, lengths, probs)  # [B, L, H]
        if output in ("last", "scores"):
            features = features[:, -1] if lengths is None else gather_last(features, lengths)
        if output in ("logits", "scores"):
            return self.logits(features)
        return features
