from functools import cache

import numpy as np
import pytest
import torch

from td3core.baselines import sampled_split
from td3core.config import DistillConfig, JobConfig, ModelConfig, TrainConfig
from td3core.data import PreprocessConfig, build_dataset, generate_interactions, leave_one_out
from td3core.data.sampling import sample_sequences, training_sequences
from td3core.errors import Cancelled
from td3core.pipeline import run_job
from td3core.summary import summary_from_bytes

CONFIG = JobConfig(
    distill=DistillConfig(
        users=4,
        length=8,
        epochs=2,
        inner_steps=4,
        window=2,
        real_batch=200,
        select_steps=4,
        synthetic_batch=2,
    ),
    model=ModelConfig(hidden=8, inner=16),
    teacher=TrainConfig(max_steps=30, eval_every=10, batch_size=64),
    learner=TrainConfig(lr=0.005, batch_size=2, max_steps=6, eval_every=3),
    evaluations=["summary", "full", "random-users", "random-interactions", "longest"],
    paper_compatible=True,
)


@cache
def dataset():
    inter = generate_interactions(n_users=50, n_items=30, mean_length=10, seed=5)
    return build_dataset(inter, PreprocessConfig(kcore="none"))


class Hooks:
    checkpoint_every = 1

    def __init__(self, cancel_after: int | None = None):
        self.checkpoints: list[bytes] = []
        self.progress = []
        self.cancel_after = cancel_after

    def on_progress(self, progress):
        self.progress.append(progress)

    def should_cancel(self):
        distill_steps = [p for p in self.progress if p.stage == "distill"]
        return self.cancel_after is not None and len(distill_steps) >= self.cancel_after

    def save_checkpoint(self, blob):
        self.checkpoints.append(blob)


@cache
def uninterrupted():
    hooks = Hooks()
    return run_job(dataset(), CONFIG, hooks), hooks


def test_job_produces_summary_and_report():
    result, hooks = uninterrupted()
    loaded = summary_from_bytes(result.summary)
    assert loaded.item_ids == dataset().item_ids
    assert loaded.summary.U.shape == (4, CONFIG.distill.rank)
    assert loaded.config["job"] == CONFIG.model_dump(mode="json")
    report = result.report
    assert report["format"] == "td3-report/1"
    assert report["dataset"]["users"] == dataset().n_users
    assert set(report["evaluation"]) == {
        "summary",
        "summary (paper-compatible)",
        "full",
        "random-users",
        "random-interactions",
        "longest",
    }
    for row in report["evaluation"].values():
        for protocol in ("uni100", "full"):
            assert 0.0 <= row[protocol]["HR@10"]["mean"] <= 100.0
    assert report["evaluation"]["summary"]["interactions"] == 4 * 8
    assert report["evaluation"]["random-interactions"]["interactions"] == 4 * 8
    assert len(report["distillation"]["curves"]) == 2
    assert {p.stage for p in hooks.progress} == {"teacher", "distill", "evaluate"}
    assert report["peak_memory_mb"] > 0
    # the teacher is the best of the full-data runs at every lr of the search
    teacher = report["teacher"]
    assert set(teacher["lr_search"]) == {repr(lr) for lr in CONFIG.search_lrs}
    assert teacher["valid_mrr10"] == max(teacher["lr_search"].values())
    assert repr(teacher["lr"]) in teacher["lr_search"]
    # ... reused by the full-data row, whose search reports the same validation scores
    assert report["evaluation"]["full"]["valid_mrr10"] == teacher["valid_mrr10"]
    messages = {p.message for p in hooks.progress if p.stage == "teacher"}
    assert {m.split("(lr ")[1].split(",")[0] for m in messages} == {
        str(lr) for lr in CONFIG.search_lrs
    }


def test_resumed_job_equals_uninterrupted_job():
    reference, _ = uninterrupted()
    first = Hooks(cancel_after=3)
    with pytest.raises(Cancelled):
        run_job(dataset(), CONFIG, first)
    resumed = run_job(dataset(), CONFIG, Hooks(), resume_from=first.checkpoints[-1])
    a, b = summary_from_bytes(reference.summary), summary_from_bytes(resumed.summary)
    for name in ("G", "U", "T", "V"):
        assert torch.equal(getattr(a.summary, name), getattr(b.summary, name))
    assert without_timings(resumed.report["evaluation"]) == without_timings(
        reference.report["evaluation"]
    )


def without_timings(table: dict) -> dict:
    return {
        name: {k: v for k, v in row.items() if k != "train_seconds"} for name, row in table.items()
    }


def test_baselines_stay_within_budget_and_training_data():
    split = leave_one_out(dataset(), 8)
    train = training_sequences(split)
    for method in ("random-users", "random-interactions", "longest"):
        users, seqs = sample_sequences(split, method, users=4, length=8, seed=0)
        assert sum(len(s) for s in seqs) <= 32
        for user, seq in zip(users, seqs, strict=True):
            if method == "random-interactions":  # a time-ordered subsequence of training items
                remaining = iter(train[user].tolist())
                assert all(item in remaining for item in seq.tolist())
            else:  # the most recent (at most 8) items of the user's training part
                assert 1 <= len(seq) <= 8
                assert np.array_equal(seq, train[user][-len(seq) :])
        sub, interactions = sampled_split(split, method, users=4, length=8, seed=0)
        assert interactions == sum(len(s) for s in seqs)
        assert len(sub.train) == sum(len(s) - 1 for s in seqs)
        assert sub.valid is split.valid and sub.test is split.test


def test_sampling_is_seeded():
    split = leave_one_out(dataset(), 8)
    a = sample_sequences(split, "random-interactions", users=4, length=8, seed=1)
    b = sample_sequences(split, "random-interactions", users=4, length=8, seed=1)
    c = sample_sequences(split, "random-interactions", users=4, length=8, seed=2)
    assert np.array_equal(np.concatenate(a[1]), np.concatenate(b[1]))
    assert not np.array_equal(np.concatenate(a[1]), np.concatenate(c[1]))
