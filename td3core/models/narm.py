"""NARM (Li et al. 2017) as RecBole 1.2.1 builds it.

Item embedding (64) -> dropout 0.25 -> GRU without bias (hidden 128). The global
encoder is the GRU state h_t; the local encoder attends over the states h_j with
alpha_tj = v^T sigmoid(A1 h_j + A2 h_t) (no softmax, as in the paper and RecBole).
[local, global] -> dropout 0.5 -> a bias-free linear map to the embedding size;
logits are features @ E^T over the item table. Xavier-normal init of the embedding
and the linear maps, PyTorch's default for the GRU (RecBole's choices).

RecBole computes NARM's output only at the last valid position. `sequence_features`
generalises it causally: position t uses h_t as the query and attends over
positions j <= t, which is exactly NARM's output for the prefix ending at t. That
is what training on a summary needs (predict position t+1 from position t without
seeing it); `last_features` computes the last position alone, which keeps
evaluation's memory at [B, L, hidden] instead of [B, L, L, hidden].
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from td3core.models.layers import (
    SequentialRecommender,
    embed_input,
    gather_last,
    valid_positions,
)


class NARM(SequentialRecommender):
    def __init__(
        self,
        n_items: int,
        max_len: int,
        embedding: int = 64,
        hidden: int = 128,
        layers: int = 1,
        emb_dropout: float = 0.25,
        ct_dropout: float = 0.5,
    ):
        super().__init__(n_items, max_len, embedding)
        self.emb_dropout = nn.Dropout(emb_dropout)
        self.gru = nn.GRU(embedding, hidden, layers, bias=False, batch_first=True)
        self.a_1 = nn.Linear(hidden, hidden, bias=False)  # keys
        self.a_2 = nn.Linear(hidden, hidden, bias=False)  # query
        self.v_t = nn.Linear(hidden, 1, bias=False)
        self.ct_dropout = nn.Dropout(ct_dropout)
        self.b = nn.Linear(2 * hidden, embedding, bias=False)
        for module in (self.item_embedding, self.a_1, self.a_2, self.v_t, self.b):
            nn.init.xavier_normal_(module.weight)

    def _states(
        self, items: Tensor | None, lengths: Tensor | None, probs: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        """GRU states [B, L, hidden] and the validity mask [B, L]."""
        emb = self.emb_dropout(embed_input(self.item_embedding, items, probs))  # [B, L, E]
        states, _ = self.gru(emb)  # [B, L, hidden]
        B, L, _ = states.shape
        return states, valid_positions(B, L, states.device, items, lengths)

    def _encode(self, states: Tensor, queries: Tensor, allowed: Tensor) -> Tensor:
        """NARM's output for Q query states per sequence.

        states: [B, L, hidden] keys/values; queries: [B, Q, hidden] (the global
        encoder h_t); allowed: [B, Q, L] which keys each query may attend to."""
        scores = torch.sigmoid(self.a_1(states)[:, None] + self.a_2(queries)[:, :, None])
        alpha = self.v_t(scores) * allowed.unsqueeze(-1)  # [B, Q, L, 1]
        local = (alpha * states[:, None]).sum(2)  # [B, Q, hidden]
        return self.b(self.ct_dropout(torch.cat([local, queries], -1)))  # [B, Q, E]

    def sequence_features(
        self,
        items: Tensor | None = None,
        lengths: Tensor | None = None,
        probs: Tensor | None = None,
    ) -> Tensor:
        """Features [B, L, E] at every position, position t seeing positions <= t.

        items: [B, L] right-padded ids (valid: `< lengths`, else non-zero); probs:
        [B, L, n_items+1] soft input (every position valid unless lengths is given)."""
        states, valid = self._states(items, lengths, probs)
        L = states.shape[1]
        causal = torch.ones(L, L, dtype=torch.bool, device=states.device).tril()  # [Q, L]
        return self._encode(states, states, causal & valid[:, None, :])

    def last_features(self, items: Tensor, lengths: Tensor) -> Tensor:
        """Features at the last valid position: [B, E]."""
        states, valid = self._states(items, lengths, None)
        query = gather_last(states, lengths).unsqueeze(1)  # [B, 1, hidden]
        return self._encode(states, query, valid.unsqueeze(1)).squeeze(1)
