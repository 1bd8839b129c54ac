import json

import pytest
import torch
from helpers_distill import (
    NO_DROPOUT,
    WITH_DROPOUT,
    assert_same_meta_steps,
    default_dtype,
    distiller,
    selection_metric,
    tiny_split,
)
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from td3core import distill as distill_module
from td3core.config import TrainConfig
from td3core.data.sampling import packed_rows
from td3core.distill import REAL_ROWS_STREAM, WindowReplay, fit_to_items, seed_for
from td3core.errors import Cancelled, ConfigError, DataError
from td3core.learner import train_on_summary
from td3core.optim import AdamState
from td3core.serialization import read_metadata
from td3core.summary import FarziSummary, TuckerSummary


def _meta_gradients(**overrides) -> dict[str, torch.Tensor]:
    d = distiller(NO_DROPOUT, grad_clip=1e6, **overrides)  # no clipping
    d.outer_step()
    return {k: getattr(d.summary, k).grad.clone() for k in ("G", "U", "T")}


@pytest.mark.parametrize("inner_steps", [3, 7])  # 3 = window only; 7 = plain steps first
@pytest.mark.parametrize("objective", ["inner", "kl-all"])
def test_fast_meta_gradient_equals_higher(inner_steps, objective):
    # higher adds Adam's eps before the bias correction, torch.optim.Adam after it;
    # a negligible eps makes the two updates the same function. Without dropout:
    # the two engines draw their dropout masks differently.
    with default_dtype(torch.float64):
        settings = dict(inner_steps=inner_steps, inner_eps=1e-30, inner_objective=objective)
        ours = _meta_gradients(backend="func", **settings)
        theirs = _meta_gradients(backend="higher", **settings)
    for name in ours:
        assert theirs[name].abs().max() > 0
        torch.testing.assert_close(ours[name], theirs[name], rtol=1e-5, atol=0)


def test_meta_gradient_matches_finite_differences():
    with default_dtype(torch.float64):
        d = distiller(NO_DROPOUT, inner_steps=4, window=4)
        meta = d.meta_loss()
        meta.loss.backward()
        h = 1e-6
        for name in ("U", "G"):
            param = getattr(d.summary, name)
            analytic = param.grad.clone()
            flat_index = torch.argsort(analytic.abs().flatten(), descending=True)[:3]
            for i in flat_index.tolist():
                with torch.no_grad():
                    param.view(-1)[i] += h
                up = d.meta_loss().loss.item()
                with torch.no_grad():
                    param.view(-1)[i] -= 2 * h
                down = d.meta_loss().loss.item()
                with torch.no_grad():
                    param.view(-1)[i] += h
                numeric = (up - down) / (2 * h)
                assert numeric == pytest.approx(analytic.view(-1)[i].item(), rel=1e-4)


@pytest.mark.parametrize("real_chunk", [8192, 40], ids=["whole", "in-chunks"])
def test_meta_loss_is_a_pure_function_of_the_state(real_chunk):
    d = distiller(WITH_DROPOUT, real_batch=90, real_chunk=real_chunk)
    first, second = d.meta_loss(), d.meta_loss()
    assert first.loss.item() == second.loss.item()
    factors = list(d.summary.parameters())
    for a, b in zip(
        torch.autograd.grad(first.loss, factors),
        torch.autograd.grad(second.loss, factors),
        strict=True,
    ):
        assert torch.equal(a, b)


@pytest.mark.parametrize("fsa", [True, False])
def test_a_real_batch_read_in_chunks_gives_the_same_meta_gradient(fsa):
    # 90 samples in chunks of 40, 40 and 10: each chunk's mean weighs by its size.
    with default_dtype(torch.float64):
        whole = distiller(NO_DROPOUT, real_batch=90, fsa=fsa)
        chunked = distiller(NO_DROPOUT, real_batch=90, real_chunk=40, fsa=fsa)
        assert_same_meta_steps(
            whole, chunked, steps=2, loss_tol=(1e-12, 0.0), grad_tol=(1e-9, 1e-15)
        )


def _largest_saved_batch(d) -> int:
    """The largest first dimension among the tensors one meta-loss and its backward
    save (what the real batch's activations would show up in)."""
    largest = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal largest
        if t.dim() >= 2:
            largest = max(largest, t.shape[0])
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        d.meta_loss().loss.backward()
    return largest


def test_a_real_batch_read_in_chunks_never_holds_the_whole_batch():
    assert _largest_saved_batch(distiller(NO_DROPOUT, real_batch=90)) >= 90
    assert _largest_saved_batch(distiller(NO_DROPOUT, real_batch=90, real_chunk=40)) <= 40


@pytest.mark.parametrize("real_chunk", [8192, 40], ids=["whole", "in-chunks"])
@pytest.mark.parametrize("objective", ["inner", "kl-all"])
def test_the_replayed_windows_code_gives_the_eager_meta_gradient(real_chunk, objective):
    # What the CUDA graph replays (tests/test_cuda.py captures it on a GPU), run eagerly:
    # static inputs refilled every step, Adam's step count a device scalar, the factors'
    # gradient taken inside and handed back through a surrogate loss. An epoch's last,
    # smaller real batch runs the eager window, and the next whole one replays again.
    settings = dict(real_batch=90, real_chunk=real_chunk, inner_objective=objective, inner_steps=9)
    with default_dtype(torch.float64):
        eager = distiller(NO_DROPOUT, **settings)
        replayed = distiller(NO_DROPOUT, **settings)
        replayed._window_graph = WindowReplay(
            replayed._window_outputs, real_batch=90, capture=False
        )
        replayed_at = set()
        original = WindowReplay.__call__

        def spy(self, *args):
            replayed_at.add(replayed.step)
            return original(self, *args)

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(WindowReplay, "__call__", spy)
            assert_same_meta_steps(
                eager,
                replayed,
                steps=replayed.steps_per_epoch + 1,
                loss_tol=(1e-12, 1e-14),
                grad_tol=(1e-9, 1e-14),
            )
    last = replayed.steps_per_epoch - 1  # the epoch's smaller batch
    assert replayed_at == set(range(replayed.steps_per_epoch + 1)) - {last}


@pytest.mark.parametrize(
    ("learner_draw", "method"), [("step", "tucker"), ("epoch", "tucker"), ("epoch", "farzi")]
)
@pytest.mark.parametrize("stop_after", [2, 3])  # inside the first epoch (3 steps), at its end
def test_resume_gives_the_same_summary_as_an_uninterrupted_run(learner_draw, method, stop_after):
    settings = dict(learner_draw=learner_draw, method=method)
    whole = distiller(WITH_DROPOUT, **settings)
    whole_result = whole.run()
    assert whole.step == whole.total_steps > 3 == whole.steps_per_epoch

    first = distiller(WITH_DROPOUT, **settings)
    first.run(stop_after=stop_after)
    checkpoint = first.state_bytes()
    resumed = distiller(WITH_DROPOUT, **settings)
    resumed.load_state_bytes(checkpoint)
    assert resumed.step == stop_after
    if learner_draw == "epoch":  # the checkpoint holds the carried learner, bit for bit
        assert first._carried is not None and resumed._carried is not None
        for name, value in first._carried.items():
            assert torch.equal(value, resumed._carried[name])
    else:
        assert resumed._carried is None
    resumed_result = resumed.run()

    names = [name for name, _ in whole.summary.named_parameters()]
    assert names == (["latent", "decoder"] if method == "farzi" else ["G", "U", "T"])
    for name in names:  # bit-identical on CPU
        assert torch.equal(getattr(whole.summary, name), getattr(resumed.summary, name))
        assert torch.equal(
            getattr(whole_result.summary, name), getattr(resumed_result.summary, name)
        )
    assert whole_result.curves == resumed_result.curves


def test_a_resumed_real_start_continues_without_fitting_again(monkeypatch):
    settings = dict(init="real", rank=8)
    whole = distiller(**settings).run()
    first = distiller(**settings)
    first.run(stop_after=2)

    def no_fit(*args, **kwargs):
        raise AssertionError("a resumed run fitted its start again")

    monkeypatch.setattr(distill_module, "fit_to_items", no_fit)
    resumed = distiller(state=first.state_bytes(), **settings)
    assert resumed.step == 2
    result = resumed.run()
    for name, value in whole.summary.named_parameters():
        assert torch.equal(value, dict(result.summary.named_parameters())[name])


def test_a_farzi_distillation_learns_its_summary_and_trains_learners():
    d = distiller(method="farzi", rank=4, epochs=1)
    assert isinstance(d.summary, FarziSummary)
    before = {k: v.detach().clone() for k, v in d.summary.named_parameters()}
    result = d.run()
    assert isinstance(result.summary, FarziSummary) and result.best_epoch == 1
    for name, value in result.summary.named_parameters():
        assert not torch.equal(value, before[name])
    assert all(c["outer"] == c["outer"] for c in result.curves)  # finite, not NaN
    split, negatives = tiny_split()
    recipe = TrainConfig(max_steps=4, eval_every=2, batch_size=4)
    _, fit = train_on_summary(result.summary, split, negatives, NO_DROPOUT, recipe)
    assert fit.steps == 4 and 0.0 <= fit.best_metric <= 100.0


def test_checkpoint_of_another_method_is_refused():
    blob = distiller(method="farzi").state_bytes()
    with pytest.raises(ConfigError, match="different distillation settings"):
        distiller(method="tucker").load_state_bytes(blob)


def test_checkpoint_from_other_settings_is_refused():
    blob = distiller(epochs=1).state_bytes()
    with pytest.raises(ConfigError, match="different distillation settings"):
        distiller(epochs=2).load_state_bytes(blob)


@pytest.mark.parametrize(
    ("found", "message"),
    [
        ("td3-distill-state/1", "another version of td3.*start the distillation again"),
        ("td3-summary/1", "not a distillation checkpoint"),
    ],
)
def test_checkpoint_of_another_format_is_refused(found, message):
    # td3-distill-state/1 carried the inner Adam's moments; /2 carries the learner only
    d = distiller(learner_draw="epoch")
    d.outer_step()
    blob = d.state_bytes()
    relabelled = save_tensors(load_tensors(blob), metadata=read_metadata(blob) | {"format": found})
    with pytest.raises(DataError, match=message):
        distiller(learner_draw="epoch").load_state_bytes(relabelled)


def test_checkpoint_of_the_previous_layout_without_a_carry_still_resumes():
    # What a running job (learner_draw "step") wrote before the upgrade: format /1,
    # `carried_step` 0 instead of `carried`, and settings without the newer fields.
    first = distiller()
    first.run(stop_after=2)
    blob = first.state_bytes()
    meta = read_metadata(blob)
    config = {k: v for k, v in json.loads(meta.pop("config")).items()}
    del config["method"], config["item_chunk"]
    del meta["carried"]
    legacy = meta | {
        "format": "td3-distill-state/1",
        "carried_step": "0",
        "config": json.dumps(config),
    }
    resumed = distiller()
    resumed.load_state_bytes(save_tensors(load_tensors(blob), metadata=legacy))
    assert resumed.step == 2
    assert [c["epoch"] for c in resumed.run().curves] == [1, 2]
    whole = distiller()
    whole.run()
    for name in ("G", "U", "T"):
        assert torch.equal(getattr(whole.summary, name), getattr(resumed.summary, name))


def test_epoch_draw_continues_the_learner_with_a_fresh_adam_every_step(monkeypatch):
    d = distiller(learner_draw="epoch", epochs=1, real_batch=64, inner_steps=9)
    started: list[tuple[dict, AdamState]] = []
    inner_loop = d._inner_loop

    def spy(params, adam, plain, gen):
        started.append((params, adam))
        return inner_loop(params, adam, plain, gen)

    monkeypatch.setattr(d, "_inner_loop", spy)
    carried = []
    for _ in range(d.steps_per_epoch):
        d.outer_step()
        carried.append(d._carried)
    assert d.steps_per_epoch == len(started) == 5
    for _, adam in started:  # the moments and the step count restart
        assert adam.step == 0
        assert not any(v.any() for v in (*adam.exp_avg.values(), *adam.exp_avg_sq.values()))
    for (params, _), previous in zip(started[1:], carried, strict=False):
        for name, value in params.items():
            assert torch.equal(value, previous[name])


def test_best_summary_is_the_best_epoch_by_selection_metric():
    d = distiller(epochs=3)
    result = d.run()
    metrics = [c["valid_mrr10"] for c in result.curves]
    assert [c["epoch"] for c in result.curves] == [1, 2, 3]
    assert result.best_epoch == 1 + metrics.index(max(metrics))
    # The selection stub is a norm of the factors: the returned summary must carry that value.
    assert selection_metric(result.summary) == pytest.approx(max(metrics))


def test_progress_and_cancellation():
    d = distiller()
    seen = []
    with pytest.raises(Cancelled):
        d.run(on_progress=seen.append, should_cancel=lambda: len(seen) >= 2)
    assert [p.step for p in seen] == [1, 2]
    assert seen[0].total == d.total_steps and seen[0].eta_seconds is not None
    assert {"outer", "ce", "fsa", "grad_norm"} <= set(seen[0].losses)


def test_checkpoints_are_written_every_n_steps():
    d = distiller()
    blobs = []
    d.run(on_checkpoint=blobs.append, checkpoint_every=2)
    assert len(blobs) == (d.total_steps + 1) // 2


def test_summary_factors_change_and_teacher_items_stay_frozen():
    d = distiller()
    before = {k: getattr(d.summary, k).detach().clone() for k in ("G", "U", "T", "V")}
    d.outer_step()
    for name in ("G", "U", "T"):
        assert not torch.equal(before[name], getattr(d.summary, name))
    assert torch.equal(before["V"], d.summary.V)


def test_settings_that_cannot_work_are_rejected():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="window"):
        distiller(inner_steps=3, window=4)
    with pytest.raises(ValidationError, match="length >= 7"):
        distiller(length=5)
    with pytest.raises(ConfigError, match="max_len"):
        distiller(length=12, alt=False)  # histories are 8 long in the tiny split


def test_fresh_learners_start_from_a_seeded_fresh_initialisation():
    d = distiller(fresh_learners=1.0)
    gen = lambda: torch.Generator().manual_seed(7)  # noqa: E731
    params = d._initial_learner(0, 0, gen())
    again = d._initial_learner(0, 0, gen())
    for name, value in params.items():
        assert torch.equal(value, again[name])  # seeded
        assert all(not torch.equal(value, state[name]) for state in d.pool)
    pooled = distiller(fresh_learners=0.0)._initial_learner(0, 0, gen())
    assert any(all(torch.equal(pooled[n], state[n]) for n in pooled) for state in d.pool)


@pytest.mark.parametrize("init_rows", ["random-users", "longest"])
def test_a_real_start_fits_the_summary_to_packed_real_rows(init_rows):
    rows = torch.as_tensor(
        packed_rows(
            tiny_split()[0], init_rows, users=6, length=8, seed=seed_for(0, REAL_ROWS_STREAM)
        )
    )
    real, again, random = (
        distiller(rank=8, init=init, init_rows=init_rows) for init in ("real", "real", "random")
    )
    with torch.no_grad():
        probs = real.summary.probs(torch.arange(6))  # [6, 8, n+1]
        at_random = random.summary.probs(torch.arange(6))
    mass = probs.gather(-1, rows.unsqueeze(-1)).mean()
    assert mass > 5 * at_random.gather(-1, rows.unsqueeze(-1)).mean()
    assert (probs.argmax(-1) == rows).float().mean() > 0.8  # the teacher's V permitting
    for name in ("G", "U", "T"):  # seeded
        assert torch.equal(getattr(real.summary, name), getattr(again.summary, name))
    real.outer_step()  # and it distils from there


FIT_ITEMS, FIT_DIM = 12, 6  # the fit's tests: a catalogue of 12 items, V of 6 dimensions


def full_rank_summary() -> TuckerSummary:
    """Ranks as large as users and length, so that any cell can be fitted."""
    V = torch.randn(FIT_ITEMS + 1, FIT_DIM, generator=torch.Generator().manual_seed(0))
    return TuckerSummary(5, 7, 7, V, generator=torch.Generator().manual_seed(1))


def _fitted(confidence: float, chunk: int = FIT_ITEMS) -> tuple[TuckerSummary, torch.Tensor]:
    s = full_rank_summary()
    items = torch.randint(1, FIT_ITEMS + 1, (5, 7), generator=torch.Generator().manual_seed(2))
    losses = fit_to_items(s, items, confidence=confidence, steps=200, lr=0.05, chunk=chunk)
    assert losses[-1] < losses[0]
    return s, items


def test_fit_to_items_puts_the_mass_on_each_cells_item():
    with torch.no_grad():
        before = full_rank_summary().probs(torch.arange(5))
    assert before.max() < 0.5  # the random start is near uniform
    for confidence in (0.3, 0.8):
        s, items = _fitted(confidence)
        with torch.no_grad():
            probs = s.probs(torch.arange(5))  # [5, 7, n+1]
        assert torch.equal(probs.argmax(-1), items)
        # close to what was asked (V's 6 dimensions cannot spread the rest exactly evenly)
        mass = probs.gather(-1, items.unsqueeze(-1)).mean().item()
        assert mass == pytest.approx(confidence, abs=0.06)


def test_fit_to_items_in_chunks_of_items_is_the_same_fit():
    whole, _ = _fitted(0.5)
    chunked, _ = _fitted(0.5, chunk=5)  # 5 of the 12 items at a time
    for name in ("G", "U", "T"):
        torch.testing.assert_close(getattr(whole, name), getattr(chunked, name))


def test_fit_to_items_refuses_items_of_another_shape():
    with pytest.raises(ValueError, match=r"items must be \[5, 7\]"):
        fit_to_items(
            full_rank_summary(),
            torch.ones(5, 6, dtype=torch.long),
            confidence=0.5,
            steps=1,
            lr=0.1,
            chunk=FIT_ITEMS,
        )
