"""The comparison a summary is judged by: one split with fixed negatives, on which
the summary, the full data and budget-sized real samples are each trained with the
common recipe and scored alike (the rows of a report's evaluation table)."""

from __future__ import annotations

import functools
import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch
from torch import Tensor, nn

from td3core.baselines import sampled_split
from td3core.config import DistillConfig, JobConfig, ModelConfig, Objective, TrainConfig
from td3core.data.samples import Split
from td3core.data.split import leave_one_out
from td3core.data.types import SequenceDataset
from td3core.distill import Distiller, train_config_for_selection
from td3core.evaluation import evaluate, sample_negatives
from td3core.learner import fresh_learner, train_on_summary
from td3core.summary import Summary
from td3core.teacher import Teacher, train_teacher
from td3core.training import FitResult, StepHook, train_on_samples

Trained = tuple[nn.Module, FitResult]
Run = TypeVar("Run")


@dataclass
class Experiment:
    """One split, its fixed validation and test negatives, and the training recipes:
    everything the compared runs share."""

    split: Split
    negatives_valid: Tensor
    negatives_test: Tensor
    model: ModelConfig
    real_recipe: TrainConfig  # full data and budget samples
    summary_recipe: TrainConfig  # learners on a summary
    device: str = "cpu"

    @classmethod
    def build(
        cls,
        split: Split,
        *,
        negatives_seed: int,
        model: ModelConfig,
        real_recipe: TrainConfig,
        summary_recipe: TrainConfig,
        device: str = "cpu",
    ) -> Experiment:
        # Separate, seeded draws for validation and test; every compared run shares them.
        valid = sample_negatives(split.valid, split.sequences, split.n_items, seed=negatives_seed)
        test = sample_negatives(split.test, split.sequences, split.n_items, seed=negatives_seed + 1)
        return cls(split, valid, test, model, real_recipe, summary_recipe, device)

    @classmethod
    def for_job(
        cls,
        dataset: SequenceDataset,
        job: JobConfig,
        *,
        device: str = "cpu",
    ) -> Experiment:
        """The split, negatives and recipes a job is measured with."""
        return cls.build(
            leave_one_out(dataset, job.history_length),
            negatives_seed=job.negatives_seed,
            model=job.model,
            real_recipe=job.teacher,
            summary_recipe=job.learner,
            device=device,
        )

    def test_metrics(self, model: nn.Module) -> dict[str, dict[str, float]]:
        return evaluate(model, self.split.test, self.split, self.negatives_test, device=self.device)

    def valid_metrics(self, model: nn.Module) -> dict[str, dict[str, float]]:
        """Both protocols on validation: what choices between methods are made on."""
        return evaluate(
            model, self.split.valid, self.split, self.negatives_valid, device=self.device
        )

    def real_recipe_for(self, split: Split, *, seed: int, lr: float) -> TrainConfig:
        """The real-data recipe at one point of the search, sized to `split`'s data."""
        recipe = self.real_recipe.model_copy(update={"seed": seed, "lr": lr})
        return recipe.sized_for(len(split.train))

    def summary_recipe_for(self, summary: Summary, *, seed: int, lr: float) -> TrainConfig:
        recipe = self.summary_recipe.model_copy(update={"seed": seed, "lr": lr})
        return recipe.sized_for(summary.users)

    def train_real(self, split: Split, *, seed: int, lr: float, learner: str = "sasrec") -> Trained:
        torch.manual_seed(seed)  # the learner's initialisation
        model = fresh_learner(learner, self.split.n_items, self.split.max_len, self.model)
        recipe = self.real_recipe_for(split, seed=seed, lr=lr)
        return model, train_on_samples(
            model, split, self.negatives_valid, recipe, device=self.device
        )

    def train_summary(
        self,
        summary: Summary,
        *,
        seed: int,
        lr: float,
        alt: bool,
        learner: str = "sasrec",
        objective: Objective = "inner",
        item_embeddings: Tensor | None = None,
    ) -> Trained:
        return train_on_summary(
            summary,
            self.split,
            self.negatives_valid,
            self.model,
            self.summary_recipe_for(summary, seed=seed, lr=lr),
            alt=alt,
            item_embeddings=item_embeddings,
            device=self.device,
            learner=learner,
            objective=objective,
        )

    def train_teacher(
        self,
        job: JobConfig,
        *,
        step_hook: Callable[[TrainConfig], StepHook | None] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> tuple[Teacher, Reusable]:
        """The teacher: the full-data SASRec run at each of `job.teacher_lrs`, the one with
        the best validation MRR@10 kept (test data is never looked at). Also returns every
        run, keyed as the full-data rows that evaluation may reuse. `step_hook(recipe)`
        gives each run's per-step hook.

        Why a search: a teacher stopped early on a plateau has an item table V near its
        initialisation and checkpoints that know little more than popularity, and the
        summary inherits both."""
        runs: dict[float, Teacher] = {}

        def train(lr: float) -> tuple[Teacher, FitResult]:
            recipe = self.real_recipe_for(self.split, seed=job.teacher.seed, lr=lr)
            runs[lr] = train_teacher(
                self.split, self.negatives_valid, self.model, recipe,
                pool_epochs=(job.distill.pool_first_epoch, job.distill.pool_last_epoch),
                device=self.device,
                on_step=step_hook(recipe) if step_hook is not None else None,
                should_stop=should_stop,
            )  # fmt: skip
            return runs[lr], runs[lr].fit

        (teacher, _), chosen = searched(train, job.teacher_lrs)
        teacher.lr_search = chosen["search"]
        reuse: Reusable = {
            full_run_key(job.teacher.seed, lr): (run.model, run.fit) for lr, run in runs.items()
        }
        return teacher, reuse

    def distiller(
        self,
        distill: DistillConfig,
        teacher: Teacher,
        *,
        state: bytes | None = None,
        cuda_graphs: bool = False,
    ) -> Distiller:
        """A Distiller that keeps the summary whose fresh learner (the summary recipe
        capped at `select_steps`, trained with the distillation's inner objective)
        scores best on validation; `state` continues a checkpointed run.
        `cuda_graphs`: replay the inner loop from CUDA graphs (`Distiller`)."""
        recipe = train_config_for_selection(self.summary_recipe, distill.select_steps)

        def select(summary: Summary) -> float:
            _, fit = train_on_summary(
                summary,
                self.split,
                self.negatives_valid,
                self.model,
                recipe,
                alt=distill.alt,
                device=self.device,
                objective=distill.inner_objective,
            )
            return fit.best_metric

        return Distiller(
            distill,
            self.split,
            teacher,
            self.model,
            select=select,
            device=self.device,
            state=state,
            cuda_graphs=cuda_graphs,
        )


RunHook = Callable[[str, int], None]
# A finished training run that evaluation may reuse instead of repeating it, keyed by
# (data source, learner, seed, lr): the teacher is exactly the full-data SASRec run at
# its own seed and lr.
Reusable = dict[tuple[str, str, int, float], Trained]


def full_run_key(seed: int, lr: float, learner: str = "sasrec") -> tuple[str, str, int, float]:
    """The `Reusable` key of the full-data run of `learner` at `seed` and `lr`."""
    return ("full", learner, seed, lr)


def summary_row(objective: Objective, *, paper_compatible: bool = False) -> str:
    """Row names of a summary's learners: "summary" for the inner objective (the
    distillation's own), "summary (kl-all)" for the other; leaky ones say so."""
    name = "summary" if objective == "inner" else f"summary ({objective})"
    return f"{name} (paper-compatible)" if paper_compatible else name


def run_record(model: nn.Module, fit: FitResult, experiment: Experiment, interactions: int) -> dict:
    return {
        "test": experiment.test_metrics(model),
        "valid": experiment.valid_metrics(model),
        "valid_mrr10": fit.best_metric,
        "train_seconds": fit.seconds,
        "steps": fit.steps,
        "interactions": interactions,
    }


def searched(
    train: Callable[..., tuple[Run, FitResult]], lrs: list[float]
) -> tuple[tuple[Run, FitResult], dict]:
    """Call `train(lr=...)` once per learning rate and keep the run with the best validation MRR@10
    (test data is never looked at); the record says what was tried and chosen."""
    best: tuple[Run, FitResult] | None = None
    best_lr, best_metric, tried = lrs[0], -math.inf, {}
    for lr in lrs:
        model, fit = train(lr=lr)
        tried[repr(lr)] = fit.best_metric
        # `>` is False for NaN, so a diverged run never wins (unless every run did)
        if best is None or fit.best_metric > best_metric:
            best, best_lr = (model, fit), lr
            best_metric = fit.best_metric if not math.isnan(fit.best_metric) else -math.inf
    assert best is not None
    return best, {"lr": best_lr, "search": tried}


def evaluation_rows(
    experiment: Experiment,
    names: list[str],
    *,
    summary: Summary | None,
    users: int,
    length: int,
    seeds: list[int],
    lrs: list[float],
    alt: bool,
    learner: str = "sasrec",
    objectives: Sequence[Objective] = ("inner",),
    teacher_item_embeddings: Tensor | None = None,
    reuse: Reusable | None = None,
    on_run: RunHook | None = None,
) -> dict[str, list[dict]]:
    """Runs of `learner` per data source: {"summary": [run, ...], "full": [...], ...}.
    Every run is the best of the same learning-rate search `lrs` on validation, so no
    row wins by being the only one tuned. A summary gets one row per objective
    (`summary_row`).

    With `teacher_item_embeddings`, "(paper-compatible)" rows are added for a learner
    whose item table has the teacher's shape: learners that start from the item table
    learned on the full data (the authors' evaluation; it leaks the full data)."""
    runs: dict[str, list[dict]] = {}
    budget = users * length
    reuse = reuse or {}

    def add(row: str, train: Callable[..., Trained], interactions: int) -> None:
        (model, fit), chosen = searched(train, lrs)
        record = run_record(model, fit, experiment, interactions)
        runs.setdefault(row, []).append(record | chosen)

    leaky = teacher_item_embeddings is not None and learner == "sasrec"
    full_interactions = int(sum(len(s) - 2 for s in experiment.split.sequences))
    for name in names:
        for seed in seeds:
            if on_run is not None:
                on_run(name, seed)
            if name == "summary":
                if summary is None:
                    continue
                for objective in objectives:
                    for start in (None, teacher_item_embeddings) if leaky else (None,):
                        train = functools.partial(
                            experiment.train_summary, summary, seed=seed, alt=alt,
                            learner=learner, objective=objective, item_embeddings=start,
                        )  # fmt: skip
                        row = summary_row(objective, paper_compatible=start is not None)
                        add(row, train, budget)
            elif name == "full":

                def train_full(lr: float, seed: int = seed) -> Trained:
                    return reuse.get(full_run_key(seed, lr, learner)) or experiment.train_real(
                        experiment.split, seed=seed, lr=lr, learner=learner
                    )

                add(name, train_full, full_interactions)
            else:
                sample, interactions = sampled_split(
                    experiment.split, name, users=users, length=length, seed=seed
                )
                train = functools.partial(experiment.train_real, sample, seed=seed, learner=learner)
                add(name, train, interactions)
    return runs


def aggregate(runs: list[dict]) -> dict:
    """Mean and (sample) standard deviation of every metric over runs."""
    out: dict = {"runs": len(runs)}
    for protocol in runs[0]["test"]:
        out[protocol] = {}
        for metric in runs[0]["test"][protocol]:
            values = [r["test"][protocol][metric] for r in runs]
            out[protocol][metric] = {
                "mean": statistics.fmean(values),
                "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            }
    for key in ("valid_mrr10", "train_seconds", "steps", "interactions"):
        out[key] = statistics.fmean(r[key] for r in runs)
    # the search's choice per run (validation only), so a reader sees each row's setting
    out["lr"] = [r["lr"] for r in runs if "lr" in r]
    return out


def evaluation_table(runs: dict[str, list[dict]]) -> dict[str, dict]:
    return {name: aggregate(group) for name, group in runs.items() if group}
