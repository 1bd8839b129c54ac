"""BERT4Rec (Sun et al. 2019) as RecBole 1.2.1 builds it.

SASRec's post-LayerNorm transformer blocks with bidirectional attention (every
position attends to every valid position), learned position embeddings, N(0, 0.02)
init, an output head (dense -> GELU -> LayerNorm) and logits = features @ E^T + bias
over the item table. Defaults: 2 layers, 2 heads, hidden 64, inner 256, dropouts 0.2.

The [mask] token is its own embedding vector rather than an extra row of the item
table: the table stays [n_items+1, H] like every other learner's, so soft input
(probs @ E), the tied output and a borrowed item table line up row for row, and
[mask] can never be recommended (RecBole drops its row from the output too).

Training (the cloze task): each valid position is replaced by [mask] with
probability `mask_ratio` (0.2) and predicted; with probability `last_ratio` (0.5) a
sample instead masks only its last item, the exact shape of a query at test time
(without these samples BERT4Rec underperforms badly). Scoring appends [mask] after
the history and reads the features there. Both append one position to a history;
a full one (max_len items) drops its oldest item to make room, as RecBole does, so
the [mask] of a query always sits at a position that training reached.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from td3core.data.samples import Samples
from td3core.models.layers import (
    Output,
    SequentialRecommender,
    embed_input,
    gather_last,
    valid_positions,
)
from td3core.models.sasrec import Block, SASRec, additive_mask


def cloze_mask(
    lengths: Tensor, width: int, mask_ratio: float, last_ratio: float, generator: torch.Generator
) -> Tensor:
    """[B, width] True where the input becomes [mask] and is predicted.

    With probability `last_ratio` a row masks only its last valid position; otherwise
    each valid position independently with probability `mask_ratio`, and a row that
    drew none masks its last position, so every row has a target. lengths: [B] on
    the CPU (the generator's device)."""
    positions = torch.arange(width)
    last = positions == (lengths - 1).unsqueeze(-1)  # [B, width]
    drawn = (torch.rand(len(lengths), width, generator=generator) < mask_ratio) & (
        positions < lengths.unsqueeze(-1)
    )
    only_last = torch.rand(len(lengths), generator=generator) < last_ratio
    return torch.where((only_last | ~drawn.any(-1)).unsqueeze(-1), last, drawn)


class BERT4Rec(SequentialRecommender):
    def __init__(
        self,
        n_items: int,
        max_len: int,
        hidden: int = 64,
        heads: int = 2,
        layers: int = 2,
        inner: int = 256,
        attn_dropout: float = 0.2,
        hidden_dropout: float = 0.2,
        eps: float = 1e-12,
        mask_ratio: float = 0.2,
        last_ratio: float = 0.5,
    ):
        super().__init__(n_items, max_len, hidden)
        self.mask_ratio = mask_ratio
        self.last_ratio = last_ratio
        self.mask_embedding = nn.Parameter(torch.empty(hidden))
        self.position_embedding = nn.Embedding(max_len, hidden)
        self.norm = nn.LayerNorm(hidden, eps=eps)
        self.dropout = nn.Dropout(hidden_dropout)
        self.blocks = nn.ModuleList(
            Block(hidden, heads, inner, attn_dropout, hidden_dropout, eps) for _ in range(layers)
        )
        self.output_ffn = nn.Linear(hidden, hidden)
        self.output_norm = nn.LayerNorm(hidden, eps=eps)
        self.output_bias = nn.Parameter(torch.zeros(n_items + 1))
        self.apply(SASRec._init_weights)  # RecBole initialises both transformers alike
        nn.init.normal_(self.mask_embedding, std=0.02)

    def sequence_features(
        self,
        items: Tensor | None = None,
        lengths: Tensor | None = None,
        probs: Tensor | None = None,
        masked: Tensor | None = None,
    ) -> Tensor:
        """Bidirectional features [B, L, H]: every position sees every valid position.

        items: [B, L] right-padded ids (valid: `< lengths`, else non-zero); probs:
        [B, L, n_items+1] soft input (every position valid unless lengths is given);
        masked: [B, L] positions whose input is replaced by [mask] (they stay valid)."""
        emb = embed_input(self.item_embedding, items, probs)  # [B, L, H]
        if masked is not None:
            emb = torch.where(masked.unsqueeze(-1), self.mask_embedding, emb)
        batch, length, _ = emb.shape
        if length > self.max_len:
            raise ValueError(f"input length {length} exceeds max_len {self.max_len}")
        positions = torch.arange(length, device=emb.device)
        x = self.dropout(self.norm(emb + self.position_embedding(positions)))
        valid = valid_positions(batch, length, emb.device, items, lengths)
        # Keys only: every query row keeps its valid keys, so no row is all-masked.
        mask = additive_mask(valid[:, None, None, :], x.dtype)  # [B, 1, 1, L]
        for block in self.blocks:
            x = block(x, mask)
        return self.output_norm(F.gelu(self.output_ffn(x)))

    def append(
        self, given: Tensor, lengths: Tensor, fill: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """One position appended after each history, holding `fill` [B] (ids only) or
        zeros, keeping the most recent max_len positions.

        given: [B, L] ids or [B, L, n+1] soft input, L <= max_len; returns the
        sequences [B, min(L+1, max_len)(, n+1)] and their lengths [B]; the appended
        position is lengths - 1."""
        extended = torch.cat([given, torch.zeros_like(given[:, :1])], 1)  # [B, L+1(, n+1)]
        if fill is not None:
            extended[torch.arange(len(lengths), device=given.device), lengths] = fill
        lengths = lengths + 1
        if extended.shape[1] > self.max_len:  # full histories drop their oldest item
            shift = (lengths > self.max_len).long()  # [B]
            index = torch.arange(self.max_len, device=given.device) + shift.unsqueeze(-1)
            if extended.dim() == 3:
                index = index.unsqueeze(-1).expand(-1, -1, extended.shape[-1])
            extended, lengths = extended.gather(1, index), lengths - shift
        return extended, lengths

    def next_features(
        self,
        items: Tensor | None = None,
        lengths: Tensor | None = None,
        probs: Tensor | None = None,
    ) -> Tensor:
        """Features [B, H] for the next item: [mask] appended after the history
        (after `lengths` positions, or after all L positions without lengths)."""
        given = items if items is not None else probs
        assert given is not None, "pass items or probs"
        if lengths is None:
            lengths = torch.full((len(given),), given.shape[1], device=given.device)
        extended, lengths = self.append(given, lengths)
        masked = torch.arange(extended.shape[1], device=given.device) == (lengths - 1).unsqueeze(-1)
        inputs = {"items": extended} if items is not None else {"probs": extended}
        return gather_last(
            self.sequence_features(lengths=lengths, masked=masked, **inputs), lengths
        )

    def last_features(self, items: Tensor, lengths: Tensor) -> Tensor:
        """Features at the [mask] appended after the history: [B, H]."""
        return self.next_features(items, lengths)

    def training_loss(self, batch: Samples, generator: torch.Generator) -> Tensor:
        """The cloze loss on real samples: history + target as one sequence, masked
        positions predicted with full-softmax cross-entropy over items 1..n."""
        sequence, lengths = self.append(batch.history, batch.lengths, batch.targets)
        masked = cloze_mask(
            lengths.cpu(), sequence.shape[1], self.mask_ratio, self.last_ratio, generator
        ).to(sequence.device)
        features = self.sequence_features(sequence, lengths, masked=masked)  # [B, L', H]
        logits = self.logits(features[masked])  # [M, n+1], M masked positions
        return F.cross_entropy(logits[:, 1:], sequence[masked] - 1)

    def logits(self, features: Tensor) -> Tensor:
        """Tied output plus a per-item bias: [..., H] -> [..., n_items+1] (column 0 is padding)."""
        return features @ self.item_embedding.weight.T + self.output_bias

    def forward(
        self,
        items: Tensor | None = None,
        lengths: Tensor | None = None,
        probs: Tensor | None = None,
        output: Output = "features",
        masked: Tensor | None = None,
    ) -> Tensor:
        """One entry point for `torch.func.functional_call`: "features" [B, L, H] and
        "logits" [B, L, n+1] at every position (with optional [mask] positions);
        "last" [B, H] and "scores" [B, n+1] for the next item after the history."""
        if output in ("last", "scores"):
            features = self.next_features(items, lengths, probs)
        else:
            features = self.sequence_features(items, lengths, probs, masked)
        return self.logits(features) if output in ("logits", "scores") else features
