import pytest
import torch

from td3core.optim import (
    AdamState,
    Layout,
    _adam_formula,
    _AdamUpdate,
    _Hyper,
    adam_step,
    adam_update,
)


@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_functional_adam_follows_torch_adam(weight_decay):
    torch.manual_seed(0)
    target = torch.randn(5, 3)
    reference = torch.randn(5, 3, requires_grad=True)
    ours = {"w": reference.detach().clone()}
    state = AdamState.zeros_like(ours)
    optimizer = torch.optim.Adam([reference], lr=0.05, weight_decay=weight_decay)
    for _ in range(25):
        optimizer.zero_grad()
        ((reference - target) ** 3).abs().sum().backward()
        optimizer.step()
        w = ours["w"].requires_grad_(True)
        (grad,) = torch.autograd.grad(((w - target) ** 3).abs().sum(), [w])
        ours, state = adam_step(
            {"w": w.detach()}, {"w": grad}, state, lr=0.05, weight_decay=weight_decay
        )
    torch.testing.assert_close(ours["w"], reference.detach(), rtol=1e-5, atol=1e-6)
    assert state.step == 25


def test_adam_step_is_differentiable_and_finite_for_zero_gradients():
    # A parameter that never gets gradient (the padding row) must not turn the
    # meta-gradient into NaN through d sqrt(v) / dv at v = 0.
    x = torch.tensor([1.0, 2.0], requires_grad=True)
    params = {"w": torch.zeros(2, requires_grad=True)}
    state = AdamState.zeros_like(params)
    grads = {"w": x * torch.tensor([1.0, 0.0])}
    new, _ = adam_step(params, grads, state, lr=0.1)
    (dx,) = torch.autograd.grad(new["w"].sum(), [x])
    assert torch.isfinite(dx).all()
    assert dx[1] == 0


def test_adam_step_does_not_modify_its_inputs():
    params = {"w": torch.ones(3)}
    state = AdamState.zeros_like(params)
    adam_step(params, {"w": torch.ones(3)}, state, lr=0.1)
    assert torch.equal(params["w"], torch.ones(3))
    assert state.step == 0 and torch.equal(state.exp_avg["w"], torch.zeros(3))


def test_one_flat_update_equals_per_tensor_updates():
    torch.manual_seed(0)
    params = {"a": torch.randn(2, 3), "b": torch.randn(4)}
    grads = {k: torch.randn_like(v) for k, v in params.items()}
    state = AdamState(3, {k: torch.rand_like(v) for k, v in params.items()}, {})
    state.exp_avg_sq.update({k: torch.rand_like(v) for k, v in params.items()})
    settings = dict(lr=0.1, eps=1e-8, weight_decay=0.01)
    expected, expected_state = adam_step(params, grads, state, **settings)
    layout = Layout.of(params)
    flat = adam_update(
        layout.flatten(params),
        layout.flatten(grads),
        *layout.flatten_state(state),
        step=4,
        **settings,
    )
    for got, want in zip(
        flat,
        (expected, expected_state.exp_avg, expected_state.exp_avg_sq),
        strict=True,
    ):
        for name, value in layout.views(got).items():
            assert torch.equal(value, want[name])


@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_the_one_node_adam_update_has_autograds_gradient(weight_decay):
    torch.manual_seed(0)
    inputs = [torch.randn(6, dtype=torch.float64, requires_grad=True) for _ in range(3)]
    avg_sq = torch.rand(6, dtype=torch.float64)
    avg_sq[:2] = 0.0  # never-updated entries: gradient 0, not NaN
    grad = inputs[1].detach().clone()
    grad[:2] = 0.0
    inputs[1] = grad.requires_grad_(True)
    inputs.append(avg_sq.requires_grad_(True))
    h = _Hyper(step=3, lr=0.1, betas=(0.9, 0.999), eps=1e-8, weight_decay=weight_decay)
    weights = [torch.randn(6, dtype=torch.float64) for _ in range(3)]

    def vjp(outputs):
        total = sum((o * w).sum() for o, w in zip(outputs, weights, strict=True))
        return torch.autograd.grad(total, inputs)

    ours = vjp(_AdamUpdate.apply(*inputs, h))
    reference = vjp(_adam_formula(*inputs, h))
    for a, b in zip(ours, reference, strict=True):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, b)
