"""The one training recipe every model gets (teacher, baselines, learners on a
summary), so comparisons between them are fair.

Adam; the validation metric (higher is better) every `eval_every` steps and at the
end; early stop after `patience` evaluations without improvement; at most
`max_steps` steps; the best state is restored into the model at the end.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from td3core.config import TrainConfig
from td3core.data.samples import Samples, Split
from td3core.evaluation import evaluate
from td3core.models import OwnTrainingLoss, Recommender, recommender

LossFn = Callable[[nn.Module, int], Tensor]
StepHook = Callable[[int, nn.Module], None]


@dataclass
class FitResult:
    best_metric: float
    best_step: int  # 0: no evaluation improved on -inf (e.g. all NaN); model left as trained
    steps: int
    history: list[dict] = field(default_factory=list)  # {"step", "loss", "metric"} per eval
    seconds: float = 0.0
    stop_reason: str = "max_steps"  # "max_steps" | "patience" | "should_stop"


def state_copy(model: nn.Module) -> dict[str, Tensor]:
    """A detached copy of the state_dict (on the same device)."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def fit(
    model: nn.Module,
    loss_fn: LossFn,
    validate: Callable[[nn.Module], float],
    cfg: TrainConfig,
    *,
    on_step: StepHook | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> FitResult:
    """Train `model` with `loss_fn(model, step)` (the loss of one batch, step from 1).

    Seeds the global torch RNG from cfg.seed so dropout is reproducible; data
    choices belong to `loss_fn`, which should draw them from its own generator.
    """
    torch.manual_seed(cfg.seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    start = time.perf_counter()
    result = FitResult(best_metric=-math.inf, best_step=0, steps=0)
    best_state: dict[str, Tensor] | None = None
    bad_evals, last_eval, loss_value = 0, 0, math.nan

    def run_validation(step: int) -> bool:
        """Evaluate; True when patience is exhausted."""
        nonlocal best_state, bad_evals, last_eval
        metric = float(validate(model))
        last_eval = step
        result.history.append({"step": step, "loss": loss_value, "metric": metric})
        if metric > result.best_metric:  # NaN never improves
            result.best_metric, result.best_step = metric, step
            best_state = state_copy(model)
            bad_evals = 0
        else:
            bad_evals += 1
        return bad_evals >= cfg.patience

    for step in range(1, cfg.max_steps + 1):
        if should_stop is not None and should_stop():
            result.stop_reason = "should_stop"
            break
        model.train()
        loss = loss_fn(model, step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_value = float(loss.detach())
        result.steps = step
        if on_step is not None:
            on_step(step, model)
        if step % cfg.eval_every == 0 and run_validation(step):
            result.stop_reason = "patience"
            break

    if result.steps > last_eval:  # the final state is always validated
        run_validation(result.steps)
    if best_state is not None:
        model.load_state_dict(best_state)
    else:
        result.best_metric = math.nan
    result.seconds = time.perf_counter() - start
    return result


def next_item_loss(model: Recommender, batch: Samples) -> Tensor:
    """Full-softmax cross-entropy of the next item over items 1..n (padding dropped)."""
    logits = model.logits(model.last_features(batch.history, batch.lengths))  # [B, n+1]
    return F.cross_entropy(logits[:, 1:], batch.targets - 1)


def sample_loss(model: nn.Module, batch: Samples, generator: torch.Generator) -> Tensor:
    """The model's own objective when it defines one (BERT4Rec's cloze task, which
    draws its masks from `generator`), else next-item cross-entropy."""
    if isinstance(model, OwnTrainingLoss):
        return model.training_loss(batch, generator)
    return next_item_loss(recommender(model), batch)


def epoch_batches(n: int, batch_size: int, generator: torch.Generator) -> Iterator[Tensor]:
    """Endless shuffled epochs of indices 0..n-1 (the last batch of an epoch may be short)."""
    while True:
        order = torch.randperm(n, generator=generator)
        yield from order.split(batch_size)


def steps_per_epoch(n: int, batch_size: int) -> int:
    return math.ceil(n / batch_size)


def train_on_samples(
    model: nn.Module,
    split: Split,
    negatives_valid: Tensor,
    cfg: TrainConfig,
    *,
    device: torch.device | str = "cpu",
    on_step: StepHook | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> FitResult:
    """Training on split.train with the model's objective (`sample_loss`); validation
    = uni100 MRR@10 on split.valid."""
    model.to(device)
    train = split.train.to(device)
    generator = torch.Generator().manual_seed(cfg.seed)
    batches = epoch_batches(len(train), cfg.batch_size, generator)

    def loss_fn(m: nn.Module, step: int) -> Tensor:
        return sample_loss(m, train.select(next(batches).to(device)), generator)

    validate = validation_mrr10(split, negatives_valid, device)
    return fit(model, loss_fn, validate, cfg, on_step=on_step, should_stop=should_stop)


def validation_mrr10(
    split: Split, negatives_valid: Tensor, device: torch.device | str
) -> Callable[[nn.Module], float]:
    """The metric every training run is early-stopped and chosen on: uni100 MRR@10 on
    the validation samples, with the shared negatives (the test split is never seen)."""

    def validate(model: nn.Module) -> float:
        metrics = evaluate(
            model, split.valid, split, negatives_valid, full_ranking=False, ks=(10,), device=device
        )
        return metrics["uni100"]["MRR@10"]

    return validate
