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


@dataclass(frozen=True)
class _Hyper:
    step: int | torch.Tensor
    lr: float
    betas: tuple[float, float]
    eps: float
    weight_decay: float

    @property
    def bias1(self) -> float | torch.Tensor:
        return 1 - self.betas[0] ** self.step

    @property
    def bias2_sqrt(self) -> float | torch.Tensor:
        return (1 - self.betas[1] ** self.step) ** 0.5


def _adam_formula(
    param: torch.Tensor,
    grad: torch.Tensor,
    exp_avg: torch.Tensor,
    exp_avg_sq: torch.Tensor,
    h: _Hyper,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The update, written once (autograd can differentiate it: the tests do)."""
    beta1, beta2 = h.betas
    if h.weight_decay:
        grad = grad + h.weight_decay * param
    avg = beta1 * exp_avg + (1 - beta1) * grad
    avg_sq = beta2 * exp_avg_sq + (1 - beta2) * grad * grad
    denom = _sqrt_zero_safe(avg_sq) / h.bias2_sqrt + h.eps
    return param - (h.lr / h.bias1) * avg / denom, avg, avg_sq


class _AdamUpdate(torch.autograd.Function):
    """`_adam_formula` as ONE autograd node with a hand-written backward.

    Through W differentiable inner steps autograd would record ~20 elementwise
    nodes per step and replay ~35 in the outer backward; here each is one node, and
    its backward a handful of fused-size ops. The meta-gradient differentiates each
    step once, so the backward need not be differentiable itself."""

    @staticmethod
    def forward(ctx, param, grad, exp_avg, exp_avg_sq, h: _Hyper):
        new_param, avg, avg_sq = _adam_formula(param, grad, exp_avg, exp_avg_sq, h)
        ctx.h = h
        ctx.save_for_backward(param, grad, avg, avg_sq)
        return new_param, avg, avg_sq

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, d_param, d_avg, d_avg_sq):  # unused outputs arrive as zeros
        # new = param - c * avg / denom, denom = sqrt0(avg_sq) / b2 + eps, c = lr / bias1
        param, grad, avg, avg_sq = ctx.saved_tensors
        h: _Hyper = ctx.h
        beta1, beta2 = h.betas
        c = h.lr / h.bias1
        root = _sqrt_zero_safe(avg_sq)
        denom = root / h.bias2_sqrt + h.eps
        step = c * d_param / denom  # -d new / d avg, times d_param
        d_avg = d_avg - step
        # d new / d avg_sq = c * avg / denom^2 / (2 sqrt(avg_sq) b2); 0 where avg_sq = 0
        safe_root = torch.where(root > 0, root, torch.ones_like(root))
        d_root = torch.where(root > 0, step * avg / denom / (2 * safe_root * h.bias2_sqrt), 0.0)
        d_avg_sq = d_avg_sq + d_root
        full_grad = grad + h.weight_decay * param if h.weight_decay else grad
        d_grad = (1 - beta1) * d_avg + (2 * (1 - beta2)) * full_grad * d_avg_sq
        d_param_in = d_param + h.weight_decay * d_grad if h.weight_decay else d_param
        return d_param_in, d_grad, beta1 * d_avg, beta2 * d_avg_sq, None


def adam_update(
    param: torch.Tensor,
    grad: torch.Tensor,
    exp_avg: torch.Tensor,
    exp_avg_sq: torch.Tensor,
    *,
    step: int | torch.Tensor,
    lr: float,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Adam step number `step` (from 1) on one tensor: (param, exp_avg, exp_avg_sq),
    all new tensors. Differentiable once w.r.t. all four tensors (one autograd
    node). `step`: a Python int, so nothing waits for the device, or a 0-d tensor
    in the parameters' dtype (a replayed CUDA graph reads it from the device)."""
    h = _Hyper(step, lr, betas, eps, weight_decay)
    if torch.is_grad_enabled() and any(t.requires_grad for t in (param, grad, exp_avg, exp_avg_sq)):
        return _AdamUpdate.apply(param, grad, exp_avg, exp_avg_sq, h)
    return _adam_formula(param, grad, exp_avg, exp_avg_sq, h)


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
