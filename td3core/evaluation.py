"""RecBole's evaluation protocol (docs/METHOD.md §2): uni100 and full ranking.

Ranks are pessimistic: a candidate scoring equal to the true item beats it, and a
non-finite true-item score ranks last, so a NaN-producing model scores 0, not 100.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor, nn

from td3core.data.samples import Samples, Split

KS = (5, 10, 20)


def sample_negatives(
    samples: Samples, sequences: list[np.ndarray], n_items: int, n: int = 100, seed: int = 0
) -> Tensor:
    """[N, n] distinct items per sample, uniform over 1..n_items minus every item in
    that user's whole sequence; the same seed gives the same negatives.

    A user who has seen all but m < n items gets those m items followed by n - m
    zeros (the padding id, never a candidate: `evaluate` masks it) and a warning,
    so small catalogues still evaluate instead of failing the job.
    """
    rng = np.random.default_rng(seed)
    users = samples.users.cpu().numpy()
    out = np.zeros((len(users), n), dtype=np.int64)
    short = 0
    for row, user in enumerate(users):
        seen = np.unique(sequences[user])
        free = n_items - len(seen)
        if free < 2 * n or 2 * free < n_items:  # rejection would be slow: use the complement
            pool = np.setdiff1d(np.arange(1, n_items + 1), seen, assume_unique=True)
            take = min(n, len(pool))
            out[row, :take] = rng.choice(pool, size=take, replace=False)
            short += take < n
            continue
        chosen = np.empty(0, dtype=np.int64)
        while len(chosen) < n:  # rejection sampling: >= half the catalogue is free
            draw = rng.integers(1, n_items + 1, size=2 * n)
            draw = draw[~np.isin(draw, seen, assume_unique=False)]
            merged = np.concatenate([chosen, draw])
            _, first = np.unique(merged, return_index=True)
            chosen = merged[np.sort(first)]  # distinct, in draw order
        out[row] = chosen[:n]
    if short:
        warnings.warn(
            f"{short} sample(s) have fewer than {n} unseen items; their negatives "
            "are padded with 0 and masked out",
            stacklevel=2,
        )
    return torch.from_numpy(out)


def ranks_from_scores(
    target_scores: Tensor, candidate_scores: Tensor, candidate_mask: Tensor | None = None
) -> Tensor:
    """Pessimistic rank [N] = 1 + #(valid candidates scoring >= the target).

    A NaN candidate counts as beating the target; a non-finite target ranks last
    (after every valid candidate).
    """
    target = target_scores.unsqueeze(-1)  # [N, 1]
    beats = ~(candidate_scores < target)  # [N, C]; True for ties and NaN candidates
    if candidate_mask is not None:
        beats = beats & candidate_mask
        count = candidate_mask.sum(-1)
    else:
        count = torch.full_like(target_scores, candidate_scores.shape[-1], dtype=torch.long)
    ranks = 1 + beats.sum(-1)
    return torch.where(torch.isfinite(target_scores), ranks, count + 1).long()


def metrics_from_ranks(ranks: Tensor, ks: Sequence[int] = KS) -> dict[str, float]:
    """HR@k, NDCG@k, MRR@k in percent, averaged over samples."""
    if ranks.numel() == 0:
        raise ValueError("no ranks to average")
    r = ranks.double()
    out: dict[str, float] = {}
    for k in ks:
        hit = r <= k
        out[f"HR@{k}"] = 100.0 * hit.double().mean().item()
        out[f"NDCG@{k}"] = 100.0 * torch.where(hit, 1.0 / torch.log2(r + 1), 0.0).mean().item()
        out[f"MRR@{k}"] = 100.0 * torch.where(hit, 1.0 / r, 0.0).mean().item()
    return out


def _model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def _prefix_mask(batch: Samples, sequences: list[np.ndarray], n_items: int) -> Tensor:
    """[B, n_items+1] True where an item is a full-ranking candidate: not padding, not
    the target, not anything the user saw before the target."""
    rows, cols = [], []
    for row, (user, pos) in enumerate(
        zip(batch.users.tolist(), batch.positions.tolist(), strict=True)
    ):
        prefix = sequences[user][:pos]
        rows.append(np.full(len(prefix), row))
        cols.append(prefix)
    mask = torch.ones(len(batch), n_items + 1, dtype=torch.bool)
    mask[:, 0] = False
    mask[
        torch.from_numpy(np.concatenate(rows)).long(), torch.from_numpy(np.concatenate(cols)).long()
    ] = False
    mask[torch.arange(len(batch)), batch.targets.cpu()] = False
    return mask


@runtime_checkable
class Scorer(Protocol):
    """What evaluation needs of a model: scores over all items for histories."""

    def score_all(self, items: Tensor, lengths: Tensor) -> Tensor:  # [B, n_items+1]
        ...


def evaluate(
    model: nn.Module,
    samples: Samples,
    split: Split,
    negatives: Tensor | None,
    *,
    ks: Sequence[int] = KS,
    full_ranking: bool = True,
    batch_size: int = 512,
    device: torch.device | str | None = None,
) -> dict[str, dict[str, float]]:
    """Metrics of `model.score_all(items, lengths)` on `samples`:
    {"uni100": {...}, "full": {...}} (each protocol only if asked for)."""
    if not isinstance(model, Scorer):
        raise TypeError(f"{type(model).__name__} has no score_all(items, lengths)")
    device = torch.device(device) if device is not None else _model_device(model)
    was_training = model.training
    model.eval()
    uni, full = [], []
    try:
        with torch.no_grad():
            for start in range(0, len(samples), batch_size):
                index = torch.arange(start, min(start + batch_size, len(samples)))
                batch = samples.select(index)
                # Ranked where they were scored: only ranks leave the device (a batch's
                # scores over a million items would be 2 GB to copy).
                scores = model.score_all(batch.history.to(device), batch.lengths.to(device))
                scores = scores.float()  # [B, n_items+1]
                targets = batch.targets.to(device).unsqueeze(1)
                target = scores.gather(1, targets).squeeze(1)  # [B]
                if negatives is not None:
                    neg = negatives[index].to(device)  # [B, n]
                    uni.append(ranks_from_scores(target, scores.gather(1, neg), neg > 0).cpu())
                if full_ranking:
                    mask = _prefix_mask(batch, split.sequences, split.n_items).to(device)
                    full.append(ranks_from_scores(target, scores, mask).cpu())
    finally:
        model.train(was_training)
    out: dict[str, dict[str, float]] = {}
    if uni:
        out["uni100"] = metrics_from_ranks(torch.cat(uni), ks)
    if full:
        out["full"] = metrics_from_ranks(torch.cat(full), ks)
    return out
