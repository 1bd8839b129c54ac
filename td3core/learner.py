"""Training a model on a finished summary: what a user of the summary does.

Honest by default: the learner starts from a fresh initialisation, embeddings
included. `item_embeddings` reproduces the authors' evaluation, which starts the
learner from the item table learned on the full data (a leak, labelled as such by
the callers that use it).
"""

from __future__ import annotations

import torch
from torch import Tensor

from td3core.config import ModelConfig, TrainConfig
from td3core.data.samples import Split
from td3core.evaluation import evaluate
from td3core.inner import summary_loss
from td3core.models.sasrec import SASRec
from td3core.summary import TuckerSummary
from td3core.training import FitResult, epoch_batches, fit


def train_on_summary(
    summary: TuckerSummary,
    split: Split,
    negatives_valid: Tensor,
    model_config: ModelConfig,
    train_config: TrainConfig,
    *,
    alt: bool = True,
    item_embeddings: Tensor | None = None,
    device: torch.device | str = "cpu",
) -> tuple[SASRec, FitResult]:
    """Fit a SASRec on the summary with the common recipe (Adam, early stopping on
    validation MRR@10 of the real split, step cap); returns the best model."""
    torch.manual_seed(train_config.seed)  # the learner's initialisation
    model = SASRec.from_config(split.n_items, split.max_len, model_config).to(device)
    if item_embeddings is not None:
        with torch.no_grad():
            model.item_embedding.weight.copy_(item_embeddings)
    summary = summary.to(device)
    generator = torch.Generator().manual_seed(train_config.seed)
    batches = epoch_batches(summary.users, train_config.batch_size, generator)

    def loss_fn(m: torch.nn.Module, step: int) -> Tensor:
        with torch.no_grad():
            probs = summary.probs(next(batches).to(device))
        return summary_loss(m, probs, alt=alt, generator=generator)

    def validate(m: torch.nn.Module) -> float:
        metrics = evaluate(
            m, split.valid, split, negatives_valid, full_ranking=False, ks=(10,), device=device
        )
        return metrics["uni100"]["MRR@10"]

    result = fit(model, loss_fn, validate, train_config)
    return model, result
