"""The fast inner loop computes what the straightforward one computed.

Reference: `helpers_distill.reference_meta_loss` (functional_call, per-tensor Adam,
KL loss); the `higher` backend is compared in test_distill.py. float64 so that
the comparison sees the algorithm, not float32 rounding.
"""

import pytest
import torch
from helpers_distill import (
    NO_DROPOUT,
    WITH_DROPOUT,
    default_dtype,
    distiller,
    reference_meta_loss,
)
from torch.func import functional_call

from td3core.inner import (
    BoundLearner,
    SoftSequences,
    UniformDropout,
    inner_learner,
    inner_loss,
    kl_all_loss,
    summary_loss,
)
from td3core.models.sasrec import SASRec
from td3core.optim import Layout

FACTORS = ("G", "U", "T")


def _grads(loss: torch.Tensor, d) -> dict[str, torch.Tensor]:
    return dict(
        zip(
            FACTORS,
            torch.autograd.grad(loss, [getattr(d.summary, k) for k in FACTORS]),
            strict=True,
        )
    )


@pytest.mark.parametrize("model", [NO_DROPOUT, WITH_DROPOUT], ids=["no-dropout", "dropout"])
@pytest.mark.parametrize("learner_draw", ["step", "epoch"])
@pytest.mark.parametrize("inner_steps", [3, 9])  # 3 = window only; 9 = plain steps first
@pytest.mark.parametrize("objective", ["inner", "kl-all"])
def test_meta_gradient_equals_the_straightforward_engine(
    model, learner_draw, inner_steps, objective
):
    with default_dtype(torch.float64):
        d = distiller(
            model,
            inner_steps=inner_steps,
            learner_draw=learner_draw,
            epochs=1,
            real_batch=64,
            inner_objective=objective,
        )
        for _ in range(2):  # the second step of "epoch" continues the carried learner
            fast = d.meta_loss()
            ours = _grads(fast.loss, d)
            theirs = _grads(reference_meta_loss(d).loss, d)
            assert inner_steps > 3 or fast.plain_steps == 0
            for name in FACTORS:
                assert theirs[name].abs().max() > 0
                torch.testing.assert_close(ours[name], theirs[name], rtol=1e-9, atol=1e-15)
            d.outer_step()
        assert d._carried is not None or learner_draw == "step"


def test_epoch_draw_carries_the_learner_after_the_ordinary_steps():
    # Not the learner after the window: its steps are not carried (the authors' code).
    with default_dtype(torch.float64):
        d = distiller(WITH_DROPOUT, inner_steps=9, learner_draw="epoch", epochs=1, real_batch=64)
        plain_steps = []
        for _ in range(3):
            expected = reference_meta_loss(d)
            plain_steps.append(d.outer_step()["plain_steps"])
            assert d._carried is not None
            for name, value in d._carried.items():
                torch.testing.assert_close(value, expected.after_plain[name], rtol=1e-9, atol=1e-12)
            window = expected.after_window
            assert any(not torch.allclose(d._carried[n], window[n].detach()) for n in window)
        assert any(plain_steps)


def test_some_draws_have_plain_steps():
    # Guards the parametrisation above: 9 inner steps with window 3 must reach the
    # plain-step path for at least one of the steps it checks.
    d = distiller(inner_steps=9, learner_draw="step", epochs=1, real_batch=64)
    assert any(d.outer_step()["plain_steps"] > 0 for _ in range(2))


def test_cross_entropy_inner_loss_has_the_kl_gradient():
    torch.manual_seed(0)
    model = SASRec(30, 8, hidden=8, inner=16, attn_dropout=0.0, hidden_dropout=0.0)
    probs = torch.nn.functional.pad(torch.softmax(torch.randn(4, 8, 30), -1), (1, 0))
    kl = summary_loss(model, probs, alt=True, generator=torch.Generator().manual_seed(1))
    drawn = torch.randint(5, 7, (4,), generator=torch.Generator().manual_seed(1))  # the same
    ce = inner_loss(model, SoftSequences.of(probs), drawn)
    params = list(model.parameters())
    for a, b in zip(torch.autograd.grad(kl, params), torch.autograd.grad(ce, params), strict=True):
        torch.testing.assert_close(a, b)
    # and summary_loss is the KL of the paper, term by term
    features = model.sequence_features(probs=probs[:, :-1])
    rows = torch.arange(4)

    def kl_term(feats, target):
        logp = torch.log_softmax(model.logits(feats)[:, 1:], -1)
        return torch.nn.functional.kl_div(logp, target[:, 1:], reduction="batchmean")

    expected = (
        kl_term(features[:, -1], probs[:, -1])
        + kl_term(features[rows, drawn - 1], probs[rows, drawn])
    ) / 2
    torch.testing.assert_close(kl, expected)


def test_every_position_loss_is_the_kl_at_every_position_and_has_its_gradient():
    torch.manual_seed(0)
    model = SASRec(30, 8, hidden=8, inner=16, attn_dropout=0.0, hidden_dropout=0.0)
    probs = torch.nn.functional.pad(torch.softmax(torch.randn(4, 8, 30), -1), (1, 0))
    kl = kl_all_loss(model, probs)
    features = model.sequence_features(probs=probs[:, :-1])  # [4, 7, 8]
    terms = [
        torch.nn.functional.kl_div(
            torch.log_softmax(model.logits(features[:, t])[:, 1:], -1),
            probs[:, t + 1, 1:],
            reduction="batchmean",
        )
        for t in range(7)
    ]
    torch.testing.assert_close(kl, torch.stack(terms).mean())
    ce = inner_loss(model, SoftSequences.of(probs), everywhere=True)
    targets = probs[:, 1:, 1:]
    entropy = -torch.special.xlogy(targets, targets).sum() / (4 * 7)
    torch.testing.assert_close(ce - entropy, kl)
    params = list(model.parameters())
    for a, b in zip(torch.autograd.grad(kl, params), torch.autograd.grad(ce, params), strict=True):
        torch.testing.assert_close(a, b)


def test_every_position_objective_draws_no_alt_positions():
    d = distiller(inner_objective="kl-all")
    assert d._alt_positions(5, torch.Generator().manual_seed(0)) == [None] * 5
    assert all(p is not None for p in distiller()._alt_positions(5, torch.Generator()))


def test_bound_learner_is_functional_call():
    torch.manual_seed(0)
    model = SASRec(30, 8, hidden=8, inner=16, attn_dropout=0.0, hidden_dropout=0.0)
    params = {k: torch.randn_like(v) for k, v in model.named_parameters()}
    probs = torch.softmax(torch.randn(3, 7, 31), -1)
    expected = functional_call(model, params, (), {"probs": probs})
    shell = BoundLearner(SASRec(30, 8, hidden=8, inner=16, attn_dropout=0.0, hidden_dropout=0.0))
    torch.testing.assert_close(shell(params)(probs=probs), expected)


def test_layout_views_share_the_flat_buffer_and_its_gradient():
    params = {"a": torch.randn(2, 3), "b": torch.randn(4)}
    layout = Layout.of(params)
    flat = layout.flatten(params).requires_grad_(True)
    views = layout.views(flat)
    for name in params:
        assert torch.equal(views[name], params[name])
        assert views[name].data_ptr() >= flat.data_ptr()
    (grad,) = torch.autograd.grad((views["a"] * 2).sum() + (views["b"] * 3).sum(), flat)
    assert torch.equal(grad, torch.tensor([2.0] * 6 + [3.0] * 4))


def test_uniform_dropout_is_dropout():
    torch.manual_seed(0)
    drop = UniformDropout(0.3)
    x = torch.ones(200_000)
    y = drop(x)
    kept = y != 0
    assert kept.float().mean().item() == pytest.approx(0.7, abs=0.005)
    torch.testing.assert_close(y[kept], torch.full_like(y[kept], 1 / 0.7))
    assert torch.equal(drop.eval()(x), x)
    model = inner_learner(SASRec(30, 8, hidden=8, inner=16))
    assert not any(type(m) is torch.nn.Dropout for m in model.modules())
    assert sum(isinstance(m, UniformDropout) for m in model.modules()) == 4
