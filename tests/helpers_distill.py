"""A tiny, fast distillation setup shared by the distillation tests."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import cache
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch.func import functional_call

from td3core.config import DistillConfig, ModelConfig, TrainConfig
from td3core.data import PreprocessConfig, build_dataset, generate_interactions, leave_one_out
from td3core.distill import Distiller, seed_for
from td3core.evaluation import sample_negatives
from td3core.inner import inner_learner, kl_all_loss, summary_loss
from td3core.models.sasrec import SASRec
from td3core.optim import AdamState, Params, adam_step
from td3core.teacher import Teacher, train_teacher

NO_DROPOUT = ModelConfig(hidden=8, inner=16, attn_dropout=0.0, hidden_dropout=0.0)
WITH_DROPOUT = ModelConfig(hidden=8, inner=16)


@contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


@cache
def tiny_split(max_len: int = 8):
    inter = generate_interactions(n_users=40, n_items=30, mean_length=10, seed=3)
    dataset = build_dataset(inter, PreprocessConfig(kcore="none"))
    split = leave_one_out(dataset, max_len)
    negatives = sample_negatives(split.valid, split.sequences, split.n_items, n=10, seed=1)
    return split, negatives


@cache
def tiny_teacher(model: ModelConfig, dtype: torch.dtype) -> Teacher:
    split, negatives = tiny_split()
    with default_dtype(dtype):
        recipe = TrainConfig(max_steps=12, eval_every=6, batch_size=64)
        return train_teacher(split, negatives, model, recipe, pool_epochs=(1, 4))


def selection_metric(summary: torch.nn.Module) -> float:
    """The tests' stand-in for validation MRR@10 (>= 0, like it): the factors' L1 norm."""
    return float(sum(p.detach().abs().sum() for p in summary.parameters()))


def distiller(
    model: ModelConfig = NO_DROPOUT,
    *,
    state: bytes | None = None,
    device: str = "cpu",
    cuda_graphs: bool = False,
    **overrides,
) -> Distiller:
    """A Distiller on the tiny split, in the current default dtype (`state`: continue
    that checkpoint). Selection is a deterministic function of the factors: these tests
    are about the outer loop."""
    settings = dict(
        users=6,
        length=8,
        epochs=2,
        inner_steps=6,
        window=3,
        real_batch=96,
        synthetic_batch=4,
        rank=3,
        # The paper's Algorithm 1 (FSA and pool learners are off by default), so the
        # engines' checks cover the whole outer loss and the pool draws.
        fsa=True,
        fresh_learners=0.0,
        init="random",
    )
    settings.update(overrides)
    split, _ = tiny_split()
    teacher = tiny_teacher(model, torch.get_default_dtype())
    return Distiller(
        DistillConfig(**settings),
        split,
        teacher,
        model,
        select=selection_metric,
        state=state,
        device=device,
        cuda_graphs=cuda_graphs,
    )


def assert_same_meta_steps(
    first: Distiller,
    second: Distiller,
    *,
    steps: int,
    loss_tol: tuple[float, float],
    grad_tol: tuple[float, float],
) -> list[int]:
    """`steps` outer steps of two distillers that must compute the same thing: each
    step the same plain steps, loss, CE and FSA (within `loss_tol`: rtol, atol) and
    meta-gradient w.r.t. every factor (within `grad_tol`; each factor's nonzero).
    Returns the plain steps drawn."""
    plain = []
    rtol, atol = loss_tol
    for _ in range(steps):
        a, b = first.meta_loss(), second.meta_loss()
        assert a.plain_steps == b.plain_steps
        plain.append(a.plain_steps)
        for field in ("loss", "ce", "fsa"):
            torch.testing.assert_close(  # on the host: the two may run on different devices
                getattr(b, field).cpu(), getattr(a, field).cpu(), rtol=rtol, atol=atol
            )
        names = [name for name, _ in first.summary.named_parameters()]
        for name, ga, gb in zip(
            names,
            torch.autograd.grad(a.loss, list(first.summary.parameters())),
            torch.autograd.grad(b.loss, list(second.summary.parameters())),
            strict=True,
        ):
            assert ga.abs().max() > 0, name
            torch.testing.assert_close(gb.cpu(), ga.cpu(), rtol=grad_tol[0], atol=grad_tol[1])
        first.outer_step()
        second.outer_step()
    return plain


class _Apply(torch.nn.Module):
    def __init__(self, model: SASRec):
        super().__init__()
        self.model = model

    def forward(self, fn: Callable[[SASRec], torch.Tensor]) -> torch.Tensor:
        return fn(self.model)


class Reference(NamedTuple):
    loss: torch.Tensor  # the outer loss
    after_plain: Params  # the learner after the ordinary steps
    after_window: Params  # and after the differentiable ones


def reference_meta_loss(d: Distiller) -> Reference:
    """The outer loss of `d`'s current step through the straightforward engine the
    fast one replaced: `torch.func.functional_call`, one Adam update per parameter
    tensor, the KL inner loss with ALT positions drawn step by step, a fresh Adam.
    Same random draws as `Distiller.meta_loss` (dropout included), so the two must
    agree."""
    cfg, s = d.config, d.step
    epoch, index = divmod(s, d.steps_per_epoch)
    gen = torch.Generator().manual_seed(seed_for(cfg.seed, 1, s))
    real = d._real_batch(epoch, index)
    params = d._initial_learner(epoch, index, gen)
    adam = AdamState.zeros_like(params)
    plain = int(torch.randint(0, cfg.inner_steps - cfg.window + 1, (1,), generator=gen))
    model = SASRec.from_config(d.split.n_items, d.split.max_len, d.model_config)
    learner = _Apply(inner_learner(model))  # the distiller's dropout
    learner.train()

    def run(params: Params, fn: Callable[[SASRec], torch.Tensor]) -> torch.Tensor:
        return functional_call(learner, {f"model.{k}": v for k, v in params.items()}, (fn,))

    def steps(params: Params, adam: AdamState, count: int, differentiable: bool):
        with torch.set_grad_enabled(differentiable):
            batches = [d.summary.probs(users) for users in d.synthetic_batches]
        for t in range(count):
            if not differentiable:
                params = {k: v.detach().requires_grad_(True) for k, v in params.items()}
            probs = batches[t % len(batches)]
            if cfg.inner_objective == "kl-all":
                objective = functools.partial(kl_all_loss, probs=probs)
            else:
                objective = functools.partial(summary_loss, probs=probs, alt=cfg.alt, generator=gen)
            loss = run(params, objective)
            grads = torch.autograd.grad(loss, list(params.values()), create_graph=differentiable)
            with torch.set_grad_enabled(differentiable):
                params, adam = adam_step(
                    params,
                    dict(zip(params, grads, strict=True)),
                    adam,
                    lr=cfg.inner_lr,
                    eps=cfg.inner_eps,
                    weight_decay=cfg.inner_weight_decay,
                )
        return params, adam

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed_for(cfg.seed, 2, s))
        after_plain, adam = steps(params, adam, plain, differentiable=False)
        params = {k: v.detach().requires_grad_(True) for k, v in after_plain.items()}
        # the ordinary steps ran without grad: their moments are already detached
        params, _ = steps(params, adam, cfg.window, differentiable=True)
        batch = d.train.select(real)

        def outer(m: SASRec) -> torch.Tensor:
            # The library's outer loss (test_sasrec checks last_only against the full pass).
            features = m.last_features(batch.history, batch.lengths, last_only=True)
            ce = F.cross_entropy(m.logits(features)[:, 1:], batch.targets - 1)
            return torch.stack([ce, F.mse_loss(features, d.teacher_features[real])])

        ce, fsa = run(params, outer)
    loss = ce + cfg.fsa_weight * fsa if cfg.fsa else ce
    return Reference(loss, {k: v.detach() for k, v in after_plain.items()}, params)
