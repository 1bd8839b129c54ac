"""The loss a learner minimises on a synthetic summary (docs/METHOD.md §1).

Shared by the distillation's inner loop and by training a model on a finished
summary, so both optimise exactly the same objective.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from td3core.item_chunks import soft_cross_entropy, softmax_mix
from td3core.models import Recommender
from td3core.models.sasrec import SASRec
from td3core.optim import Layout, Params

ALT_FIRST_POSITION = 5  # the authors' lower bound for the augmented target position


def alt_positions(batch: int, length: int, generator: torch.Generator | None) -> torch.Tensor:
    """The augmented-learner-training target position of each sequence: [batch] on
    the CPU, uniform in [5, length-2]."""
    if length < ALT_FIRST_POSITION + 2:
        raise ValueError(f"augmented learner training needs length >= {ALT_FIRST_POSITION + 2}")
    return torch.randint(ALT_FIRST_POSITION, length - 1, (batch,), generator=generator)


def summary_loss(
    model: SASRec, probs: torch.Tensor, *, alt: bool, generator: torch.Generator | None = None
) -> torch.Tensor:
    """KL(S[:, -1] || learner's prediction from S[:, :-1]), averaged with the
    augmented-learner-training term when `alt` is on.

    probs: [B, zeta, n_items+1] soft sequences (column 0 = padding, always 0).
    Targets are not detached: the meta-gradient reaches S through them too.
    """
    batch, length, _ = probs.shape
    positions = alt_positions(batch, length, generator).to(probs.device) if alt else None
    targets = _pick(probs, positions)[:, 1:]  # [B or 2B, n_items]
    entropy = -torch.special.xlogy(targets, targets).sum() / len(targets)
    return inner_loss(model, SoftSequences.of(probs), positions) - entropy


def soft_kl(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Batch-mean KL(target || softmax(logits)) over real items; [N, n+1] each."""
    return F.kl_div(F.log_softmax(logits[:, 1:], dim=-1), target[:, 1:], reduction="batchmean")


def kl_all_loss(model: Recommender, probs: torch.Tensor) -> torch.Tensor:
    """Predict S[:, t+1] from position t for every t (causal language-model style):
    KL averaged over all B x (zeta-1) positions. probs: [B, zeta, n_items+1]."""
    logits = model.logits(model.sequence_features(probs=probs[:, :-1]))  # [B, zeta-1, n+1]
    return soft_kl(logits.flatten(0, 1), probs[:, 1:].flatten(0, 1))


@dataclass(frozen=True)
class SoftSequences:
    """A batch of soft sequences S, prepared once for many inner steps."""

    probs: torch.Tensor  # [B, zeta, n_items+1]
    inputs: torch.Tensor  # S[:, :-1], contiguous (a matmul would copy the slice every time)

    @classmethod
    def of(cls, probs: torch.Tensor) -> SoftSequences:
        return cls(probs, probs[:, :-1].contiguous())

    def cross_entropy(self, model: SASRec, positions: torch.Tensor | None) -> torch.Tensor:
        features = model.sequence_features(probs=self.inputs)  # [B, zeta-1, H]
        # Position p of S is predicted from position p-1 of the features.
        logits = model.logits(_pick(features, None if positions is None else positions - 1))
        # Mean over B (or 2B) rows = batch-mean of each term, averaged over the terms.
        return F.cross_entropy(logits[:, 1:], _pick(self.probs, positions)[:, 1:])

    def cross_entropy_everywhere(self, model: SASRec) -> torch.Tensor:
        """Cross-entropy against S[:, t+1] from position t, averaged over every position."""
        logits = model.logits(model.sequence_features(probs=self.inputs))  # [B, zeta-1, n+1]
        targets = self.probs[:, 1:, 1:].flatten(0, 1)  # [B*(zeta-1), n]
        return F.cross_entropy(logits[..., 1:].flatten(0, 1), targets)


@dataclass(frozen=True)
class ChunkedSoftSequences:
    """A batch of soft sequences kept factored, for catalogues too large for
    [B, zeta, n_items]: S = softmax(scores @ items^T) over the real items, read a
    chunk of items at a time (td3core.item_chunks). The same loss as
    `SoftSequences` of the same S, to rounding."""

    scores: torch.Tensor  # [B, zeta, k]: S's logits before the item table
    items: torch.Tensor  # [n_items, k]: S[..., i] ~ exp(scores . items[i-1])
    chunk: int  # items per chunk

    def cross_entropy(self, model: SASRec, positions: torch.Tensor | None) -> torch.Tensor:
        mixed = self._mixed(model)  # [B, zeta, H]
        table = model.item_embedding.weight[1:]
        features = model.sequence_features(embedded=mixed[:, :-1])  # [B, zeta-1, H]
        hidden = _pick(features, None if positions is None else positions - 1)  # [B or 2B, H]
        return soft_cross_entropy(hidden, table, _pick(mixed, positions), self.chunk)

    def _mixed(self, model: SASRec) -> torch.Tensor:
        """S @ E at every position [B, zeta, H]: the learner's inputs and the targets'
        side of the cross-entropy (S gives padding no mass, so E's row 0 is left out)."""
        batch, length, k = self.scores.shape
        table = model.item_embedding.weight[1:]  # [n, H]
        mixed, _ = softmax_mix(self.scores.reshape(-1, k), self.items, table, self.chunk)
        return mixed.view(batch, length, -1)

    def cross_entropy_everywhere(self, model: SASRec) -> torch.Tensor:
        """`SoftSequences.cross_entropy_everywhere` of the same S, an item chunk at a time."""
        mixed = self._mixed(model)  # [B, zeta, H]
        features = model.sequence_features(embedded=mixed[:, :-1])  # [B, zeta-1, H]
        table = model.item_embedding.weight[1:]
        targets = mixed[:, 1:].flatten(0, 1)  # [B*(zeta-1), H]: S @ E of the targets
        return soft_cross_entropy(features.flatten(0, 1), table, targets, self.chunk)


def inner_loss(
    model: SASRec,
    batch: SoftSequences | ChunkedSoftSequences,
    positions: torch.Tensor | None = None,
    *,
    everywhere: bool = False,
) -> torch.Tensor:
    """`summary_loss` plus the targets' entropy (cross-entropy against the soft
    targets): the entropy does not depend on the learner, so both have the same
    gradient w.r.t. its parameters, hence the same inner steps and meta-gradient,
    and this one costs fewer ops. positions: [B] ALT target positions, or None
    without ALT.

    The learner's attention is causal, so its output at p-1 never sees positions
    >= p: masking them (as the paper describes) is already implied and one forward
    pass serves both terms; one logits product and one softmax serve both too.

    everywhere: `kl_all_loss` plus the targets' entropy instead (positions unused).
    """
    if everywhere:
        return batch.cross_entropy_everywhere(model)
    return batch.cross_entropy(model, positions)


def _pick(x: torch.Tensor, positions: torch.Tensor | None) -> torch.Tensor:
    """[B, L, D] -> the last position [B, D], followed by x[b, positions[b]] when
    positions are given ([2B, D])."""
    if positions is None:
        return x[:, -1]
    rows = torch.arange(len(x), device=x.device)
    return torch.cat([x[:, -1], x[rows, positions]])


class UniformDropout(nn.Module):
    """`nn.Dropout` whose keep-mask is drawn as uniform >= p instead of by Bernoulli
    sampling: the same distribution, about 3x cheaper on a CPU (torch's CPU
    `bernoulli_` costs ~12 ns an element, `rand` ~3 ns), which is a fifth of a
    small learner's inner step. A different random stream than `nn.Dropout`."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = torch.rand_like(x).ge_(self.p).mul_(1.0 / (1.0 - self.p))  # 0 or 1/(1-p)
        return x * keep


def inner_learner(model: SASRec) -> SASRec:
    """`model` with `UniformDropout` in place of every `nn.Dropout` (in place)."""
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.Dropout):
            path, _, attr = name.rpartition(".")
            setattr(model.get_submodule(path), attr, UniformDropout(module.p))
    return model


class BoundLearner:
    """A SASRec whose parameter slots hold given tensors (views of the inner loop's
    flat buffer, or a differentiable optimiser's outputs) instead of its own
    parameters.

    The same substitution `torch.func.functional_call` makes, without its per-call
    bookkeeping: the inner loop calls the learner thousands of times per outer step
    and a small learner's step costs a few milliseconds."""

    def __init__(self, model: SASRec):
        self.model = model
        self.layout = Layout.of(dict(model.named_parameters()))
        self._slots = []
        for name in self.layout.names:
            path, _, attr = name.rpartition(".")
            self._slots.append((model.get_submodule(path), attr))

    def __call__(self, params: Params) -> SASRec:
        """The model with `params` (name -> tensor, every parameter) in place."""
        for (module, attr), name in zip(self._slots, self.layout.names, strict=True):
            # Straight into the dict: nn.Module.__setattr__ accepts only Parameters.
            module._parameters[attr] = params[name]  # type: ignore[assignment]
        return self.model
