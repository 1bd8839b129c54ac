"""Job presets (td3core.config.PRESETS through the API's flat config) and label
validation and filter parsing (api.labels), without a database."""

from __future__ import annotations

import copy

import pytest
from pydantic import ValidationError

from api.errors import APIError
from api.labels import MAX_LABELS, parse_label_filters
from api.schemas import JobCreate, build_job_config
from td3core.config import PRESETS, DistillConfig, JobConfig


def test_smoke_preset_under_explicit_fields():
    before = copy.deepcopy(PRESETS)
    config = JobConfig.from_preset(
        "smoke",
        {"distill": {"users": 5, "length": 8, "epochs": 3}, "teacher": {"lr": 0.01}},
    )
    assert config.distill.epochs == 3 and config.distill.inner_steps == 10  # given, preset
    # a nested override changes only its own fields: the preset's teacher budget stays
    assert (config.teacher.lr, config.teacher.max_steps, config.teacher.batch_size) == (
        0.01,
        60,
        128,
    )
    # fields neither sets keep JobConfig's defaults (the learner's lr is its own default)
    assert config.learner.lr == 0.005 and config.learner.max_steps == 30
    assert before == PRESETS  # not mutated by the merge


def test_default_and_paper_presets_and_unknown_presets_fail():
    size = {"distill": {"users": 5, "length": 8}}
    default = JobConfig.from_preset("default", size)
    assert default == JobConfig(distill=DistillConfig(users=5, length=8))
    assert not default.distill.fsa and default.teacher_lrs == default.search_lrs
    assert default.distill.fresh_learners == 1.0 and default.distill.init == "real"
    # the paper's Algorithm 1 as published: FSA on, pool learners, a random start, the
    # teacher at the authors' lr alone
    paper = JobConfig.from_preset("paper", size)
    assert paper.distill.fsa and paper.teacher_lrs == [0.001]
    assert paper.distill.fresh_learners == 0.0 and paper.distill.init == "random"
    assert paper.distill.epochs == 30 and paper.distill.inner_steps == 200
    assert paper.model_copy(update={"distill": default.distill, "teacher_search": True}) == default
    with pytest.raises(ValueError, match="unknown preset"):
        JobConfig.from_preset("fast", {})  # type: ignore[arg-type]


def test_the_api_config_defaults_to_the_default_preset_and_validates_after_the_preset():
    assert build_job_config({"users": 4, "length": 8}) == JobConfig.from_preset(
        "default", {"distill": {"users": 4, "length": 8}}
    )
    assert build_job_config({"users": 4, "length": 8, "preset": "paper"}).distill.fsa
    smoke = build_job_config({"users": 4, "length": 8, "preset": "smoke", "rank": 2})
    assert (smoke.distill.rank, smoke.distill.epochs, smoke.search_lrs) == (2, 1, [0.005])
    with pytest.raises(APIError) as exc:
        build_job_config({"users": 4, "length": 8, "preset": "smoke", "window": 20})
    assert exc.value.status == 422
    assert "window (20) must not exceed inner_steps (10)" in exc.value.message
    with pytest.raises(ValidationError):
        JobCreate.model_validate(
            {"dataset_id": "ds_1", "config": {"users": 4, "length": 8, "preset": "fast"}}
        )


def test_label_filters_parse_key_value_pairs():
    assert parse_label_filters(None) == {}
    assert parse_label_filters(["team:recs", "run:2026:11"]) == {"team": "recs", "run": "2026:11"}
    assert parse_label_filters(["empty:"]) == {"empty": ""}
    for bad, needle in (
        (["no-colon"], "key:value"),
        (["bad key:x"], "label filter"),
        ([f"k:{'v' * 257}"], "label filter"),
        ([f"k{i}:v" for i in range(MAX_LABELS + 1)], "label filter"),
    ):
        with pytest.raises(APIError) as exc:
            parse_label_filters(bad)
        assert exc.value.status == 422 and needle in exc.value.message, bad


@pytest.mark.parametrize(
    "labels",
    [
        {f"k{i}": "v" for i in range(MAX_LABELS + 1)},
        {"": "v"},
        {"-leading": "v"},
        {"k" * 64: "v"},
        {"k": "v" * 257},
        {"k": "line\nbreak"},
    ],
    ids=["too-many", "empty-key", "leading-dash", "long-key", "long-value", "control-char"],
)
def test_job_labels_are_bounded(labels):
    body = {"dataset_id": "ds_1", "config": {"users": 4, "length": 8}, "labels": labels}
    with pytest.raises(ValidationError):
        JobCreate.model_validate(body)


def test_job_labels_within_bounds_are_kept():
    labels = {"pipeline_run": "run-42", "team/sub.x_y": "v" * 256}
    body = {"dataset_id": "ds_1", "config": {"users": 4, "length": 8}, "labels": labels}
    assert JobCreate.model_validate(body).labels == labels
