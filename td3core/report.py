"""The job report (`td3-report/1`): one JSON document with the settings, the data,
the teacher, the distillation curves, the evaluation table, timings and memory.
Built here and only here; the pipeline, the CLI and the service read it."""

from __future__ import annotations

import json
import resource
from typing import Any

import torch

from td3core.config import JobConfig
from td3core.data.samples import Split
from td3core.data.types import SequenceDataset
from td3core.distill import DistillResult
from td3core.teacher import Teacher

REPORT_FORMAT = "td3-report/1"

# How every number in the evaluation table was obtained (shown with the table).
PROTOCOL = {
    "negatives": "uni100, seeded, shared by every row",
    "full": "rank among all items except the user's earlier items",
    "summary_learners": "fresh initialisation, embeddings included",
    "fsa_targets": "teacher features in eval mode (the authors' code: dropout on)",
    "padding_item": "masked in the summary's softmax (the authors' code: not masked)",
}


def build_report(
    *,
    dataset: SequenceDataset,
    config: JobConfig,
    split: Split,
    teacher: Teacher,
    distillation: DistillResult,
    evaluation_by_learner: dict[str, dict[str, dict]],
    timings: dict[str, float],
    device: str,
) -> dict[str, Any]:
    return {
        "format": REPORT_FORMAT,
        "config": config.model_dump(mode="json"),
        "dataset": {
            **dataset.stats().as_dict(),
            "sha256": dataset.source_sha256,
            "preprocessing": dataset.preprocessing,
        },
        "split": {
            "train": len(split.train),
            "valid": len(split.valid),
            "test": len(split.test),
            "max_len": split.max_len,
        },
        "teacher": {
            "valid_mrr10": teacher.fit.best_metric,
            "steps": teacher.fit.steps,
            "lr": teacher.lr,
            "lr_search": teacher.lr_search,
            "pool_epochs": teacher.pool_epochs,
            "pool_note": teacher.pool_note,
        },
        "distillation": {
            "best_epoch": distillation.best_epoch,
            "best_valid_mrr10": distillation.best_valid_mrr10,
            "curves": distillation.curves,
        },
        # the first learner's table (the distillation's own by default), as in earlier
        # reports; every evaluated learner's table beside it
        "evaluation": next(iter(evaluation_by_learner.values())),
        "evaluation_by_learner": evaluation_by_learner,
        "protocol": PROTOCOL,
        "timings": timings,
        "peak_memory_mb": peak_memory_mb(device),
        "device": device,
    }


def peak_memory_mb(device: str) -> float:
    """CUDA: peak allocated by torch; CPU: the process's peak resident set."""
    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    # ru_maxrss is in KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def report_json(report: dict[str, Any]) -> str:
    return json.dumps(report, indent=2, sort_keys=True)
