"""The loss a learner minimises on a synthetic summary (REFERENCE §1).

Shared by the distillation's inner loop and by training a model on a finished
summary, so both optimise exactly the same objective.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from td3core.models.sasrec import SASRec

ALT_FIRST_POSITION = 5  # the authors' lower bound for the augmented target position


def summary_loss(
    model: SASRec, probs: torch.Tensor, *, alt: bool, generator: torch.Generator | None = None
) -> torch.Tensor:
    """KL(S[:, -1] || learner's prediction from S[:, :-1]), averaged with the
    augmented-learner-training term when `alt` is on.

    probs: [B, zeta, n_items+1] soft sequences (column 0 = padding, always 0).
    Targets are not detached: the meta-gradient reaches S through them too.
    """
    batch, length, _ = probs.shape
    features = model.sequence_features(probs=probs[:, :-1])  # [B, zeta-1, H]
    loss = _kl(model.logits(features[:, -1]), probs[:, -1])
    if not alt:
        return loss
    if length < ALT_FIRST_POSITION + 2:
        raise ValueError(f"augmented learner training needs length >= {ALT_FIRST_POSITION + 2}")
    # Predict S[:, p] from position p-1. The learner's attention is causal, so its
    # output at p-1 never sees positions >= p: masking them (as the paper describes)
    # is already implied and one forward pass serves both terms.
    p = torch.randint(
        ALT_FIRST_POSITION, length - 1, (batch,), generator=generator, device="cpu"
    ).to(probs.device)
    rows = torch.arange(batch, device=probs.device)
    augmented = _kl(model.logits(features[rows, p - 1]), probs[rows, p])
    return (loss + augmented) / 2


def _kl(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Batch-mean KL(target || softmax(logits)) over real items (column 0 dropped)."""
    return F.kl_div(F.log_softmax(logits[:, 1:], dim=-1), target[:, 1:], reduction="batchmean")
