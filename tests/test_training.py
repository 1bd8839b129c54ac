import pytest
import torch
from helpers_models import chain_sequences, make_split
from torch import nn

from td3core.config import ModelConfig, TrainConfig
from td3core.evaluation import evaluate, sample_negatives
from td3core.models import SASRec
from td3core.teacher import teacher_state_from_bytes, teacher_state_to_bytes, train_teacher
from td3core.training import fit, train_on_samples


def fake_fit(metrics: list[float], **cfg):
    """A 1-parameter model whose weight equals the step count; validate replays `metrics`."""
    model = nn.Linear(1, 1, bias=False)
    nn.init.zeros_(model.weight)
    seen = iter(metrics)

    def loss_fn(m, step):
        return -m.weight.sum()  # Adam moves the weight by ~lr per step

    result = fit(model, loss_fn, lambda m: next(seen), TrainConfig(lr=1.0, **cfg))
    return model, result


def test_fit_early_stops_and_restores_the_best_state():
    model, result = fake_fit([1.0, 3.0, 2.0, 3.0, 9.0], eval_every=2, patience=2, max_steps=100)
    assert [h["step"] for h in result.history] == [2, 4, 6, 8]
    assert result.best_step == 4 and result.best_metric == 3.0  # ties do not improve
    assert result.steps == 8 and result.stop_reason == "patience"
    assert model.weight.item() == pytest.approx(4.0, abs=1e-3)


def test_fit_validates_the_final_step_and_ignores_nan():
    model, result = fake_fit([float("nan"), 1.0, 2.0], eval_every=3, patience=5, max_steps=7)
    assert [h["step"] for h in result.history] == [3, 6, 7]
    assert result.best_step == 7 and result.stop_reason == "max_steps"


def test_fit_should_stop():
    calls = iter(range(100))
    model = nn.Linear(1, 1)
    result = fit(
        model,
        lambda m, s: m.weight.sum(),
        lambda m: 0.0,
        TrainConfig(),
        should_stop=lambda: next(calls) >= 3,
    )
    assert result.steps == 3 and result.stop_reason == "should_stop"
    assert result.history[-1]["step"] == 3


N_ITEMS, MAX_LEN = 40, 10


@pytest.fixture(scope="module")
def split():
    return make_split(chain_sequences(200, N_ITEMS, length=12, seed=0), N_ITEMS, MAX_LEN)


@pytest.fixture(scope="module")
def negatives(split):
    return sample_negatives(split.valid, split.sequences, N_ITEMS, n=20, seed=0)


def test_train_on_samples_is_deterministic(split, negatives):
    cfg = TrainConfig(batch_size=64, max_steps=20, eval_every=10, lr=0.01, seed=3)
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        model = SASRec(N_ITEMS, MAX_LEN, hidden=16, inner=32)
        runs.append((train_on_samples(model, split, negatives, cfg), model))
    (a, ma), (b, mb) = runs
    assert a.history == b.history
    assert all(
        torch.equal(x, y)
        for x, y in zip(ma.state_dict().values(), mb.state_dict().values(), strict=True)
    )


def test_teacher_learns_and_keeps_its_pool(split, negatives):
    model_cfg = ModelConfig(hidden=16, inner=32, attn_dropout=0.1, hidden_dropout=0.1)
    train_cfg = TrainConfig(batch_size=128, max_steps=120, eval_every=15, patience=20, lr=0.01)
    teacher = train_teacher(split, negatives, model_cfg, train_cfg, pool_epochs=(2, 5))
    per_epoch = teacher.steps_per_epoch
    assert per_epoch == 15  # 1,800 training samples / 128
    assert teacher.pool_epochs == [2.0, 3.0, 4.0, 5.0] and teacher.pool_note == ""
    assert len(teacher.pool) == 4 and not torch.equal(
        teacher.pool[0]["item_embedding.weight"], teacher.pool[-1]["item_embedding.weight"]
    )

    torch.manual_seed(train_cfg.seed)
    untrained = SASRec.from_config(N_ITEMS, MAX_LEN, model_cfg)
    before = evaluate(untrained, split.valid, split, negatives, full_ranking=False)
    after = evaluate(teacher.model, split.valid, split, negatives, full_ranking=False)
    assert after["uni100"]["MRR@10"] == pytest.approx(teacher.fit.best_metric)
    assert after["uni100"]["MRR@10"] > before["uni100"]["MRR@10"] + 20

    feats = teacher.features(split.valid, batch_size=64)
    assert feats.shape == (len(split.valid), 16)
    assert torch.allclose(
        feats, teacher.model.last_features(split.valid.history, split.valid.lengths), atol=1e-6
    )
    assert teacher.features(split.valid.select(torch.arange(0))).shape == (0, 16)
    assert torch.equal(teacher.item_embeddings, teacher.model.item_embedding.weight)

    again = teacher_state_from_bytes(teacher_state_to_bytes(teacher))
    assert torch.allclose(again.features(split.valid), feats)
    assert again.pool_epochs == teacher.pool_epochs and again.fit == teacher.fit
    assert again.lr == teacher.lr == 0.01 and again.lr_search == {}
    assert all(
        torch.equal(again.pool[i][k], v) for i in range(4) for k, v in teacher.pool[i].items()
    )


def test_teacher_pool_when_training_stops_early(split, negatives):
    model_cfg = ModelConfig(hidden=8, inner=16)
    cfg = TrainConfig(batch_size=128, max_steps=20, eval_every=10)  # 1.33 epochs
    teacher = train_teacher(split, negatives, model_cfg, cfg, pool_epochs=(5, 30))
    assert teacher.pool_epochs == pytest.approx([1.0, 20 / 15])
    assert "before pool epoch 5" in teacher.pool_note
