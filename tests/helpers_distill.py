"""A tiny, fast distillation setup shared by the distillation tests."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache

import torch

from td3core.config import DistillConfig, ModelConfig, TrainConfig
from td3core.data import PreprocessConfig, build_dataset, generate_interactions, leave_one_out
from td3core.distill import Distiller
from td3core.evaluation import sample_negatives
from td3core.teacher import Teacher, train_teacher

NO_DROPOUT = ModelConfig(hidden=8, inner=16, attn_dropout=0.0, hidden_dropout=0.0)
WITH_DROPOUT = ModelConfig(hidden=8, inner=16)


@contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


@cache
def tiny_split(max_len: int = 8):
    inter = generate_interactions(n_users=40, n_items=30, mean_length=10, seed=3)
    dataset = build_dataset(inter, PreprocessConfig(kcore="none"))
    split = leave_one_out(dataset, max_len)
    negatives = sample_negatives(split.valid, split.sequences, split.n_items, n=10, seed=1)
    return split, negatives


@cache
def tiny_teacher(model: ModelConfig, dtype: torch.dtype) -> Teacher:
    split, negatives = tiny_split()
    with default_dtype(dtype):
        recipe = TrainConfig(max_steps=12, eval_every=6, batch_size=64)
        return train_teacher(split, negatives, model, recipe, pool_epochs=(1, 4))


def distiller(model: ModelConfig = NO_DROPOUT, **overrides) -> Distiller:
    """A Distiller on the tiny split, in the current default dtype. Selection is a
    deterministic function of the factors: these tests are about the outer loop."""
    settings = dict(
        users=6,
        length=8,
        epochs=2,
        inner_steps=6,
        window=3,
        real_batch=96,
        synthetic_batch=4,
        rank=3,
    )
    settings.update(overrides)
    split, _ = tiny_split()
    teacher = tiny_teacher(model, torch.get_default_dtype())
    return Distiller(
        DistillConfig(**settings), split, teacher, model, select=lambda s: float(s.U.detach().sum())
    )
