"""The comparison every report is built on: recipes sized to their data, one
validation-only learning-rate search for every row, and the teacher reused as the
full-data run it is."""

from __future__ import annotations

import math

import pytest
import torch

from td3core.config import MIN_EVAL_EVERY, JobConfig, TrainConfig
from td3core.data import PreprocessConfig, build_dataset, generate_interactions
from td3core.experiment import Experiment, evaluation_rows, searched
from td3core.training import FitResult

pytestmark = pytest.mark.filterwarnings("ignore:.*fewer than 100 unseen items")


def test_a_recipe_sized_to_small_data_validates_every_pass_and_stops_early() -> None:
    recipe = TrainConfig(batch_size=100, max_steps=3000, eval_every=100, max_epochs=50)
    small = recipe.sized_for(600)  # 6 steps per pass
    assert small.eval_every == MIN_EVAL_EVERY  # never more often than that
    assert small.max_steps == 50 * 6
    medium = recipe.sized_for(4_000)  # 40 steps per pass
    assert (medium.eval_every, medium.max_steps) == (40, 2000)
    large = recipe.sized_for(1_000_000)  # the full recipe stands
    assert (large.eval_every, large.max_steps) == (100, 3000)
    assert small.lr == recipe.lr and small.seed == recipe.seed


def fake_run(metric: float) -> tuple[torch.nn.Module, FitResult]:
    return torch.nn.Linear(1, 1), FitResult(best_metric=metric, best_step=1, steps=1)


def test_the_search_keeps_the_best_validation_run() -> None:
    valid = {0.001: 12.0, 0.005: 20.0, 0.01: math.nan}
    (model, fit), chosen = searched(lambda lr: fake_run(valid[lr]), [0.001, 0.005, 0.01])
    assert fit.best_metric == 20.0
    assert chosen["lr"] == 0.005
    assert chosen["search"]["0.001"] == 12.0 and math.isnan(chosen["search"]["0.01"])
    # a NaN run never wins, even first
    (_, fit), chosen = searched(lambda lr: fake_run(valid[lr]), [0.01, 0.001])
    assert chosen["lr"] == 0.001


@pytest.fixture(scope="module")
def experiment() -> Experiment:
    inter = generate_interactions(n_users=40, n_items=30, mean_length=10, seed=2)
    dataset = build_dataset(inter, PreprocessConfig(kcore="none"))
    job = JobConfig.model_validate(
        {
            "distill": {"users": 4, "length": 8},
            "model": {"hidden": 8, "inner": 16},
            "teacher": {"max_steps": 20, "eval_every": 10, "batch_size": 64},
        }
    )
    return Experiment.for_job(dataset, job)


def test_every_row_gets_the_same_search_and_reports_its_choice(experiment: Experiment) -> None:
    lrs = [0.001, 0.01]
    runs = evaluation_rows(
        experiment, ["full", "random-users"], summary=None, users=4, length=8, seeds=[0],
        lrs=lrs, alt=False,
    )  # fmt: skip
    for row in ("full", "random-users"):
        (run,) = runs[row]
        assert set(run["search"]) == {"0.001", "0.01"}
        assert run["lr"] in lrs
        assert run["valid_mrr10"] == max(run["search"].values())


def test_a_reused_run_is_not_trained_again(experiment: Experiment) -> None:
    model, fit = experiment.train_real(experiment.split, seed=0, lr=0.001)
    reused = FitResult(best_metric=99.0, best_step=fit.best_step, steps=fit.steps)
    runs = evaluation_rows(
        experiment, ["full"], summary=None, users=4, length=8, seeds=[0], lrs=[0.001],
        alt=False, reuse={("full", "sasrec", 0, 0.001): (model, reused)},
    )  # fmt: skip
    assert runs["full"][0]["valid_mrr10"] == 99.0  # the reused record, not a new run


def test_the_teacher_is_the_best_full_data_run_of_the_search(experiment: Experiment) -> None:
    job = JobConfig.model_validate(
        {
            "distill": {"users": 4, "length": 8, "pool_first_epoch": 1, "pool_last_epoch": 2},
            "search_lrs": [0.0001, 0.01],  # far apart: the larger lr learns in 20 steps
        }
    )
    teacher, runs = experiment.train_teacher(job)
    assert set(teacher.lr_search) == {"0.0001", "0.01"}
    assert teacher.lr == 0.01
    assert teacher.fit.best_metric == max(teacher.lr_search.values())
    assert teacher.lr_search["0.01"] > teacher.lr_search["0.0001"]
    # every run is the full-data row at its lr, so the row's search reuses them all ...
    assert set(runs) == {("full", "sasrec", 0, 0.0001), ("full", "sasrec", 0, 0.01)}
    assert runs[("full", "sasrec", 0, 0.01)][0] is teacher.model
    # ... and is exactly that run: the same recipe, initialisation and batches
    model, fit = experiment.train_real(experiment.split, seed=0, lr=0.0001)
    reused_model, reused_fit = runs[("full", "sasrec", 0, 0.0001)]
    assert (fit.best_metric, fit.best_step, fit.steps) == (
        reused_fit.best_metric,
        reused_fit.best_step,
        reused_fit.steps,
    )
    assert all(
        torch.equal(a, b)
        for a, b in zip(
            model.state_dict().values(), reused_model.state_dict().values(), strict=True
        )
    )

    fixed = job.model_copy(update={"teacher_search": False})
    teacher, runs = experiment.train_teacher(fixed)
    assert teacher.lr == job.teacher.lr and list(runs) == [("full", "sasrec", 0, job.teacher.lr)]
    assert teacher.lr_search == {repr(job.teacher.lr): teacher.fit.best_metric}


@pytest.mark.parametrize("objective", ["inner", "kl-all"])
def test_the_summary_is_selected_by_a_learner_trained_with_the_inner_objective(
    experiment: Experiment, objective: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import td3core.experiment as module

    job = JobConfig.model_validate(
        {
            "distill": {
                "users": 4,
                "length": 8,
                "pool_first_epoch": 1,
                "pool_last_epoch": 2,
                "inner_objective": objective,
                "select_steps": 10,
            },
            "teacher_search": False,
        }
    )
    teacher, _ = experiment.train_teacher(job)
    seen: list[dict] = []
    original = module.train_on_summary

    def recording(*args, **kwargs):
        seen.append(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(module, "train_on_summary", recording)
    distiller = experiment.distiller(job.distill, teacher)
    metric = distiller.select(distiller.summary)
    assert [call["objective"] for call in seen] == [objective]
    assert 0.0 <= metric <= 100.0
