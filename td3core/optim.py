"""A functional Adam whose steps can be differentiated through.

Same update as `torch.optim.Adam` (L2 weight decay added to the gradient, bias
correction, eps outside the square root), written on tensors so the inner loop of
the distillation can build a graph through W consecutive steps.

The inner loop holds a learner's parameters in one flat buffer (`Layout`): one Adam
update is then a dozen tensor ops instead of a dozen per parameter tensor, which is
what an inner step of a small model costs on a CPU (per-op overhead, not arithmetic).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

Params = dict[str, torch.Tensor]


@dataclass
class AdamState:
    step: int
    exp_avg: Params
    exp_avg_sq: Params

    @classmethod
    def zeros_like(cls, params: Params) -> AdamState:
        return cls(
            step=0,
            exp_avg={k: torch.zeros_like(v) for k, v in params.items()},
            exp_avg_sq={k: torch.zeros_like(v) for k, v in params.items()},
        )

    def detached(self) -> AdamState:
        return AdamState(
            step=self.step,
            exp_avg={k: v.detach() for k, v in self.exp_avg.items()},
            exp_avg_sq={k: v.detach() for k, v in self.exp_avg_sq.items()},
        )


@dataclass(frozen=True)
class Layout:
    """Where each named parameter lives in a flat buffer (in `names` order)."""

    names: tuple[str, ...]
    shapes: tuple[torch.Size, ...]

    @classmethod
    def of(cls, params: Params) -> Layout:
        return cls(tuple(params), tuple(v.shape for v in params.values()))

    @property
    def sizes(self) -> list[int]:
        return [shape.numel() for shape in self.shapes]

    def flatten(self, params: Params) -> torch.Tensor:
        """One new 1-d tensor holding `params` (differentiable: a single cat)."""
        return torch.cat([params[name].reshape(-1) for name in self.names])

    def views(self, flat: torch.Tensor) -> Params:
        """Per-parameter views of `flat`. `split` is one autograd node whose backward
        is one cat, so gradients w.r.t. `flat` cost no per-parameter zero-filling."""
        parts = flat.split(self.sizes)
        return {n: p.view(s) for n, p, s in zip(self.names, parts, self.shapes, strict=True)}

    def flatten_state(self, state: AdamState) -> tuple[torch.Tensor, torch.Tensor]:
        return self.flatten(state.exp_avg), self.flatten(state.exp_avg_sq)


def _sqrt_zero_safe(x: torch.Tensor) -> torch.Tensor:
    """sqrt whose gradient at 0 is 0 instead of inf.

    A parameter that never received gradient (the padding embedding row) has a
    second moment of exactly 0; d sqrt(v)/dv = inf there would turn the
    meta-gradient into NaN. `higher` masks those entries the same way."""
    positive = x > 0
    return torch.where(positive, torch.where(positive, x, torch.ones_like(x)).sqrt(), 0.0)


def adam_update(
    param: torch.Tensor,
    grad: torch.Tensor,
    exp_avg: torch.Tensor,
    exp_avg_sq: torch.Tensor,
    *,
    step: int,
    lr: float,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Adam step number `step` (from 1) on one tensor: (param, exp_avg, exp_avg_sq),
    all new tensors. `step` is a Python int, so nothing waits for the device."""
    beta1, beta2 = betas
    bias1 = 1 - beta1**step
    bias2_sqrt = (1 - beta2**step) ** 0.5
    if weight_decay:
        grad = grad + weight_decay * param
    avg = beta1 * exp_avg + (1 - beta1) * grad
    avg_sq = beta2 * exp_avg_sq + (1 - beta2) * grad * grad
    denom = _sqrt_zero_safe(avg_sq) / bias2_sqrt + eps
    return param - (lr / bias1) * avg / denom, avg, avg_sq


def adam_step(
    params: Params,
    grads: Params,
    state: AdamState,
    *,
    lr: float,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.0,
) -> tuple[Params, AdamState]:
    """One Adam step on named tensors; returns new tensors (nothing is modified in place)."""
    step = state.step + 1
    new_params, new_avg, new_avg_sq = {}, {}, {}
    for name, param in params.items():
        new_params[name], new_avg[name], new_avg_sq[name] = adam_update(
            param,
            grads[name],
            state.exp_avg[name],
            state.exp_avg_sq[name],
            step=step,
            lr=lr,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
        )
    return new_params, AdamState(step, new_avg, new_avg_sq)
