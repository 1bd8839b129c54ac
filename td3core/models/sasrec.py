"""SASRec (Kang & McAuley 2018) as RecBole 1.2.1 builds it.

Post-LayerNorm transformer blocks, learned position embeddings, GELU, N(0, 0.02)
init and a tied output layer (logits = features @ E^T). The model reads either
right-padded item ids or soft item distributions (a distilled summary), and is
plain tensor code so `torch.func.functional_call`, `vmap` and double backward work.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from td3core.config import ModelConfig
from td3core.models.layers import SequentialRecommender, gather_last

# Added to masked attention scores. Finite on purpose: -inf on a row with nothing
# to attend to gives NaN, which then ranks as a hit (docs/METHOD.md §2, the NaN trap).
MASK_VALUE = -10000.0


def additive_mask(allowed: Tensor, dtype: torch.dtype) -> Tensor:
    """Boolean "may attend" -> the additive mask attention adds to its scores (0 or MASK_VALUE)."""
    return torch.where(allowed, 0.0, MASK_VALUE).to(dtype)


@functools.lru_cache(maxsize=32)
def _causal_mask(length: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """Additive causal mask [1, 1, L, L] (0 or MASK_VALUE). Cached: the inner loop of
    the distillation asks for the same one thousands of times."""
    with torch.inference_mode(False):  # a normal tensor even if first asked for in one
        causal = torch.ones(length, length, dtype=torch.bool, device=device).tril()
        return additive_mask(causal, dtype)[None, None]


class SelfAttention(nn.Module):
    """Multi-head self-attention + dropout + residual + LayerNorm (post-LN)."""

    def __init__(
        self, hidden: int, heads: int, attn_dropout: float, hidden_dropout: float, eps: float
    ):
        super().__init__()
        assert hidden % heads == 0, f"hidden ({hidden}) must be divisible by heads ({heads})"
        self.heads = heads
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, hidden)
        self.dense = nn.Linear(hidden, hidden)
        self.attn_dropout = nn.Dropout(attn_dropout)
        self.out_dropout = nn.Dropout(hidden_dropout)
        self.norm = nn.LayerNorm(hidden, eps=eps)

    def forward(self, x: Tensor, mask: Tensor, query: Tensor | None = None) -> Tensor:
        """x: [B, L, H] (keys and values); query: [B, Q, H] rows to compute (default:
        x itself, Q = L); mask: [B or 1, 1, Q, L] additive (0 or MASK_VALUE). -> [B, Q, H]"""
        if query is not None:
            return self._few_queries(x, mask, query)
        query = x
        d = x.shape[-1] // self.heads

        def split(t: Tensor) -> Tensor:  # [B, n, H] -> [B, heads, n, d]
            return t.view(t.shape[0], t.shape[1], self.heads, d).transpose(1, 2)

        q, k, v = split(self.query(query)), split(self.key(x)), split(self.value(x))
        scores = q @ k.transpose(-1, -2) / math.sqrt(d) + mask  # [B, heads, Q, L]
        attn = self.attn_dropout(torch.softmax(scores, dim=-1))
        context = (attn @ v).transpose(1, 2).reshape(query.shape)  # [B, Q, H]
        return self.norm(self.out_dropout(self.dense(context)) + query)

    def _few_queries(self, x: Tensor, mask: Tensor, query: Tensor) -> Tensor:
        """`forward` for Q query rows without projecting all L keys and values (the
        outer loss asks one row of thousands of sequences): per head,
        q . (W_k x_j + b_k) = (W_k^T q) . x_j + q . b_k, whose last term is the same for
        every key and cancels in the softmax, and sum_j a_j (W_v x_j + b_v) =
        W_v (sum_j a_j x_j) + (sum_j a_j) b_v (the weights a_j need not sum to 1 after
        attention dropout). The same function and dropout draws, to rounding."""
        batch, rows, hidden = query.shape
        d = hidden // self.heads
        q = self.query(query).view(batch, rows, self.heads, d)
        w_key = self.key.weight.view(self.heads, d, hidden)  # head h's rows of W_k
        q_key = torch.einsum("bqhd,hdc->bhqc", q, w_key)  # [B, heads, Q, H]
        keys = x.unsqueeze(1)  # [B, 1, L, H]: every head reads x itself
        scores = q_key @ keys.transpose(-1, -2) / math.sqrt(d) + mask  # [B, heads, Q, L]
        attn = self.attn_dropout(torch.softmax(scores, dim=-1))
        mixed = attn @ keys  # [B, heads, Q, H]
        w_value = self.value.weight.view(self.heads, d, hidden)
        mass = attn.sum(-1).transpose(1, 2).unsqueeze(-1)  # [B, Q, heads, 1]: sum_j a_j
        context = torch.einsum("bhqc,hdc->bqhd", mixed, w_value)  # [B, Q, heads, d]
        context = context + mass * self.value.bias.view(self.heads, d)
        context = context.reshape(batch, rows, hidden)
        return self.norm(self.out_dropout(self.dense(context)) + query)


class FeedForward(nn.Module):
    """Position-wise MLP with GELU + dropout + residual + LayerNorm (post-LN)."""

    def __init__(self, hidden: int, inner: int, hidden_dropout: float, eps: float):
        super().__init__()
        self.dense_1 = nn.Linear(hidden, inner)
        self.dense_2 = nn.Linear(inner, hidden)
        self.dropout = nn.Dropout(hidden_dropout)
        self.norm = nn.LayerNorm(hidden, eps=eps)

    def forward(self, x: Tensor) -> Tensor:
        h = self.dense_2(F.gelu(self.dense_1(x)))
        return self.norm(self.dropout(h) + x)


class Block(nn.Module):
    def __init__(
        self,
        hidden: int,
        heads: int,
        inner: int,
        attn_dropout: float,
        hidden_dropout: float,
        eps: float,
    ):
        super().__init__()
        self.attention = SelfAttention(hidden, heads, attn_dropout, hidden_dropout, eps)
        self.feed_forward = FeedForward(hidden, inner, hidden_dropout, eps)

    def forward(self, x: Tensor, mask: Tensor, query: Tensor | None = None) -> Tensor:
        """[B, L, H] -> [B, L, H], or only the rows of `query` [B, Q, H] (see SelfAttention)."""
        return self.feed_forward(self.attention(x, mask, query))


class SASRec(SequentialRecommender):
    def __init__(
        self,
        n_items: int,
        max_len: int,
        hidden: int = 32,
        heads: int = 1,
        layers: int = 1,
        inner: int = 64,
        attn_dropout: float = 0.5,
        hidden_dropout: float = 0.2,
        eps: float = 1e-12,
    ):
        super().__init__(n_items, max_len, hidden)
        self.hidden = hidden
        self.position_embedding = nn.Embedding(max_len, hidden)
        self.norm = nn.LayerNorm(hidden, eps=eps)
        self.dropout = nn.Dropout(hidden_dropout)
        self.blocks = nn.ModuleList(
            Block(hidden, heads, inner, attn_dropout, hidden_dropout, eps) for _ in range(layers)
        )
        self.apply(self._init_weights)

    @classmethod
    def from_config(cls, n_items: int, max_len: int, cfg: ModelConfig) -> SASRec:
        return cls(
            n_items,
            max_len,
            hidden=cfg.hidden,
            heads=cfg.heads,
            layers=cfg.layers,
            inner=cfg.inner,
            attn_dropout=cfg.attn_dropout,
            hidden_dropout=cfg.hidden_dropout,
        )

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        # RecBole's init: the padding row is drawn too (it never receives a gradient).
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
        if isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    def sequence_features(
        self,
        items: Tensor | None = None,
        lengths: Tensor | None = None,
        probs: Tensor | None = None,
        *,
        embedded: Tensor | None = None,
    ) -> Tensor:
        """Last-layer hidden states [B, L, H].

        items: [B, L] right-padded ids (0 = padding); valid positions are `< lengths`
        when lengths [B] is given, else `items != 0`.
        probs: [B, L, n_items+1] soft item distributions; input = probs @ E with E this
        model's own item table; every position is valid unless lengths is given.
        embedded: [B, L, H], soft input already multiplied by E (a catalogue too
        large for probs); every position is valid.
        """
        if embedded is not None:
            if items is not None or probs is not None:
                raise ValueError("pass exactly one of items, probs or embedded")
            x = self._positional(embedded)
            mask = _causal_mask(x.shape[1], x.device, x.dtype)
        else:
            x, mask = self._block_inputs(items, lengths, probs)
        for block in self.blocks:
            x = block(x, mask)
        return x

    def _block_inputs(
        self, items: Tensor | None, lengths: Tensor | None, probs: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        """The first block's input [B, L, H] and the additive attention mask
        [B or 1, 1, L, L] (query x key)."""
        if (items is None) == (probs is None):
            raise ValueError("pass exactly one of items or probs")
        if items is not None:
            emb = self.item_embedding(items)  # [B, L, H]
        else:
            assert probs is not None
            if probs.shape[-1] != self.n_items + 1:
                raise ValueError(
                    f"probs has {probs.shape[-1]} columns, expected "
                    f"n_items + 1 = {self.n_items + 1}"
                )
            emb = probs @ self.item_embedding.weight  # [B, L, n+1] @ [n+1, H] -> [B, L, H]
        L = emb.shape[1]
        x = self._positional(emb)
        if lengths is None and items is None:  # soft input: every position is valid
            return x, _causal_mask(L, emb.device, x.dtype)  # [1, 1, L, L]
        if lengths is not None:
            valid = torch.arange(L, device=emb.device) < lengths.unsqueeze(-1)  # [B, L]
        else:
            assert items is not None
            valid = items != 0
        causal = torch.ones(L, L, dtype=torch.bool, device=emb.device).tril()  # [L, L]
        allowed = causal & valid[:, None, None, :]  # [B, 1, L, L], query x key
        return x, additive_mask(allowed, x.dtype)

    def _positional(self, emb: Tensor) -> Tensor:
        """Item vectors [B, L, H] -> the first block's input (positions, norm, dropout)."""
        length = emb.shape[1]
        if length > self.max_len:
            raise ValueError(
                f"input length {length} exceeds max_len {self.max_len} "
                "(the model has no position embedding beyond it)"
            )
        # Rows 0..L-1 of the table: the same values and gradient as looking up
        # arange(L), in one view instead of an index and an embedding kernel.
        return self.dropout(self.norm(emb + self.position_embedding.weight[:length]))

    def last_features(self, items: Tensor, lengths: Tensor, *, last_only: bool = False) -> Tensor:
        """Hidden state at the last valid position: [B, H].

        last_only: compute the last block's query side (attention query, output
        projection, feed-forward, norms) at that position alone; earlier positions
        still give keys and values. The same function at a fraction of the cost;
        in training mode it draws dropout masks only for what it computes, so the
        random stream differs from the full pass."""
        if not last_only:
            return gather_last(self.sequence_features(items, lengths), lengths)
        *earlier, last = self.blocks
        if earlier:
            x, mask = self._block_inputs(items, lengths, None)
            for block in earlier:
                x = block(x, mask)
        else:  # one block: only the last query's mask row is needed, not [B, 1, L, L]
            x = self._positional(self.item_embedding(items))
        rows, index = torch.arange(len(x), device=x.device), lengths - 1
        query = x[rows, index].unsqueeze(1)  # [B, 1, H]
        # The query at position lengths-1 may see keys < lengths (causal and valid at once).
        keys = torch.arange(x.shape[1], device=x.device) < lengths.unsqueeze(-1)  # [B, L]
        mask = additive_mask(keys, x.dtype)[:, None, None]  # [B, 1, 1, L]
        return last(x, mask, query).squeeze(1)
