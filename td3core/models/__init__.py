"""Sequential recommenders: the learner interface and the model zoo.

Every learner reads right-padded item ids or soft item distributions (a summary)
through its own item table, so training, evaluation and training on a summary work
for all of them alike. Sizes default to RecBole 1.2.1's configurations, except
`sasrec`, which is the distillation's own SASRec (the authors' scripts: hidden 32,
1 head, 1 layer; `ModelConfig` holds it).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Protocol, cast, runtime_checkable

import torch
from torch import Tensor, nn

from td3core.config import LearnerName
from td3core.data.samples import Samples
from td3core.errors import ConfigError
from td3core.models.bert4rec import BERT4Rec
from td3core.models.gru4rec import GRU4Rec
from td3core.models.narm import NARM
from td3core.models.sasrec import SASRec


class Recommender(Protocol):
    """The interface every learner implements (and `evaluate` relies on).

    Shapes: B sequences of L positions, H the model's feature size, n = n_items.
    """

    n_items: int
    max_len: int
    item_embedding: nn.Embedding  # [n+1, E], row 0 = padding (padding_idx 0)

    def sequence_features(
        self,
        items: Tensor | None = None,  # [B, L] right-padded ids, 0 = padding
        lengths: Tensor | None = None,  # [B] valid positions per row
        probs: Tensor | None = None,  # [B, L, n+1] soft input, read as probs @ E
    ) -> Tensor:  # [B, L, H]
        ...

    def last_features(self, items: Tensor, lengths: Tensor) -> Tensor:  # [B, H]
        ...

    def logits(self, features: Tensor) -> Tensor:  # [..., H] -> [..., n+1]
        ...

    def score_all(self, items: Tensor, lengths: Tensor) -> Tensor:  # [B, n+1]
        ...


@runtime_checkable
class OwnTrainingLoss(Protocol):
    """A learner whose real-data objective is not next-item prediction (BERT4Rec)."""

    def training_loss(self, batch: Samples, generator: torch.Generator) -> Tensor: ...


Learner = SASRec | GRU4Rec | NARM | BERT4Rec


@dataclass(frozen=True)
class LearnerSpec:
    cls: type[Learner]
    size: dict[str, Any] = field(default_factory=dict)  # overrides of cls's defaults
    note: str = ""


# Keyed by the names td3core.config accepts (tests/test_models_zoo.py checks they agree).
LEARNERS: dict[LearnerName, LearnerSpec] = {
    "sasrec": LearnerSpec(SASRec, note="the distillation's SASRec (ModelConfig)"),
    "sasrec-2x64": LearnerSpec(
        SASRec,
        dict(hidden=64, heads=2, layers=2, inner=256, attn_dropout=0.5, hidden_dropout=0.5),
        note="RecBole's default SASRec",
    ),
    "gru4rec": LearnerSpec(GRU4Rec, note="RecBole's default GRU4Rec"),
    "narm": LearnerSpec(NARM, note="RecBole's default NARM"),
    "bert4rec": LearnerSpec(BERT4Rec, note="RecBole's default BERT4Rec"),
}


def build_model(name: str, n_items: int, max_len: int, **size: Any) -> Learner:
    """A freshly initialised learner from the registry; `size` overrides its defaults
    (constructor keywords, e.g. hidden=16). Seed torch's global RNG first for a
    reproducible initialisation."""
    if name not in LEARNERS:
        raise ConfigError(f"unknown learner {name!r}; choose from {', '.join(LEARNERS)}")
    spec = LEARNERS[cast(LearnerName, name)]
    settings = {**spec.size, **size}
    known = set(inspect.signature(spec.cls).parameters) - {"n_items", "max_len"}
    if unknown := sorted(set(settings) - known):
        raise ConfigError(
            f"{name} has no setting {', '.join(unknown)}; it takes {', '.join(sorted(known))}"
        )
    return spec.cls(n_items, max_len, **settings)


RECOMMENDER_MEMBERS = (*Recommender.__annotations__, *[
    name for name, value in vars(Recommender).items() if callable(value) and name[0] != "_"
])  # fmt: skip


def recommender(module: nn.Module) -> Recommender:
    """`module` seen through the learner interface; a clear error if it lacks it.

    Looked up with `hasattr`, not `isinstance`: from Python 3.12 a runtime protocol's
    isinstance reads attributes statically and misses a module's submodules
    (`item_embedding` lives in `nn.Module._modules`)."""
    if missing := [name for name in RECOMMENDER_MEMBERS if not hasattr(module, name)]:
        raise TypeError(
            f"{type(module).__name__} does not implement the Recommender interface "
            f"(no {', '.join(missing)})"
        )
    return cast(Recommender, module)


__all__ = [
    "BERT4Rec",
    "GRU4Rec",
    "LEARNERS",
    "NARM",
    "Learner",
    "LearnerSpec",
    "OwnTrainingLoss",
    "Recommender",
    "SASRec",
    "build_model",
    "recommender",
]
