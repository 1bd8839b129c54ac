"""The synthetic summaries: TD3's Tucker-factored S = G x1 U x2 T x3 V (paper §3.2)
and, as the paper's baseline, Farzi Data's latent summary and decoder.

Tucker: G [d1,d2,d3], U [mu,d1] and T [zeta,d2] are learned; V [n_items+1, d3] is
the teacher's item-embedding table, frozen. Only a batch of synthetic users is ever
materialised: S for all users would be mu x zeta x n_items.

File contract (`td3-summary/1`, read by other teams' tools): safetensors with
tensors G, U, T, V (row 0 of V = padding) and string metadata `format`,
`item_ids` (JSON list of length n_items+1, null first), `temperature`,
`config` (JSON), `dataset_sha256`. Probabilities are
softmax(einsum(G, U, T, V) / temperature) over items with column 0 excluded.

A Farzi summary is written under its own format, `td3-farzi-summary/1`: tensors
`latent` [mu, zeta, d] and `decoder` [d, n_items], the same metadata; probabilities
softmax(latent @ decoder / temperature), column 0 (padding) 0.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
import torch.nn.functional as F
from safetensors.torch import load as load_bytes
from torch import nn

from td3core.errors import DataError
from td3core.serialization import read_metadata, safetensors_bytes

SUMMARY_FORMAT = "td3-summary/1"
FARZI_FORMAT = "td3-farzi-summary/1"


class Summary(nn.Module, ABC):
    """What distillation and the learners read: S for a batch of synthetic users.
    Its learned tensors are its parameters; its file holds `TENSORS` under `FORMAT`."""

    FORMAT: ClassVar[str]
    TENSORS: ClassVar[tuple[str, ...]]
    temperature: float

    @property
    @abstractmethod
    def users(self) -> int: ...

    @property
    @abstractmethod
    def length(self) -> int: ...

    @property
    @abstractmethod
    def n_items(self) -> int: ...

    @abstractmethod
    def scores(self, users: torch.Tensor) -> torch.Tensor:
        """A batch of users' logits before the item side: [B, zeta, k]."""

    @abstractmethod
    def item_vectors(self) -> torch.Tensor:
        """The item side [n_items, k] of the logits (real items, no padding)."""

    def logits(self, users: torch.Tensor) -> torch.Tensor:
        """Item logits over real items 1..n for a batch of synthetic users: [B, zeta, n_items]."""
        return self.scores(users) @ self.item_vectors().T

    @classmethod
    @abstractmethod
    def from_tensors(
        cls, tensors: Mapping[str, torch.Tensor], *, temperature: float, source: str
    ) -> Summary:
        """The summary a file's `TENSORS` describe; a DataError if they do not fit."""

    def probs(self, users: torch.Tensor) -> torch.Tensor:
        """S for a batch of users: [B, zeta, n_items+1], column 0 (padding) exactly 0.

        Unlike the authors' code we mask the padding item: no probability mass may
        sit on an item that does not exist."""
        return F.pad(torch.softmax(self.logits(users), dim=-1), (1, 0))


class TuckerSummary(Summary):
    FORMAT = SUMMARY_FORMAT
    TENSORS = ("G", "U", "T", "V")
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
        # The small factors contracted first: [B, zeta, d3].
        core = torch.einsum("abc,ua,tb->utc", self.G, self.U[users], self.T)
        return core / self.temperature

    def item_vectors(self) -> torch.Tensor:
        return self.V[1:]

    @classmethod
    def from_tensors(
        cls, tensors: Mapping[str, torch.Tensor], *, temperature: float, source: str
    ) -> TuckerSummary:
        G, U, T, V = (tensors[name] for name in cls.TENSORS)
        if not (G.dim() == 3 and U.dim() == T.dim() == V.dim() == 2):
            raise DataError("G must be 3-d and U, T, V 2-d", file=source)
        if U.shape[1] != G.shape[0] or T.shape[1] != G.shape[1] or V.shape[1] != G.shape[2]:
            raise DataError(
                f"shapes do not chain: G {list(G.shape)}, U {list(U.shape)}, "
                f"T {list(T.shape)}, V {list(V.shape)}",
                file=source,
            )
        return cls(U.shape[0], T.shape[0], G.shape[0], V, temperature=temperature)


class FarziSummary(Summary):
    """Farzi Data's summary (Sachdeva et al. 2023), the paper's baseline (Table 3): a
    latent summary [mu, zeta, d] and a decoder [d, n_items], both learned, with
    Kaiming-uniform init (torch's fan convention). Unlike TD3's it owns its item
    side: mu*zeta*d + d*n_items parameters, growing with the items and zeta."""

    FORMAT = FARZI_FORMAT
    TENSORS = ("latent", "decoder")

    def __init__(
        self,
        users: int,
        length: int,
        dim: int,
        n_items: int,
        *,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
    ):
        super().__init__()
        self.temperature = float(temperature)
        self.latent = nn.Parameter(torch.empty(users, length, dim))
        self.decoder = nn.Parameter(torch.empty(dim, n_items))  # real items: padding masked
        nn.init.kaiming_uniform_(self.latent, generator=generator)
        nn.init.kaiming_uniform_(self.decoder, generator=generator)

    @property
    def users(self) -> int:
        return self.latent.shape[0]

    @property
    def length(self) -> int:
        return self.latent.shape[1]

    @property
    def n_items(self) -> int:
        return self.decoder.shape[1]

    def scores(self, users: torch.Tensor) -> torch.Tensor:
        return self.latent[users] / self.temperature

    def item_vectors(self) -> torch.Tensor:
        return self.decoder.T

    @classmethod
    def from_tensors(
        cls, tensors: Mapping[str, torch.Tensor], *, temperature: float, source: str
    ) -> FarziSummary:
        latent, decoder = (tensors[name] for name in cls.TENSORS)
        if not (latent.dim() == 3 and decoder.dim() == 2):
            raise DataError("latent must be 3-d and decoder 2-d", file=source)
        if latent.shape[2] != decoder.shape[0]:
            raise DataError(
                f"shapes do not chain: latent {list(latent.shape)}, decoder {list(decoder.shape)}",
                file=source,
            )
        users, length, dim = latent.shape
        return cls(users, length, dim, decoder.shape[1], temperature=temperature)


_KINDS: dict[str, type[Summary]] = {kind.FORMAT: kind for kind in (TuckerSummary, FarziSummary)}


@dataclass
class SummaryFile:
    summary: Summary
    item_ids: list[str | None]
    config: dict
    dataset_sha256: str


def summary_to_bytes(
    summary: Summary, *, item_ids: list[str | None], config: dict, dataset_sha256: str
) -> bytes:
    """The summary's file: `td3-summary/1` for a Tucker summary, `td3-farzi-summary/1`
    for a Farzi one."""
    if len(item_ids) != summary.n_items + 1 or item_ids[0] is not None:
        raise ValueError("item_ids must have n_items+1 entries with None (padding) first")
    state = summary.state_dict()
    tensors = {name: state[name].detach().cpu().numpy() for name in summary.TENSORS}
    metadata = {
        "format": summary.FORMAT,
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
    kind = _KINDS.get(metadata.get("format", ""))
    if kind is None:
        raise DataError(
            f"format is {metadata.get('format')!r}, expected {SUMMARY_FORMAT!r} "
            f"(or {FARZI_FORMAT!r})",
            file=source,
        )
    missing = [name for name in kind.TENSORS if name not in tensors]
    if missing:
        raise DataError(f"missing tensors {missing}", file=source)
    try:
        item_ids = json.loads(metadata["item_ids"])
        config = json.loads(metadata["config"])
        temperature = float(metadata["temperature"])
    except (KeyError, ValueError) as exc:
        raise DataError(f"bad metadata ({exc})", file=source) from exc
    values = {name: tensors[name].float() for name in kind.TENSORS}
    summary = kind.from_tensors(values, temperature=temperature, source=source)
    if len(item_ids) != summary.n_items + 1 or item_ids[0] is not None:
        raise DataError("item_ids must list n_items+1 ids with null first", file=source)
    copy_parameters(summary, values)
    return SummaryFile(summary, item_ids, config, metadata.get("dataset_sha256", ""))


def copy_parameters(summary: Summary, values: Mapping[str, torch.Tensor]) -> None:
    """Set the summary's learned tensors to `values` (by name)."""
    with torch.no_grad():
        for name, param in summary.named_parameters():
            param.copy_(values[name])


def save_summary(path: str | Path, summary: Summary, **metadata) -> None:
    Path(path).write_bytes(summary_to_bytes(summary, **metadata))


def load_summary(path: str | Path) -> SummaryFile:
    return summary_from_bytes(Path(path).read_bytes(), source=str(path))
