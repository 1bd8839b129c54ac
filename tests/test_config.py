"""The settings: partial overrides merge, values that make no sense are refused."""

from __future__ import annotations

import math

import pytest
from pydantic import ValidationError

from td3core.config import MAX_SEED, DistillConfig, JobConfig, ModelConfig, TrainConfig

SIZE = {"users": 4, "length": 8}


def test_a_nested_override_changes_only_the_fields_it_names() -> None:
    job = JobConfig.model_validate({"distill": SIZE, "learner": {"max_steps": 10}})
    default = JobConfig.model_fields["learner"].default
    assert job.learner.max_steps == 10
    assert job.learner.lr == default.lr == 0.005  # not TrainConfig's own 0.001
    assert job.learner.batch_size == default.batch_size == 20
    job = JobConfig.model_validate({"distill": SIZE, "model": {"hidden": 16}})
    assert job.model == ModelConfig(hidden=16)
    # a full model instance is taken as it is
    recipe = TrainConfig(lr=0.01)
    assert JobConfig(distill=DistillConfig(**SIZE), learner=recipe).learner == recipe


@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan])
@pytest.mark.parametrize(
    "section, field",
    [("learner", "lr"), ("teacher", "weight_decay"), ("distill", "temperature"),
     ("distill", "outer_lr"), ("distill", "grad_clip"), ("distill", "fsa_weight")],
)  # fmt: skip
def test_non_finite_numbers_are_refused(section: str, field: str, value: float) -> None:
    body: dict = {"distill": dict(SIZE)}
    body.setdefault(section, {})[field] = value
    with pytest.raises(ValidationError, match="finite number"):
        JobConfig.model_validate(body)


def test_seeds_are_bounded() -> None:
    JobConfig.model_validate({"distill": SIZE, "teacher": {"seed": MAX_SEED}})
    for body in (
        {"distill": SIZE, "teacher": {"seed": 10**30}},
        {"distill": SIZE, "negatives_seed": MAX_SEED + 1},
        {"distill": SIZE, "teacher": {"seed": -1}},
    ):
        with pytest.raises(ValidationError):
            JobConfig.model_validate(body)


def test_search_learning_rates_are_checked() -> None:
    assert JobConfig.model_validate({"distill": SIZE}).search_lrs == [0.001, 0.005]
    for bad in ([], [0.0], [2.0], [0.001] * 9):
        with pytest.raises(ValidationError):
            JobConfig.model_validate({"distill": SIZE, "search_lrs": bad})
