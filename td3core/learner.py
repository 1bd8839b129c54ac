"""Training a model on a finished summary: what a user of the summary does.

Any learner of the zoo (`td3core.models.LEARNERS`) can be trained, always from a
fresh initialisation, embeddings included. `item_embeddings` reproduces the authors'
evaluation, which starts the learner from the item table learned on the full data
(a leak, labelled as such by the callers that use it).

Two objectives read the soft sequences S [B, zeta, n_items+1]:
  "inner"  - the paper's inner loss (td3core.inner.summary_loss): predict
             S[:, -1] from the positions before it, averaged with ALT (one random
             position p >= 5 predicted from the positions before it);
  "kl-all" - predict S[:, t+1] from position t at every t (causal language-model
             style), KL averaged over all positions (td3core.inner.kl_all_loss).
The distillation's inner learner trains with one of them (DistillConfig.inner_objective).
Both need a causal learner (position t must not see t+1). BERT4Rec is bidirectional,
so it gets the cloze analogue of each, predicting [mask]ed positions instead:
  "inner"  - S[:, -1] (and, with ALT, S[:, p]) predicted at a [mask] appended after
             the positions before it: the shape of a next-item query;
  "kl-all" - its own training recipe on soft input: random positions (20 %) masked,
             or only the last one for half of the rows, their distributions predicted.
KL terms are KL(S || softmax(logits)) over real items (column 0 dropped), batch-mean.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

import torch
from torch import Tensor, nn

from td3core.config import (
    ALT_FIRST_POSITION,
    ALT_MIN_LENGTH,
    OBJECTIVES,
    ModelConfig,
    Objective,
    TrainConfig,
)
from td3core.data.samples import Split
from td3core.errors import ConfigError
from td3core.inner import kl_all_loss, soft_kl, summary_loss
from td3core.models import BERT4Rec, Learner, build_model, recommender
from td3core.models.bert4rec import cloze_mask
from td3core.models.sasrec import SASRec
from td3core.summary import Summary
from td3core.training import FitResult, epoch_batches, fit, validation_mrr10


def cloze_inner_loss(
    model: BERT4Rec, probs: Tensor, *, alt: bool, generator: torch.Generator
) -> Tensor:
    """BERT4Rec's "inner": predict S[:, -1] at a [mask] after S[:, :-1] (a next-item
    query); with ALT, also S[:, p] at a [mask] after S[:, :p], p uniform in [5, zeta-2]."""
    history = probs[:, :-1]  # [B, zeta-1, n+1]
    loss = soft_kl(model.logits(model.next_features(probs=history)), probs[:, -1])
    if not alt:
        return loss
    batch = probs.shape[0]
    p = torch.randint(ALT_FIRST_POSITION, probs.shape[1] - 1, (batch,), generator=generator)
    p = p.to(probs.device)
    target = probs[torch.arange(batch, device=probs.device), p]
    return (loss + soft_kl(model.logits(model.next_features(probs=history, lengths=p)), target)) / 2


def cloze_all_loss(model: BERT4Rec, probs: Tensor, generator: torch.Generator) -> Tensor:
    """BERT4Rec's "kl-all": its cloze recipe on soft input (see `cloze_mask`)."""
    batch, length, _ = probs.shape
    lengths = torch.full((batch,), length, dtype=torch.long)
    masked = cloze_mask(lengths, length, model.mask_ratio, model.last_ratio, generator)
    masked = masked.to(probs.device)
    features = model.sequence_features(probs=probs, masked=masked)  # [B, zeta, H]
    return soft_kl(model.logits(features[masked]), probs[masked])


def soft_loss(
    model: nn.Module,
    probs: Tensor,
    objective: Objective,
    *,
    alt: bool,
    generator: torch.Generator,
) -> Tensor:
    """The loss of `model` on soft sequences probs [B, zeta, n+1] (module docstring)."""
    if isinstance(model, BERT4Rec):
        if objective == "inner":
            return cloze_inner_loss(model, probs, alt=alt, generator=generator)
        return cloze_all_loss(model, probs, generator)
    if objective == "inner":
        # summary_loss needs only the Recommender interface; its annotation names SASRec.
        return summary_loss(cast(SASRec, model), probs, alt=alt, generator=generator)
    return kl_all_loss(recommender(model), probs)


def fresh_learner(
    name: str,
    n_items: int,
    max_len: int,
    model_config: ModelConfig,
    size: Mapping[str, Any] | None = None,
    item_embeddings: Tensor | None = None,
) -> Learner:
    """A freshly initialised learner; "sasrec" takes its size from `model_config`."""
    base = model_config.model_dump() if name == "sasrec" else {}
    model = build_model(name, n_items, max_len, **{**base, **(size or {})})
    if item_embeddings is not None:
        table = model.item_embedding.weight
        if item_embeddings.shape != table.shape:
            raise ConfigError(
                f"item_embeddings of shape {tuple(item_embeddings.shape)} cannot start a "
                f"{name} learner, whose item table is {tuple(table.shape)}; the "
                "paper-compatible variant needs a learner of the teacher's hidden size"
            )
        with torch.no_grad():
            table.copy_(item_embeddings)
    return model


def train_on_summary(
    summary: Summary,
    split: Split,
    negatives_valid: Tensor,
    model_config: ModelConfig,
    train_config: TrainConfig,
    *,
    alt: bool = True,
    item_embeddings: Tensor | None = None,
    device: torch.device | str = "cpu",
    learner: str = "sasrec",
    size: Mapping[str, Any] | None = None,
    objective: Objective = "inner",
) -> tuple[Learner, FitResult]:
    """Fit a fresh `learner` (a `td3core.models.LEARNERS` name; `size` overrides its
    defaults, and "sasrec" is sized by `model_config`) on the summary with the common
    recipe (Adam, early stopping on validation MRR@10 of the real split, step cap) and
    `objective`; returns the best model. `alt` applies to the "inner" objective."""
    if objective not in OBJECTIVES:
        raise ConfigError(f"unknown objective {objective!r}; choose from {', '.join(OBJECTIVES)}")
    if objective == "inner" and alt and summary.length < ALT_MIN_LENGTH:
        raise ConfigError(f"alt needs a summary of length >= {ALT_MIN_LENGTH}; set alt=False")
    torch.manual_seed(train_config.seed)  # the learner's initialisation
    model = fresh_learner(
        learner, split.n_items, split.max_len, model_config, size, item_embeddings
    ).to(device)
    summary = summary.to(device)
    generator = torch.Generator().manual_seed(train_config.seed)
    batches = epoch_batches(summary.users, train_config.batch_size, generator)

    def loss_fn(m: nn.Module, step: int) -> Tensor:
        with torch.no_grad():
            probs = summary.probs(next(batches).to(device))
        return soft_loss(m, probs, objective, alt=alt, generator=generator)

    validate = validation_mrr10(split, negatives_valid, device)
    result = fit(model, loss_fn, validate, train_config)
    return model, result
