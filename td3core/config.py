"""Every setting of a TD3 run, validated once, with the paper's defaults.

Pydantic models (no torch import) so the API reuses them as its job schema and
the worker, the CLI and the library all read one definition.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, model_validator

# Real-data training sets at the summary's budget (td3core.baselines builds them).
SamplerName = Literal["random-users", "random-interactions", "longest"]
SAMPLERS: tuple[str, ...] = get_args(SamplerName)
# The data sources an evaluation table compares: the summary, all real data, samplers.
EvaluationName = Literal["summary", "full", SamplerName]
EVALUATIONS: tuple[str, ...] = ("summary", "full", *SAMPLERS)
# The learner zoo (td3core.models.LEARNERS): the distillation's SASRec and RecBole's
# defaults of SASRec, GRU4Rec, NARM and BERT4Rec, each trained from scratch.
LearnerName = Literal["sasrec", "sasrec-2x64", "gru4rec", "narm", "bert4rec"]
LEARNER_NAMES: tuple[str, ...] = get_args(LearnerName)
# How a learner trains on a summary: the distillation's inner loss (last position +
# ALT) or KL at every position (td3core.learner).
Objective = Literal["inner", "kl-all"]
OBJECTIVES: tuple[str, ...] = get_args(Objective)
# Augmented learner training predicts a position p in [5, zeta-2] from p-1: it needs
# zeta >= 7 (the authors' code crashes below that).
ALT_FIRST_POSITION = 5
ALT_MIN_LENGTH = ALT_FIRST_POSITION + 2
# One intra-op thread by default: distillation and the small learners are bound by
# per-op overhead, not arithmetic. On 2 cores a second thread gained ~15 % when the
# other core was idle and ran 8-12x slower when another process held it (bench/README).
DEFAULT_TORCH_THREADS = 1
# Seeds are offset and combined (seed + i, several streams per run): keeping them to
# 32 bits leaves every derived value inside what torch and numpy accept.
MAX_SEED = 2**32 - 1


class _Settings(BaseModel):
    # Infinity and NaN are never a setting (they pass `gt`/`le` bounds or poison the
    # arithmetic); unknown fields are an error, not silently dropped.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class ModelConfig(_Settings):
    """SASRec size; defaults are the authors' scripts (hidden 32, 1 head, 1 layer)."""

    hidden: int = Field(32, ge=4, le=1024)
    heads: int = Field(1, ge=1, le=16)
    layers: int = Field(1, ge=1, le=8)
    inner: int = Field(64, ge=4, le=4096)
    attn_dropout: float = Field(0.5, ge=0.0, lt=1.0)
    hidden_dropout: float = Field(0.2, ge=0.0, lt=1.0)

    @model_validator(mode="after")
    def _heads_divide_hidden(self) -> ModelConfig:
        if self.hidden % self.heads:
            raise ValueError(f"hidden ({self.hidden}) must be divisible by heads ({self.heads})")
        return self


class TrainConfig(_Settings):
    """The one training recipe every model gets (teacher, baselines, summary learners):
    Adam, validation MRR@10 every `eval_every` steps, early stop after `patience`
    evaluations without improvement, at most `max_steps` steps."""

    lr: float = Field(1e-3, gt=0.0, le=1.0)
    weight_decay: float = Field(0.0, ge=0.0, le=1.0)
    batch_size: int = Field(256, ge=1, le=65536)
    max_steps: int = Field(3000, ge=1, le=1_000_000)
    eval_every: int = Field(100, ge=1, le=1_000_000)
    patience: int = Field(5, ge=1, le=10_000)
    seed: int = Field(0, ge=0, le=MAX_SEED)
    max_epochs: int = Field(
        100, ge=1, le=100_000, description="step cap in passes over the training data"
    )

    def sized_for(self, samples: int) -> TrainConfig:
        """This recipe fitted to a training set of `samples` rows: validate at least
        once per pass (but not more often than every MIN_EVAL_EVERY steps, so early
        stopping is not decided by noise) and stop after `max_epochs` passes. A
        600-interaction sample then trains for a few hundred steps, not 3000, and the
        full data keeps the recipe as it is."""
        per_epoch = max(1, -(-samples // self.batch_size))
        eval_every = min(self.eval_every, max(per_epoch, MIN_EVAL_EVERY))
        max_steps = min(self.max_steps, max(self.max_epochs * per_epoch, eval_every))
        return self.model_copy(update={"eval_every": eval_every, "max_steps": max_steps})


# Early stopping is judged on validations at least this many steps apart.
MIN_EVAL_EVERY = 10


class DistillConfig(_Settings):
    """Algorithm 1 with RaT-BPTT; defaults from the paper and the authors' scripts
    (docs/METHOD.md §1)."""

    users: int = Field(..., ge=1, le=10_000, description="mu: synthetic users")
    length: int = Field(..., ge=2, le=1024, description="zeta: synthetic sequence length")
    # rank 32 and outer lr 0.03 lie in the paper's search ranges (d1, d2 in 8..64,
    # alpha in {0.01, 0.03}); on Magazine and ML-100k they beat rank 8 / lr 0.01
    # clearly for learners trained from scratch (bench/README.md).
    method: Literal["tucker", "farzi"] = Field(
        "tucker",
        description="the summary learned: 'tucker', TD3's; 'farzi', Farzi Data's latent "
        "summary and decoder (the paper's baseline), with everything else as TD3",
    )
    rank: int = Field(
        32,
        ge=1,
        le=512,
        description="d1 = d2 of the Tucker core; with method='farzi', d of the latent summary",
    )
    temperature: float = Field(1.0, gt=0.0, le=100.0)
    # A real start won on validation over the zoo of learners on Magazine and ML-100k,
    # under both protocols (docs/METHOD.md §1); 0.3 was the best confidence of five, and
    # the longest users' rows beat random users' on Magazine and tied on ML-100k.
    init: Literal["random", "real"] = Field(
        "real",
        description="how the summary starts: 'real' (default), fitted to a real sample of "
        "the same budget (`init_rows`; histories laid end to end, cut into rows), each cell "
        "towards `init_confidence` of its mass on the real item; 'random', the paper's",
    )
    init_confidence: float = Field(
        0.3,
        gt=0.0,
        lt=1.0,
        description="with init='real': the mass each cell's fit aims to put on its real item",
    )
    init_rows: Literal["random-users", "longest"] = Field(
        "longest",
        description="with init='real': the real sample of the budget whose histories, laid "
        "end to end, make the rows (the baselines' samplers of the same names)",
    )
    epochs: int = Field(30, ge=1, le=1000, description="passes over the real training samples")
    inner_steps: int = Field(200, ge=1, le=10_000, description="N: inner steps per outer step")
    window: int = Field(40, ge=1, le=10_000, description="W: differentiable inner steps")
    inner_lr: float = Field(0.005, gt=0.0, le=10.0)
    inner_weight_decay: float = Field(5e-5, ge=0.0, le=1.0)
    inner_eps: float = Field(1e-8, gt=0.0, le=1.0, description="Adam epsilon of the inner learner")
    outer_lr: float = Field(0.03, gt=0.0, le=10.0)
    outer_weight_decay: float = Field(1e-4, ge=0.0, le=1.0)
    grad_clip: float = Field(1.0, gt=0.0, le=1e6)
    synthetic_batch: int = Field(20, ge=1, le=10_000)
    real_batch: int = Field(1024, ge=1, le=65536)
    inner_objective: Objective = Field(
        "inner",
        description="the inner learner's loss on the summary: 'inner', the paper's (the "
        "last position, with ALT if `alt`); 'kl-all', KL at every position (every cell is "
        "a target, as for a learner trained like a language model)",
    )
    alt: bool = Field(True, description="augmented learner training (the 'inner' objective)")
    fsa: bool = Field(
        False,
        description="feature space alignment (the paper's outer loss term; off by default: "
        "with it, learners other than SASRec did worse on validation, docs/METHOD.md §1)",
    )
    fsa_weight: float = Field(1.0, ge=0.0, le=1000.0)
    learner_draw: Literal["step", "epoch"] = Field(
        "step",
        description="'step': a fresh pool learner every outer step (paper); "
        "'epoch': once per epoch, and each further outer step of the epoch starts from "
        "the learner after the previous step's ordinary (non-differentiable) inner steps, "
        "with a fresh inner Adam (authors' code)",
    )
    fresh_learners: float = Field(
        1.0,
        ge=0.0,
        le=1.0,
        description="probability that an outer step's learner starts from a fresh "
        "initialisation, as a user's learner does, instead of a pool checkpoint (0: the "
        "paper; 1 by default: better for every learner of the zoo on validation, "
        "docs/METHOD.md §1)",
    )
    pool_first_epoch: int = Field(5, ge=1, le=1000)
    pool_last_epoch: int = Field(30, ge=1, le=1000)
    select_steps: int = Field(
        200, ge=1, le=100_000, description="learner steps on the summary to pick the best one"
    )
    item_chunk: int = Field(
        16384,
        ge=1,
        le=10_000_000,
        description="catalogues of more items than this are read this many items at a "
        "time (exact; memory no longer grows with batch x zeta x items, each step costs "
        "more); smaller ones all at once",
    )
    real_chunk: int = Field(
        8192,
        ge=1,
        le=1_000_000,
        description="real batches of more samples than this are read this many samples at "
        "a time in the outer loss (the same meta-gradient; memory for one chunk's "
        "activations instead of the batch's); smaller ones all at once",
    )
    backend: Literal["func", "higher"] = Field(
        "func",
        description="differentiable inner loop: 'func', the fast engine (default), or "
        "'higher', the straightforward reference engine on the `higher` package",
    )
    seed: int = Field(0, ge=0, le=MAX_SEED)

    @model_validator(mode="after")
    def _consistent(self) -> DistillConfig:
        if self.window > self.inner_steps:
            raise ValueError(
                f"window ({self.window}) must not exceed inner_steps ({self.inner_steps})"
            )
        if self.alt and self.length < ALT_MIN_LENGTH:
            raise ValueError(
                f"alt (augmented learner training) needs length >= {ALT_MIN_LENGTH}; set alt=false"
            )
        if self.backend == "higher" and self.learner_draw == "epoch":
            raise ValueError(
                "the 'higher' backend is a cross-check and supports learner_draw='step' only"
            )
        if self.pool_first_epoch > self.pool_last_epoch:
            raise ValueError("pool_first_epoch must not exceed pool_last_epoch")
        return self


class JobConfig(_Settings):
    """A whole job: split -> teacher -> distillation -> evaluation."""

    distill: DistillConfig
    model: ModelConfig = ModelConfig()
    teacher: TrainConfig = TrainConfig()
    learner: TrainConfig = TrainConfig(lr=0.005, batch_size=20, max_steps=200, eval_every=20)
    max_len: int | None = Field(None, ge=2, le=1024, description="history length; default: length")
    evaluations: list[EvaluationName] = ["summary", "full", "random-users"]
    eval_seeds: int = Field(1, ge=1, le=10, description="learners trained per evaluated data")
    negatives_seed: int = Field(0, ge=0, le=MAX_SEED)
    paper_compatible: bool = Field(
        False, description="also report learners started from the teacher's item embeddings (leaky)"
    )
    learners: list[LearnerName] = Field(
        ["sasrec"],
        min_length=1,
        max_length=len(LEARNER_NAMES),
        description="learners trained on every evaluated row (summary and real data alike); "
        "the report's `evaluation` is the first one's table, `evaluation_by_learner` has all",
    )
    summary_objectives: list[Objective] = Field(
        ["inner"],
        min_length=1,
        max_length=len(OBJECTIVES),
        description="how learners train on the summary: 'inner' (the distillation's inner "
        "loss, row 'summary') and/or 'kl-all' (KL at every position, row 'summary (kl-all)')",
    )
    search_lrs: list[Annotated[float, Field(gt=0.0, le=1.0)]] = Field(
        [0.001, 0.005],
        min_length=1,
        max_length=8,
        description="learning rates tried for every evaluated row (summary, full data, "
        "samplers alike); each row reports the one with the best validation MRR@10",
    )
    teacher_search: bool = Field(
        True,
        description="train the teacher at every lr of search_lrs and keep the run with the "
        "best validation MRR@10 (the full-data row's own search); false: at teacher.lr only",
    )

    @model_validator(mode="before")
    @classmethod
    def _merge_partial_settings(cls, data: Any) -> Any:
        """A nested override changes only the fields it names: `{"learner":
        {"max_steps": 10}}` keeps the learner recipe's lr and batch, instead of
        resetting them to `TrainConfig`'s own defaults."""
        if not isinstance(data, dict):
            return data
        merged = dict(data)
        for name, info in cls.model_fields.items():
            given, default = merged.get(name), info.default
            if isinstance(given, dict) and isinstance(default, BaseModel):
                merged[name] = default.model_dump() | given
        return merged

    @property
    def teacher_lrs(self) -> list[float]:
        """The learning rates the teacher is trained at (the best on validation is kept)."""
        return list(self.search_lrs) if self.teacher_search else [self.teacher.lr]

    @property
    def history_length(self) -> int:
        return self.max_len or self.distill.length

    @classmethod
    def from_preset(cls, name: PresetName, overrides: dict[str, Any]) -> JobConfig:
        """The preset's settings with `overrides` (JobConfig's nested shape) on top: a
        nested section (`distill`, `teacher`, ...) changes only the fields it names."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; one of {', '.join(PRESETS)}")
        merged = dict(PRESETS[name])
        for key, value in overrides.items():
            base = merged.get(key)
            merged[key] = (
                base | value if isinstance(base, dict) and isinstance(value, dict) else value
            )
        return cls.model_validate(merged)


PresetName = Literal["default", "paper", "smoke"]
# Named starting points for a job (JobConfig's nested shape, without users and length).
# "default": every default (30 epochs x 200 inner steps: hours on a CPU for ML-100k).
# "paper": the paper's Algorithm 1 as published: the defaults plus FSA in the outer loss,
# inner learners from the teacher's checkpoint pool, a random start of the summary and a
# teacher trained at the authors' lr alone (no validation search). "smoke": a
# pipeline check that finishes in well under a minute on a CPU on small data; its
# numbers mean nothing.
PRESETS: dict[str, dict[str, Any]] = {
    "default": {},
    "paper": {
        "distill": {"fsa": True, "fresh_learners": 0.0, "init": "random"},
        "teacher_search": False,
    },
    "smoke": {
        "distill": {
            "epochs": 1,
            "inner_steps": 10,
            "window": 5,
            "rank": 8,
            "select_steps": 10,
        },
        "teacher": {"max_steps": 60, "eval_every": 20, "batch_size": 128},
        "learner": {"max_steps": 30, "eval_every": 10},
        "search_lrs": [0.005],
        "evaluations": ["summary", "random-users"],
    },
}
