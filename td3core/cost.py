"""A job's compute, estimated before it runs (torch-free: the API's quotas and the CLI
use it).

The unit is a billion item scores: every training step of every model scores all
`items` at every position of every sequence in its batch, and that product dominates
the run time. So

    distillation = outer steps x inner steps x users x length x items
    teacher      = teacher steps x teacher batch x history length x items
    evaluation   = trained learners x learner steps x learner batch x history length x items

with outer steps = epochs x ceil(training samples / real_batch), the training samples
counted as the dataset's interactions (an upper bound of the split's training part),
and trained learners = evaluated rows x learners x learning rates searched x seeds.
It ignores the model width and the evaluation passes: it ranks and bounds jobs, it
does not predict seconds.
"""

from __future__ import annotations

import math

from td3core.config import JobConfig

UNIT = 1e9


def estimate_compute(config: JobConfig, *, items: int, interactions: int) -> float:
    """Compute units (billions of item scores) a job on a dataset of this size needs."""
    d = config.distill
    history = config.history_length
    outer_steps = d.epochs * math.ceil(max(interactions, 1) / d.real_batch)
    distillation = outer_steps * d.inner_steps * d.users * d.length * items
    teacher = config.teacher.max_steps * config.teacher.batch_size * history * items
    learners = (
        len(config.evaluations) * len(config.learners) * len(config.search_lrs) * config.eval_seeds
    )
    evaluation = learners * config.learner.max_steps * config.learner.batch_size * history * items
    return (distillation + teacher + evaluation) / UNIT
