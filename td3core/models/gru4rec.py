"""GRU4Rec (Hidasi et al. 2016; Tan et al. 2016) as RecBole 1.2.1 builds it.

Item embedding (64) -> dropout -> one GRU layer without bias (hidden 128) -> a
dense layer back to the embedding size; logits are features @ E^T over the same
item table (tied output). Xavier-normal embeddings and Xavier-uniform GRU weights,
as RecBole initialises them. Reads right-padded ids or soft item distributions;
the GRU is causal, so the features at position t only depend on positions <= t and
right padding never reaches a real position.

`nn.GRU` runs under `torch.func.functional_call` (RNN modules refresh their flat
weights when a parameter is swapped). On CUDA, cuDNN's GRU has no double backward,
so this model can be trained on a summary but not differentiated through as a
distillation inner learner there.
"""

from __future__ import annotations

from torch import Tensor, nn

from td3core.models.layers import SequentialRecommender, embed_input, gather_last


class GRU4Rec(SequentialRecommender):
    def __init__(
        self,
        n_items: int,
        max_len: int,
        embedding: int = 64,
        hidden: int = 128,
        layers: int = 1,
        dropout: float = 0.3,
    ):
        super().__init__(n_items, max_len, embedding)
        self.dropout = nn.Dropout(dropout)
        self.gru = nn.GRU(embedding, hidden, layers, bias=False, batch_first=True)
        self.dense = nn.Linear(hidden, embedding)
        nn.init.xavier_normal_(self.item_embedding.weight)
        for weight in self.gru.parameters():  # input and recurrent weights (no bias)
            nn.init.xavier_uniform_(weight)
        # the dense layer keeps PyTorch's default init, as in RecBole

    def sequence_features(
        self,
        items: Tensor | None = None,
        lengths: Tensor | None = None,
        probs: Tensor | None = None,
    ) -> Tensor:
        """Features [B, L, E] at every position (E = embedding size, the output space).

        items: [B, L] right-padded ids; probs: [B, L, n_items+1] soft input. lengths
        is accepted for the common interface; a causal GRU needs no padding mask."""
        emb = self.dropout(embed_input(self.item_embedding, items, probs))  # [B, L, E]
        states, _ = self.gru(emb)  # [B, L, hidden]
        return self.dense(states)  # [B, L, E]

    def last_features(self, items: Tensor, lengths: Tensor) -> Tensor:
        """Features at the last valid position: [B, E]."""
        return gather_last(self.sequence_features(items, lengths), lengths)
