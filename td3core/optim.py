"""A functional Adam whose steps can be differentiated through.

Same update as `torch.optim.Adam` (L2 weight decay added to the gradient, bias
correction, eps outside the square root), written on dicts of tensors so the inner
loop of the distillation can build a graph through W consecutive steps.
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


def _sqrt_zero_safe(x: torch.Tensor) -> torch.Tensor:
    """sqrt whose gradient at 0 is 0 instead of inf.

    A parameter that never received gradient (the padding embedding row) has a
    second moment of exactly 0; d sqrt(v)/dv = inf there would turn the
    meta-gradient into NaN. `higher` masks those entries the same way."""
    positive = x > 0
    return torch.where(positive, torch.where(positive, x, torch.ones_like(x)).sqrt(), 0.0)


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
    """One Adam step; returns new tensors (nothing is modified in place)."""
    beta1, beta2 = betas
    step = state.step + 1
    bias1 = 1 - beta1**step
    bias2_sqrt = (1 - beta2**step) ** 0.5
    new_params, new_avg, new_avg_sq = {}, {}, {}
    for name, param in params.items():
        grad = grads[name]
        if weight_decay:
            grad = grad + weight_decay * param
        avg = beta1 * state.exp_avg[name] + (1 - beta1) * grad
        avg_sq = beta2 * state.exp_avg_sq[name] + (1 - beta2) * grad * grad
        denom = _sqrt_zero_safe(avg_sq) / bias2_sqrt + eps
        new_params[name] = param - (lr / bias1) * avg / denom
        new_avg[name], new_avg_sq[name] = avg, avg_sq
    return new_params, AdamState(step, new_avg, new_avg_sq)
