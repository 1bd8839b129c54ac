"""A whole job: split -> teacher -> distillation -> evaluation -> report.

This is the service's one entry point into the library. The caller (a Celery
worker, the CLI) supplies hooks for progress, cancellation and checkpoints; a job
resumed from its last checkpoint gives the same summary as an uninterrupted one.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol

import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors
from torch import nn

from td3core.config import JobConfig, TrainConfig
from td3core.data.types import SequenceDataset
from td3core.distill import DistillProgress
from td3core.errors import Cancelled, DataError
from td3core.experiment import (
    Experiment,
    Reusable,
    evaluation_rows,
    evaluation_table,
    full_run_key,
)
from td3core.report import build_report
from td3core.serialization import read_metadata
from td3core.summary import summary_to_bytes
from td3core.teacher import Teacher, teacher_state_from_bytes, teacher_state_to_bytes
from td3core.training import StepHook

CHECKPOINT_FORMAT = "td3-job-checkpoint/1"


@dataclass
class Progress:
    stage: str  # "teacher" | "distill" | "evaluate"
    epoch: int
    step: int
    total: int
    losses: dict[str, float]
    eta_seconds: float | None
    message: str = ""


class JobHooks(Protocol):
    checkpoint_every: int

    def on_progress(self, progress: Progress) -> None: ...

    def should_cancel(self) -> bool: ...

    def save_checkpoint(self, blob: bytes) -> None: ...


@dataclass
class JobResult:
    summary: bytes
    report: dict


def run_job(
    dataset: SequenceDataset,
    config: JobConfig,
    hooks: JobHooks,
    *,
    device: str = "cpu",
    resume_from: bytes | None = None,
) -> JobResult:
    timings: dict[str, float] = {}
    clock = time.perf_counter()
    distill_cfg = config.distill
    experiment = Experiment.for_job(dataset, config, device=device)
    split = experiment.split
    teacher_blob, distill_state = unpack_checkpoint(resume_from) if resume_from else (None, None)

    # the teacher's runs are full-data SASRec runs at their seed and lr: not trained twice
    reuse: Reusable = {}
    if teacher_blob is None:
        teacher, reuse = _train_teacher(experiment, config, hooks)
        teacher_blob = teacher_state_to_bytes(teacher)
        hooks.save_checkpoint(pack_checkpoint(teacher_blob, None))
    else:
        teacher = teacher_state_from_bytes(teacher_blob, device=device)
        # a teacher saved before its lr was recorded was trained at teacher.lr
        lr = teacher.lr if teacher.lr is not None else config.teacher.lr
        reuse[full_run_key(config.teacher.seed, lr)] = (teacher.model, teacher.fit)
    timings["teacher_seconds"] = time.perf_counter() - clock

    distiller = experiment.distiller(distill_cfg, teacher, state=distill_state)

    def on_distill(p: DistillProgress) -> None:
        hooks.on_progress(Progress("distill", p.epoch, p.step, p.total, p.losses, p.eta_seconds))

    clock = time.perf_counter()
    result = distiller.run(
        on_progress=on_distill,
        should_cancel=hooks.should_cancel,
        on_checkpoint=lambda state: hooks.save_checkpoint(pack_checkpoint(teacher_blob, state)),
        checkpoint_every=hooks.checkpoint_every,
    )
    timings["distill_seconds"] = time.perf_counter() - clock

    clock = time.perf_counter()
    seeds = [config.learner.seed + i for i in range(config.eval_seeds)]
    done = {"runs": 0}
    total_runs = len(config.learners) * len(config.evaluations) * len(seeds)
    tables: dict[str, dict[str, dict]] = {}
    for learner in config.learners:

        def on_run(name: str, seed: int, learner: str = learner) -> None:
            if hooks.should_cancel():
                raise Cancelled("evaluation cancelled")
            done["runs"] += 1
            message = f"training {learner} on {name} (seed {seed})"
            hooks.on_progress(Progress("evaluate", 0, done["runs"], total_runs, {}, None, message))

        runs = evaluation_rows(
            experiment,
            list(config.evaluations),
            summary=result.summary,
            users=distill_cfg.users,
            length=distill_cfg.length,
            seeds=seeds,
            lrs=config.search_lrs,
            alt=distill_cfg.alt,
            learner=learner,
            objectives=config.summary_objectives,
            teacher_item_embeddings=teacher.item_embeddings if config.paper_compatible else None,
            reuse=reuse,
            on_run=on_run,
        )
        tables[learner] = evaluation_table(runs)
    timings["evaluate_seconds"] = time.perf_counter() - clock

    summary_bytes = summary_to_bytes(
        result.summary,
        item_ids=dataset.item_ids,
        config={"job": config.model_dump(mode="json"), "preprocessing": dataset.preprocessing},
        dataset_sha256=dataset.source_sha256,
    )
    report = build_report(
        dataset=dataset,
        config=config,
        split=split,
        teacher=teacher,
        distillation=result,
        evaluation_by_learner=tables,
        timings=timings,
        device=device,
    )
    return JobResult(summary=summary_bytes, report=report)


def _train_teacher(
    experiment: Experiment, config: JobConfig, hooks: JobHooks
) -> tuple[Teacher, Reusable]:
    lrs = config.teacher_lrs
    started = time.perf_counter()

    def step_hook(recipe: TrainConfig) -> StepHook:
        run = lrs.index(recipe.lr)
        total = recipe.max_steps * len(lrs)  # an upper bound: runs may stop early
        message = "training the teacher on the real data" + (
            f" (lr {recipe.lr}, {run + 1} of {len(lrs)})" if len(lrs) > 1 else ""
        )

        def on_step(step: int, _model: nn.Module) -> None:
            if step % recipe.eval_every and step != recipe.max_steps:
                return
            done = run * recipe.max_steps + step
            rate = (time.perf_counter() - started) / done
            hooks.on_progress(
                Progress("teacher", 0, done, total, {}, rate * (total - done), message)
            )

        return on_step

    teacher, reuse = experiment.train_teacher(
        config, step_hook=step_hook, should_stop=hooks.should_cancel
    )
    if hooks.should_cancel():
        raise Cancelled("cancelled while training the teacher")
    return teacher, reuse


def pack_checkpoint(teacher: bytes, distill_state: bytes | None) -> bytes:
    """One blob: the trained teacher (+ pool) and, once distillation runs, its state."""
    tensors = {"teacher": torch.frombuffer(bytearray(teacher), dtype=torch.uint8)}
    if distill_state is not None:
        tensors["distill"] = torch.frombuffer(bytearray(distill_state), dtype=torch.uint8)
    return save_tensors(tensors, metadata={"format": CHECKPOINT_FORMAT})


def unpack_checkpoint(blob: bytes) -> tuple[bytes, bytes | None]:
    if read_metadata(blob).get("format") != CHECKPOINT_FORMAT:
        raise DataError("not a td3 job checkpoint")
    tensors = load_tensors(blob)
    distill = tensors.get("distill")
    return tensors[
        "teacher"
    ].numpy().tobytes(), None if distill is None else distill.numpy().tobytes()
