"""The Tucker-factored synthetic summary S = G x1 U x2 T x3 V (paper §3.2).

G [d1,d2,d3], U [mu,d1] and T [zeta,d2] are learned; V [n_items+1, d3] is the
teacher's item-embedding table, frozen. Only a batch of synthetic users is ever
materialised: S for all users would be mu x zeta x n_items.

File contract (`td3-summary/1`, read by other teams' tools): safetensors with
tensors G, U, T, V (row 0 of V = padding) and string metadata `format`,
`item_ids` (JSON list of length n_items+1, null first), `temperature`,
`config` (JSON), `dataset_sha256`. Probabilities are
softmax(einsum(G, U, T, V) / temperature) over items with column 0 excluded.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load as load_bytes
from torch import nn

from td3core.errors import DataError
from td3core.serialization import read_metadata, safetensors_bytes

SUMMARY_FORMAT = "td3-summary/1"
_TENSORS = ("G", "U", "T", "V")


class TuckerSummary(nn.Module):
    V: torch.Tensor  # a buffer (declared for type checkers)

    def __init__(
        self,
        users: int,
        length: int,
        rank: int,
        item_embeddings: torch.Tensor,  # [n_items+1, d3], row 0 = padding
        *,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
    ):
        super().__init__()
        d3 = item_embeddings.shape[1]
        self.temperature = float(temperature)
        self.G = nn.Parameter(torch.empty(rank, rank, d3))
        self.U = nn.Parameter(torch.empty(users, rank))
        self.T = nn.Parameter(torch.empty(length, rank))
        nn.init.kaiming_normal_(self.G, generator=generator)
        nn.init.normal_(self.U, std=0.02, generator=generator)
        nn.init.normal_(self.T, std=0.02, generator=generator)
        self.register_buffer("V", item_embeddings.detach().clone())

    @property
    def users(self) -> int:
        return self.U.shape[0]

    @property
    def length(self) -> int:
        return self.T.shape[0]

    @property
    def n_items(self) -> int:
        return self.V.shape[0] - 1

    def scores(self, users: torch.Tensor) -> torch.Tensor:
        """The logits before the item table: [B, zeta, d3], so that
        logits = scores @ V[1:]^T (the small factors contracted first)."""
        core = torch.einsum("abc,ua,tb->utc", self.G, self.U[users], self.T)
        return core / self.temperature

    def logits(self, users: torch.Tensor) -> torch.Tensor:
        """Item logits over real items 1..n for a batch of synthetic users: [B, zeta, n_items]."""
        return self.scores(users) @ self.V[1:].T

    def probs(self, users: torch.Tensor) -> torch.Tensor:
        """S for a batch of users: [B, zeta, n_items+1], column 0 (padding) exactly 0.

        Unlike the authors' code we mask the padding item: no probability mass may
        sit on an item that does not exist."""
        return F.pad(torch.softmax(self.logits(users), dim=-1), (1, 0))


@dataclass
class SummaryFile:
    summary: TuckerSummary
    item_ids: list[str | None]
    config: dict
    dataset_sha256: str


def summary_to_bytes(
    summary: TuckerSummary, *, item_ids: list[str | None], config: dict, dataset_sha256: str
) -> bytes:
    if len(item_ids) != summary.V.shape[0] or item_ids[0] is not None:
        raise ValueError("item_ids must have n_items+1 entries with None (padding) first")
    tensors = {name: getattr(summary, name).detach().cpu().numpy() for name in _TENSORS}
    metadata = {
        "format": SUMMARY_FORMAT,
        "item_ids": json.dumps(item_ids),
        "temperature": repr(summary.temperature),
        "config": json.dumps(config, sort_keys=True),
        "dataset_sha256": dataset_sha256,
    }
    # the same summary, the same bytes (safetensors' own writer orders the metadata by
    # a per-process hash)
    return safetensors_bytes(tensors, metadata)


def summary_from_bytes(data: bytes, *, source: str = "summary") -> SummaryFile:
    """Load a summary file; anything that breaks the contract is a DataError."""
    try:
        tensors = load_bytes(data)
        metadata = read_metadata(data)
    except Exception as exc:  # safetensors raises several unrelated types
        raise DataError(f"not a safetensors file ({exc})", file=source) from exc
    if metadata.get("format") != SUMMARY_FORMAT:
        raise DataError(
            f"format is {metadata.get('format')!r}, expected {SUMMARY_FORMAT!r}", file=source
        )
    missing = [name for name in _TENSORS if name not in tensors]
    if missing:
        raise DataError(f"missing tensors {missing}", file=source)
    G, U, T, V = (tensors[name].float() for name in _TENSORS)
    if not (G.dim() == 3 and U.dim() == T.dim() == V.dim() == 2):
        raise DataError("G must be 3-d and U, T, V 2-d", file=source)
    if U.shape[1] != G.shape[0] or T.shape[1] != G.shape[1] or V.shape[1] != G.shape[2]:
        raise DataError(
            f"shapes do not chain: G {list(G.shape)}, U {list(U.shape)}, T {list(T.shape)}, "
            f"V {list(V.shape)}",
            file=source,
        )
    try:
        item_ids = json.loads(metadata["item_ids"])
        config = json.loads(metadata["config"])
        temperature = float(metadata["temperature"])
    except (KeyError, ValueError) as exc:
        raise DataError(f"bad metadata ({exc})", file=source) from exc
    if len(item_ids) != V.shape[0] or item_ids[0] is not None:
        raise DataError("item_ids must list n_items+1 ids with null first", file=source)
    summary = TuckerSummary(U.shape[0], T.shape[0], G.shape[0], V, temperature=temperature)
    with torch.no_grad():
        summary.G.copy_(G)
        summary.U.copy_(U)
        summary.T.copy_(T)
    return SummaryFile(summary, item_ids, config, metadata.get("dataset_sha256", ""))


def save_summary(path: str | Path, summary: TuckerSummary, **metadata) -> None:
    Path(path).write_bytes(summary_to_bytes(summary, **metadata))


def load_summary(path: str | Path) -> SummaryFile:
    return summary_from_bytes(Path(path).read_bytes(), source=str(path))
