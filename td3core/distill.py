"""TD3's bi-level distillation (paper Algorithm 1) with RaT-BPTT.

Each outer step: draw a learner from the teacher's checkpoint pool, run c ~ U{0..N-W}
ordinary steps of a fresh inner Adam on the summary, then W differentiable steps that
continue the Adam moments, and update (G, U, T) with the gradient of
CE(real batch) + FSA(teacher features) taken through those W steps. With
learner_draw="epoch" the draw happens once per epoch and the next outer step starts
from the learner after the ordinary steps (docs/METHOD.md §1). With method="farzi"
the summary is Farzi Data's (latent, decoder) instead of (G, U, T); the rest is the same.

Every random choice of outer step s comes from generators seeded by (seed, s), so
the counters are the whole RNG state: a run stopped after any step and resumed
from `state_bytes()` continues exactly as an uninterrupted one.

Two engines run the inner loop. "func" (default) holds the learner in one flat
buffer: plain steps keep no graph and update in place with a fused Adam, each
differentiable Adam update is one autograd node, dropout masks come from uniform
noise and the outer loss runs the last block at the position it reads. "higher" is
the reference, straightforward throughout: a regular module with
`torch.optim.Adam` for the plain steps, the `higher` package for the window. The
tests check that both give the same meta-gradient.
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import NamedTuple, cast

import torch
import torch.nn.functional as F
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors
from torch import Tensor, nn
from torch.profiler import record_function

from td3core.config import DistillConfig, ModelConfig, TrainConfig
from td3core.data.samples import Split
from td3core.data.sampling import packed_rows
from td3core.errors import Cancelled, ConfigError, DataError
from td3core.graphs import GraphedFunction, GraphedPlainSteps
from td3core.inner import (
    BoundLearner,
    ChunkedSoftSequences,
    SoftSequences,
    alt_positions,
    inner_learner,
    inner_loss,
    kl_all_loss,
    summary_loss,
)
from td3core.item_chunks import soft_cross_entropy
from td3core.models.sasrec import SASRec
from td3core.optim import AdamState, Params, adam_update
from td3core.serialization import read_metadata
from td3core.summary import (
    FarziSummary,
    Summary,
    TuckerSummary,
    copy_parameters,
)
from td3core.teacher import Teacher

STATE_FORMAT = "td3-distill-state/2"
LEGACY_STATE_FORMAT = "td3-distill-state/1"
# init="real": enough Adam steps for the cells to reach their target confidence
INIT_FIT_STEPS = 300
INIT_FIT_LR = 0.05
REAL_ROWS_STREAM = 0x5EED  # seed_for(seed, this) draws the real rows


@dataclass
class DistillProgress:
    epoch: int  # 1-based epoch the step belongs to
    step: int  # outer steps done
    total: int
    losses: dict[str, float]
    eta_seconds: float | None


@dataclass
class DistillResult:
    summary: Summary  # the best summary by validation MRR@10
    best_epoch: int
    best_valid_mrr10: float
    curves: list[dict] = field(default_factory=list)
    seconds: float = 0.0


@dataclass
class MetaLoss:
    loss: Tensor  # differentiable w.r.t. the summary's factors
    ce: Tensor
    fsa: Tensor
    plain_steps: int
    # The learner after the ordinary steps, where learner_draw="epoch" continues
    # (None from the reference backend, which the config keeps to "step").
    carry: Params | None


SelectFn = Callable[[Summary], float]


class WindowStart(NamedTuple):
    """Where the W differentiable inner steps start: the learner and the Adam moments
    after the ordinary steps (flat buffers) and the steps taken."""

    theta: Tensor  # [P]
    exp_avg: Tensor  # [P]
    exp_avg_sq: Tensor  # [P]
    step: int | Tensor  # a 0-d tensor where a replayed graph reads it from the device


class RealPart(NamedTuple):
    """Real samples on the device for the outer loss, with their teacher features."""

    history: Tensor  # [R, L]
    lengths: Tensor  # [R]
    targets: Tensor  # [R]
    teacher_features: Tensor  # [R, H]


class WindowInputs(NamedTuple):
    start: WindowStart
    positions: list[Tensor | None]  # ALT target positions of each window step
    parts: list[RealPart]


def with_gradient(value: Tensor, tensors: list[Tensor], grads: list[Tensor]) -> Tensor:
    """`value` (detached) as a loss whose gradient w.r.t. each of `tensors` is the
    matching `grads`: value + g . t - (g . t).detach(). For a gradient computed
    apart (in chunks, or inside a replayed graph) that must reach earlier tensors."""
    linear = torch.stack([(g * t).sum() for g, t in zip(grads, tensors, strict=True)]).sum()
    return value.detach() + linear - linear.detach()


@contextmanager
def parameters_replaced(module: nn.Module, tensors: dict[str, Tensor]) -> Iterator[None]:
    """`module`'s own (top-level) parameters read as `tensors` inside the block."""
    saved = {name: module._parameters[name] for name in tensors}
    module._parameters.update(tensors)  # type: ignore[arg-type]
    try:
        yield
    finally:
        module._parameters.update(saved)


class WindowReplay:
    """The window and the outer objective as one replayed CUDA graph
    (`GraphedFunction`) for outer steps with a whole real batch: the inputs are
    copied into static buffers, then `outputs(inputs)` replays. A step's tensors
    differ only in values (the ordinary steps' count varies, so Adam's step count
    is a device scalar here). With `capture` off, the same code runs eagerly."""

    def __init__(
        self,
        outputs: Callable[[WindowInputs], list[Tensor]],
        *,
        real_batch: int,
        capture: bool,
    ):
        self.outputs = outputs
        self.real_batch = real_batch
        self.capture = capture
        self.inputs: WindowInputs | None = None
        self.graph: GraphedFunction | None = None

    def fits(self, parts: list[RealPart]) -> bool:
        """Only whole real batches replay (an epoch's last, smaller one runs eagerly)."""
        return sum(len(part.targets) for part in parts) == self.real_batch

    def __call__(
        self, start: WindowStart, positions: list[Tensor | None], parts: list[RealPart]
    ) -> list[Tensor]:
        if self.inputs is None:
            theta = start.theta.detach().clone()
            step = torch.tensor(float(start.step), dtype=theta.dtype, device=theta.device)
            self.inputs = WindowInputs(
                WindowStart(theta, start.exp_avg.clone(), start.exp_avg_sq.clone(), step),
                [None if p is None else p.clone() for p in positions],
                [RealPart(*(t.clone() for t in part)) for part in parts],
            )
            inputs = self.inputs
            self.graph = GraphedFunction(lambda: self.outputs(inputs), capture=self.capture)
        else:
            with torch.no_grad():
                self._refill(start, positions, parts)
        assert self.graph is not None
        return self.graph()

    def _refill(
        self, start: WindowStart, positions: list[Tensor | None], parts: list[RealPart]
    ) -> None:
        assert self.inputs is not None
        static = self.inputs.start
        for mine, theirs in zip(static[:3], start[:3], strict=True):
            mine.copy_(theirs)
        assert isinstance(static.step, Tensor)
        static.step.fill_(float(start.step))  # a kernel argument: no synchronisation
        for static_positions, found in zip(self.inputs.positions, positions, strict=True):
            if static_positions is not None and found is not None:
                static_positions.copy_(found)
        for part, given in zip(self.inputs.parts, parts, strict=True):
            for mine, theirs in zip(part, given, strict=True):
                mine.copy_(theirs)


def seed_for(*parts: int) -> int:
    """A 63-bit seed from integers (stable across runs and platforms)."""
    value = 0x9E3779B97F4A7C15
    for part in parts:
        value = (value ^ (part + 0x632BE59BD9B4E019 + (value << 6) + (value >> 2))) & (2**63 - 1)
    return value


class _Apply(nn.Module):
    """Runs any function of the learner under substituted parameters (`higher`
    patches `forward`)."""

    def __init__(self, model: SASRec):
        super().__init__()
        self.model = model

    def forward(self, fn: Callable[[SASRec], Tensor]) -> Tensor:
        return fn(self.model)


class Distiller:
    def __init__(
        self,
        config: DistillConfig,
        split: Split,
        teacher: Teacher,
        model_config: ModelConfig,
        *,
        select: SelectFn,
        device: str | torch.device = "cpu",
        state: bytes | None = None,
        cuda_graphs: bool = False,
    ):
        """`state`, from `state_bytes`, continues that run (without redoing the start).
        `cuda_graphs`: replay the inner loop from CUDA graphs (opt-in, td3core.graphs:
        the ordinary steps, then the window with the outer objective and its gradient;
        CUDA, the fast engine and catalogues read whole only)."""
        if not teacher.pool:
            raise ConfigError("the teacher has no checkpoint pool to draw learners from")
        if config.length - 1 > split.max_len:
            raise ConfigError(
                f"length {config.length} needs max_len >= {config.length - 1} (got {split.max_len})"
            )
        self.config = config
        self.split = split
        self.device = torch.device(device)
        self.select = select
        self.pool = [{k: v.to(self.device) for k, v in state.items()} for state in teacher.pool]
        # Kept on the host, each outer step moving its real batch: the whole training
        # set on a GPU (ML-1M: 981k histories of 99 ids) would hold 0.8 GB of it.
        self.train = split.train
        self.teacher_features = teacher.features(split.train).cpu()  # [N, H], cached, likewise
        self.model_config = model_config
        self._chunked = split.n_items > config.item_chunk
        if cuda_graphs and (
            self.device.type != "cuda" or self._chunked or config.backend != "func"
        ):
            raise ConfigError(
                "CUDA graphs need a CUDA device, the func backend and a catalogue of at "
                f"most item_chunk ({config.item_chunk}) items"
            )
        self._cuda_graphs = cuda_graphs
        self._graphed: GraphedPlainSteps | None = None  # built at the first ordinary steps
        self._window_graph = (
            WindowReplay(self._window_outputs, real_batch=config.real_batch, capture=True)
            if cuda_graphs
            else None
        )
        self._everywhere = config.inner_objective == "kl-all"  # every cell a target
        # Dropout stays on in the inner loop (and in the outer loss, as in the authors' code).
        self.learner = BoundLearner(self._new_model())
        self.param_names = list(self.learner.layout.names)
        # The reference backend trains a plain module with its own parameters.
        self._reference = None
        if config.backend == "higher":
            reference = SASRec.from_config(split.n_items, split.max_len, model_config)
            self._reference = _Apply(reference.to(self.device).train())

        init = torch.Generator().manual_seed(seed_for(config.seed, 0xC0DE))
        summary: Summary
        if config.method == "farzi":
            summary = FarziSummary(
                config.users,
                config.length,
                config.rank,
                split.n_items,
                temperature=config.temperature,
                generator=init,
            )
        else:
            summary = TuckerSummary(
                config.users,
                config.length,
                config.rank,
                teacher.item_embeddings.cpu(),
                temperature=config.temperature,
                generator=init,
            )
        self.summary = summary.to(self.device)
        if config.init == "real" and state is None:
            rows = packed_rows(
                split,
                config.init_rows,
                users=config.users,
                length=config.length,
                seed=seed_for(config.seed, REAL_ROWS_STREAM),
            )
            fit_to_items(
                self.summary,
                torch.as_tensor(rows, device=self.device),
                confidence=config.init_confidence,
                steps=INIT_FIT_STEPS,
                lr=INIT_FIT_LR,
                chunk=config.item_chunk,
            )
        self.optimizer = torch.optim.Adam(
            self.summary.parameters(), lr=config.outer_lr, weight_decay=config.outer_weight_decay
        )
        self.steps_per_epoch = math.ceil(len(split.train) / config.real_batch)
        self.total_steps = config.epochs * self.steps_per_epoch
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            self.optimizer, T_max=self.total_steps
        )
        self.step = 0
        self.curves: list[dict] = []
        self.best_metric = -1.0
        self.best_epoch = 0
        self.best_factors = self._factors()
        self._carried: Params | None = None  # learner_draw="epoch" only
        self._epoch_losses: list[dict[str, float]] = []
        n_batches = math.ceil(config.users / config.synthetic_batch)
        self.synthetic_batches = [
            torch.arange(
                b * config.synthetic_batch,
                min((b + 1) * config.synthetic_batch, config.users),
                device=self.device,
            )
            for b in range(n_batches)
        ]
        if state is not None:
            self.load_state_bytes(state)

    # ------------------------------------------------------------------ running
    def run(
        self,
        *,
        on_progress: Callable[[DistillProgress], None] | None = None,
        should_cancel: Callable[[], bool] | None = None,
        on_checkpoint: Callable[[bytes], None] | None = None,
        checkpoint_every: int = 10,
        stop_after: int | None = None,
    ) -> DistillResult:
        """Run (or continue) to the end. `stop_after` stops after that many outer
        steps in total (used to test resumption)."""
        started, done_at_start = time.perf_counter(), self.step
        while self.step < self.total_steps:
            if stop_after is not None and self.step >= stop_after:
                break
            if should_cancel is not None and should_cancel():
                raise Cancelled("distillation cancelled")
            losses = self.outer_step()
            if self.step % self.steps_per_epoch == 0:
                self._end_epoch()
            if on_progress is not None:
                rate = (time.perf_counter() - started) / (self.step - done_at_start)
                on_progress(
                    DistillProgress(
                        epoch=(self.step - 1) // self.steps_per_epoch + 1,
                        step=self.step,
                        total=self.total_steps,
                        losses=losses,
                        eta_seconds=rate * (self.total_steps - self.step),
                    )
                )
            if on_checkpoint is not None and (
                self.step % checkpoint_every == 0 or self.step == self.total_steps
            ):
                on_checkpoint(self.state_bytes())
        return self.result(seconds=time.perf_counter() - started)

    def result(self, seconds: float = 0.0) -> DistillResult:
        return DistillResult(
            self._summary_from(self.best_factors),
            self.best_epoch,
            self.best_metric,
            list(self.curves),
            seconds,
        )

    def _summary_from(self, factors: dict[str, Tensor]) -> Summary:
        """A CPU summary holding `factors`, apart from the live one (a copy: no random
        initialisation to draw)."""
        summary = copy.deepcopy(self.summary).cpu()
        copy_parameters(summary, factors)
        return summary

    def outer_step(self) -> dict[str, float]:
        """One step of Algorithm 1: meta-gradient through the inner loop, then an
        Adam update of (G, U, T)."""
        cfg = self.config
        self.optimizer.zero_grad(set_to_none=True)
        meta = self.meta_loss()
        with record_function("td3.meta_backward"):
            meta.loss.backward()
        with record_function("td3.summary_update"):
            grad_norm = torch.nn.utils.clip_grad_norm_(self.summary.parameters(), cfg.grad_clip)
            self.optimizer.step()
        self.scheduler.step()
        if cfg.learner_draw == "epoch":
            assert meta.carry is not None  # the config refuses the reference backend here
            self._carried = meta.carry
        self.step += 1
        losses = {
            "outer": meta.loss.item(),
            "ce": meta.ce.item(),
            "fsa": meta.fsa.item(),
            "grad_norm": float(grad_norm),
            "plain_steps": float(meta.plain_steps),
        }
        self._epoch_losses.append(losses)
        return losses

    def meta_loss(self) -> MetaLoss:
        """The outer loss of the current step as a function of (G, U, T), through
        the W differentiable inner steps. Pure: calling it twice gives the same value."""
        cfg, s = self.config, self.step
        epoch, index = divmod(s, self.steps_per_epoch)
        gen = torch.Generator().manual_seed(seed_for(cfg.seed, 1, s))
        real = self._real_batch(epoch, index)
        params = self._initial_learner(epoch, index, gen)
        plain = int(torch.randint(0, cfg.inner_steps - cfg.window + 1, (1,), generator=gen))
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed_for(cfg.seed, 2, s))  # dropout in this step
            carry: Params | None = None
            if self._reference is None:
                # a fresh inner Adam every outer step, also where the learner is carried
                start = self._inner_loop(params, AdamState.zeros_like(params), plain, gen)
                carry = self.learner.layout.views(start.theta.detach())
                positions = self._alt_positions(cfg.window, gen)
                parts = self._real_parts(real)
                if self._window_graph is not None and self._window_graph.fits(parts):
                    loss, ce, fsa = self._replayed_window(start, positions, parts)
                else:
                    start.theta.requires_grad_(True)  # a leaf: the window starts detached
                    with record_function("td3.window"):
                        params = self._window(start, positions)
                    with record_function("td3.outer_objective"):
                        loss, ce, fsa = self._outer_objective(params, parts)
            else:  # learner_draw="step" (the config's rule)
                params, ce, fsa = self._reference_meta(params, plain, gen, real)
                loss = self._combine(ce, fsa)
        return MetaLoss(loss, ce.detach(), fsa.detach(), plain, carry)

    def _combine(self, ce: Tensor, fsa: Tensor) -> Tensor:
        return ce + self.config.fsa_weight * fsa if self.config.fsa else ce

    # ------------------------------------------------------------ the pieces
    def _real_batch(self, epoch: int, index: int) -> Tensor:
        order = torch.randperm(
            len(self.train),
            generator=torch.Generator().manual_seed(seed_for(self.config.seed, 3, epoch)),
        )
        start = index * self.config.real_batch
        return order[start : start + self.config.real_batch]  # host indices into train

    def _initial_learner(self, epoch: int, index: int, gen: torch.Generator) -> Params:
        cfg = self.config
        if cfg.learner_draw == "epoch" and index > 0 and self._carried is not None:
            return self._carried
        draw_gen = (
            gen
            if cfg.learner_draw == "step"
            else torch.Generator().manual_seed(seed_for(cfg.seed, 4, epoch))
        )
        if cfg.fresh_learners and float(torch.rand(1, generator=draw_gen)) < cfg.fresh_learners:
            params = self._fresh_learner(int(torch.randint(2**62, (1,), generator=draw_gen)))
        else:
            state = self.pool[int(torch.randint(len(self.pool), (1,), generator=draw_gen))]
            params = {name: state[name].detach().clone() for name in self.param_names}
        return params

    def _fresh_learner(self, seed: int) -> Params:
        """Parameters of a freshly initialised learner (what a user of the summary
        starts from), drawn without touching the global RNG."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            fresh = SASRec.from_config(self.split.n_items, self.split.max_len, self.model_config)
        return {name: p.detach().to(self.device) for name, p in fresh.named_parameters()}

    def _new_model(self) -> SASRec:
        model = SASRec.from_config(self.split.n_items, self.split.max_len, self.model_config)
        return inner_learner(model).to(self.device).train()

    def _batch_probs(self, steps: int) -> list[SoftSequences | ChunkedSoftSequences]:
        """S for the synthetic batches that `steps` inner steps visit (batches cycle in
        a fixed order). Computed once per phase: the factors do not change inside the
        inner loop, and in the window one tensor per batch keeps the graph small.
        Kept factored when the catalogue is larger than `item_chunk`."""
        visited = self._visited(steps)
        if not self._chunked:
            return [SoftSequences.of(self.summary.probs(users)) for users in visited]
        items, chunk = self.summary.item_vectors(), self.config.item_chunk
        return [ChunkedSoftSequences(self.summary.scores(users), items, chunk) for users in visited]

    def _dense_probs(self, steps: int) -> list[Tensor]:
        """S of the same batches as `_batch_probs`, always materialised (the reference)."""
        return [self.summary.probs(users) for users in self._visited(steps)]

    def _visited(self, steps: int) -> list[Tensor]:
        """The synthetic batches `steps` inner steps visit (they cycle in a fixed order)."""
        return self.synthetic_batches[: min(steps, len(self.synthetic_batches))]

    def _alt_positions(self, steps: int, gen: torch.Generator) -> list[Tensor | None]:
        """The ALT target positions of `steps` inner steps, drawn up front (the same
        draws, in the same order, as one per step) and moved to the device at once,
        so the loop itself never waits for a copy."""
        if not self.config.alt or self._everywhere:
            return [None] * steps
        sizes = [len(self.synthetic_batches[t % len(self.synthetic_batches)]) for t in range(steps)]
        drawn = [alt_positions(size, self.config.length, gen) for size in sizes]
        return list(torch.cat(drawn).to(self.device).split(sizes)) if drawn else []

    def _inner_loop(
        self, params: Params, adam: AdamState, plain: int, gen: torch.Generator
    ) -> WindowStart:
        """`plain` ordinary inner steps from `params` and `adam`, in flat buffers: where
        the W differentiable steps start (with the detached Adam moments)."""
        layout = self.learner.layout
        theta = layout.flatten(params).detach()  # [P], a copy this loop owns
        exp_avg, exp_avg_sq = (t.detach() for t in layout.flatten_state(adam))
        if plain:
            with record_function("td3.plain_steps"):
                self._plain_steps(theta, exp_avg, exp_avg_sq, adam.step, plain, gen)
        return WindowStart(theta, exp_avg, exp_avg_sq, adam.step + plain)

    def _window(self, start: WindowStart, positions: list[Tensor | None]) -> Params:
        """The W differentiable steps, each a function of the previous one (graph
        kept); the synthetic batches restart at batch 0, as in the authors' code.
        `start.theta` must require grad. Returns the learner after the window."""
        layout = self.learner.layout
        theta, exp_avg, exp_avg_sq = start.theta, start.exp_avg, start.exp_avg_sq
        batches = self._batch_probs(self.config.window)
        for t in range(self.config.window):
            loss = inner_loss(
                self.learner(layout.views(theta)),
                batches[t % len(batches)],
                positions[t],
                everywhere=self._everywhere,
            )
            (grad,) = torch.autograd.grad(loss, theta, create_graph=True)
            theta, exp_avg, exp_avg_sq = self._adam(
                theta, grad, exp_avg, exp_avg_sq, start.step + (t + 1)
            )
        return layout.views(theta)

    def _replayed_window(
        self, start: WindowStart, positions: list[Tensor | None], parts: list[RealPart]
    ) -> tuple[Tensor, Tensor, Tensor]:
        """The window, the outer objective and its gradient w.r.t. the factors,
        replayed from one CUDA graph (td3core.graphs). Returns (loss, ce, fsa), the
        loss a surrogate with the exact value and gradient w.r.t. the factors."""
        assert self._window_graph is not None
        with record_function("td3.window_replayed"):
            # copies: the next replay rewrites the outputs in place
            loss, ce, fsa, *grads = (t.clone() for t in self._window_graph(start, positions, parts))
        return with_gradient(loss, list(self.summary.parameters()), grads), ce, fsa

    def _window_outputs(self, inputs: WindowInputs) -> list[Tensor]:
        """What the replayed window computes from its static inputs: the outer loss,
        CE, FSA and the loss's gradient w.r.t. each factor.

        It differentiates w.r.t. fresh leaves sharing the factors' and the learner's
        memory, made in this call: autograd ties a leaf's gradient to the stream
        current where the leaf was first used, and a factor first used by an eager
        step (an epoch's last, smaller batch) would tie the capture to the default
        stream, which a capture refuses."""
        start = inputs.start._replace(theta=inputs.start.theta.detach().requires_grad_(True))
        factors = {
            name: p.detach().requires_grad_(True) for name, p in self.summary.named_parameters()
        }
        with parameters_replaced(self.summary, factors):
            params = self._window(start, inputs.positions)
        loss, ce, fsa = self._outer_objective(params, inputs.parts)
        grads = torch.autograd.grad(loss, list(factors.values()))
        return [loss.detach(), ce.detach(), fsa.detach(), *grads]

    def _plain_steps(
        self,
        theta: Tensor,
        exp_avg: Tensor,
        exp_avg_sq: Tensor,
        step: int,
        count: int,
        gen: torch.Generator,
    ) -> None:
        """`count` ordinary steps, updating the flat buffers in place.

        A regular training loop on a model whose parameters are views of theta:
        backward accumulates into views of one flat gradient and torch's fused Adam
        (the same update as `adam_update`, to rounding) rewrites theta and the
        moments in one kernel, so a step builds no graph beyond the loss's own."""
        cfg = self.config
        if self._cuda_graphs:  # the same steps, replayed (td3core.graphs)
            with torch.no_grad():  # every batch: each graph reads one (whole: the rule)
                batches = self._batch_probs(len(self.synthetic_batches))
            dense = cast(list[SoftSequences], batches)
            positions = self._alt_positions(count, gen)
            if self._graphed is None:
                alt = cfg.alt and not self._everywhere
                self._graphed = GraphedPlainSteps(
                    self.learner,
                    theta,
                    dense,
                    [len(users) for users in self.synthetic_batches] if alt else None,
                    lr=cfg.inner_lr,
                    eps=cfg.inner_eps,
                    weight_decay=cfg.inner_weight_decay,
                    everywhere=self._everywhere,
                )
            self._graphed.run(theta, exp_avg, exp_avg_sq, step, dense, positions, count)
            return
        theta.grad = torch.zeros_like(theta)
        leaves, grads = self.learner.layout.views(theta), self.learner.layout.views(theta.grad)
        for name, leaf in leaves.items():
            leaf.requires_grad_(True)
            leaf.grad = grads[name]
        model = self.learner(leaves)
        optimizer = torch.optim.Adam(
            [theta],
            lr=cfg.inner_lr,
            eps=cfg.inner_eps,
            weight_decay=cfg.inner_weight_decay,
            fused=True,
        )
        optimizer.state[theta] = {
            # float32 whatever the parameters' dtype, as torch's fused Adam makes it: its
            # CUDA kernel reads the step through a float pointer, so a float64 step reads
            # as 0 and the bias correction divides by zero (the GPU check's NaN in float64)
            "step": torch.tensor(float(step), device=theta.device, dtype=torch.float32),
            "exp_avg": exp_avg,
            "exp_avg_sq": exp_avg_sq,
        }
        with torch.no_grad():
            batches = self._batch_probs(count)
        positions = self._alt_positions(count, gen)
        for t in range(count):
            theta.grad.zero_()
            batch = batches[t % len(batches)]
            inner_loss(model, batch, positions[t], everywhere=self._everywhere).backward()
            optimizer.step()
        theta.grad = None

    def _adam(
        self, theta: Tensor, grad: Tensor, exp_avg: Tensor, exp_avg_sq: Tensor, step: int | Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        cfg = self.config
        return adam_update(
            theta,
            grad,
            exp_avg,
            exp_avg_sq,
            step=step,
            lr=cfg.inner_lr,
            eps=cfg.inner_eps,
            weight_decay=cfg.inner_weight_decay,
        )

    def _reference_meta(
        self, params: Params, plain: int, gen: torch.Generator, real: Tensor
    ) -> tuple[Params, Tensor, Tensor]:
        """The reference engine, straightforward throughout: a regular SASRec (torch's
        dropout), plain steps with `torch.optim.Adam`, the window through the `higher`
        package, the KL inner loss, the outer loss from the full forward pass.

        Its meta-gradient equals the fast engine's without dropout (to rounding,
        where `higher`'s placement of eps does not matter); with dropout the two
        draw different masks from the same distribution. Returns the learner after
        the window and the outer (ce, fsa)."""
        import higher

        assert self._reference is not None
        cfg, model = self.config, self._reference.model
        with torch.no_grad():
            for name, p in model.named_parameters():
                p.copy_(params[name])
        # higher adds eps before the bias correction of the second moment,
        # torch.optim.Adam (and ours) after it: the two agree to rounding only where
        # eps is negligible against sqrt(v).
        optimizer = torch.optim.Adam(
            model.parameters(),
            lr=cfg.inner_lr,
            eps=cfg.inner_eps,
            weight_decay=cfg.inner_weight_decay,
            foreach=False,
        )

        def loss(m: SASRec, probs: Tensor) -> Tensor:  # draws ALT positions step by step
            if self._everywhere:
                return kl_all_loss(m, probs)
            return summary_loss(m, probs, alt=cfg.alt, generator=gen)

        with record_function("td3.plain_steps"):
            with torch.no_grad():
                batches = self._dense_probs(plain)
            for t in range(plain):
                optimizer.zero_grad(set_to_none=True)
                loss(model, batches[t % len(batches)]).backward()
                optimizer.step()
        with higher.innerloop_ctx(self._reference, optimizer, copy_initial_weights=True) as (
            fmodel,
            diffopt,
        ):
            with record_function("td3.window"):
                batches = self._dense_probs(cfg.window)
                for t in range(cfg.window):
                    probs = batches[t % len(batches)]
                    diffopt.step(fmodel(lambda m, p=probs: loss(m, p)))
            with record_function("td3.outer_objective"):
                whole = self._real_part(real)
                ce, fsa = fmodel(lambda m: torch.stack(self._outer_loss(m, whole, fast=False)))
            final = dict(zip(self.param_names, fmodel.parameters(), strict=True))
        return final, ce, fsa

    def _real_parts(self, real: Tensor) -> list[RealPart]:
        """The real samples `real` on the device with their teacher features, in
        chunks of at most `real_chunk`."""
        return [self._real_part(part) for part in real.split(self.config.real_chunk)]

    def _real_part(self, index: Tensor) -> RealPart:
        batch = self.train.select(index).to(self.device)
        features = self.teacher_features[index].to(self.device)
        return RealPart(batch.history, batch.lengths, batch.targets, features)

    def _outer_objective(
        self, params: Params, parts: list[RealPart]
    ) -> tuple[Tensor, Tensor, Tensor]:
        """(loss, ce, fsa) of the learner `params` on the real samples `parts`.

        A batch of more than `real_chunk` samples is read a chunk at a time, each
        chunk's forward and backward to `params` at once, so one chunk's activations
        are alive instead of the whole batch's (ML-1M's batch of 32,768 histories of
        99 items holds gigabytes). The loss returned is then a surrogate with the exact
        value and the exact first derivatives w.r.t. `params`, hence w.r.t. the factors:
        L + g . params - (g . params).detach(), g = dL/dparams summed over the chunks."""
        if len(parts) == 1:
            ce, fsa = self._outer_loss(self.learner(params), parts[0], fast=True)
            return self._combine(ce, fsa), ce, fsa
        leaves = {name: p.detach().requires_grad_(True) for name, p in params.items()}
        model = self.learner(leaves)
        grads = {name: torch.zeros_like(p) for name, p in leaves.items()}
        ce = fsa = torch.zeros((), device=self.device)
        total = sum(len(part.targets) for part in parts)
        for part in parts:
            share = len(part.targets) / total  # chunk means -> the batch mean
            part_ce, part_fsa = self._outer_loss(model, part, fast=True)
            found = torch.autograd.grad(
                self._combine(part_ce, part_fsa) * share, list(leaves.values()), allow_unused=True
            )
            for name, grad in zip(leaves, found, strict=True):
                if grad is not None:
                    grads[name] += grad
            ce, fsa = ce + share * part_ce.detach(), fsa + share * part_fsa.detach()
        loss = with_gradient(
            self._combine(ce, fsa), list(params.values()), [grads[name] for name in params]
        )
        return loss, ce, fsa

    def _outer_loss(self, model: SASRec, part: RealPart, *, fast: bool) -> tuple[Tensor, Tensor]:
        """CE of the next item + FSA on the real samples `part`. fast: the outer
        loss reads one position per sample, so the last block runs there alone, and
        a catalogue larger than `item_chunk` is read in chunks."""
        features = model.last_features(part.history, part.lengths, last_only=fast)  # [B, H]
        if fast and self._chunked:
            table = model.item_embedding.weight[1:]
            ce = soft_cross_entropy(
                features, table, table[part.targets - 1], self.config.item_chunk
            )
        else:
            ce = F.cross_entropy(model.logits(features)[:, 1:], part.targets - 1)
        fsa = F.mse_loss(features, part.teacher_features)
        return ce, fsa

    def _end_epoch(self) -> None:
        epoch = self.step // self.steps_per_epoch
        current = self._factors()
        metric = float(self.select(self._summary_from(current)))
        mean = {
            k: sum(d[k] for d in self._epoch_losses) / len(self._epoch_losses)
            for k in self._epoch_losses[0]
        }
        self._epoch_losses = []
        self.curves.append({"epoch": epoch, "valid_mrr10": metric, **mean})
        if metric > self.best_metric:
            self.best_metric, self.best_epoch, self.best_factors = metric, epoch, current

    def _factors(self) -> dict[str, Tensor]:
        """The summary's learned tensors, by name: (G, U, T), or Farzi's (latent, decoder)."""
        return {k: v.detach().cpu().clone() for k, v in self.summary.named_parameters()}

    # ------------------------------------------------------------ checkpoints
    def state_bytes(self) -> bytes:
        """Everything needed to continue: factors, optimiser, scheduler, counters,
        best-so-far, curves and the carried learner (RNG streams derive from counters)."""
        tensors = {f"summary.{k}": v for k, v in self._factors().items()}
        tensors.update({f"best.{k}": v for k, v in self.best_factors.items()})
        opt = self.optimizer.state_dict()
        for i, state in opt["state"].items():
            for key, value in state.items():
                tensors[f"opt.{i}.{key}"] = torch.as_tensor(value).detach().cpu().clone()
        for name, value in (self._carried or {}).items():
            # cloned: views of one buffer may not be saved as they are
            tensors[f"carry.{name}"] = value.cpu().clone()
        meta = {
            "format": STATE_FORMAT,
            "config": self.config.model_dump_json(),
            "step": str(self.step),
            "best_metric": repr(self.best_metric),
            "best_epoch": str(self.best_epoch),
            "curves": json.dumps(self.curves),
            "epoch_losses": json.dumps(self._epoch_losses),
            "scheduler": json.dumps(self.scheduler.state_dict()),
            "opt_param_groups": json.dumps(opt["param_groups"]),
            "carried": json.dumps(self._carried is not None),
        }
        return save_tensors({k: v.contiguous() for k, v in tensors.items()}, metadata=meta)

    def load_state_bytes(self, data: bytes) -> None:
        tensors = load_tensors(data)
        meta = read_metadata(data)
        found = meta.get("format")
        # A checkpoint of the previous layout that carries no learner (learner_draw
        # "step", the default) holds the same state: running jobs survive the upgrade.
        legacy = found == LEGACY_STATE_FORMAT and meta.get("carried_step") == "0"
        if found != STATE_FORMAT and not legacy:
            if str(found).startswith(STATE_FORMAT.split("/")[0] + "/"):
                raise DataError(
                    f"distillation checkpoint {found!r} was written by another version of td3 "
                    f"(this one reads {STATE_FORMAT!r}); start the distillation again"
                )
            raise DataError(f"not a distillation checkpoint ({found!r})")
        # Parsed, not compared as text: settings added since the checkpoint was
        # written take their defaults, so an upgrade does not strand running jobs.
        if DistillConfig.model_validate_json(meta["config"]) != self.config:
            raise ConfigError("checkpoint was written with different distillation settings")
        names = [name for name, _ in self.summary.named_parameters()]
        copy_parameters(self.summary, {k: tensors[f"summary.{k}"] for k in names})
        self.best_factors = {k: tensors[f"best.{k}"] for k in names}
        opt_state: dict[int, dict] = {}
        for key, value in tensors.items():
            if key.startswith("opt."):
                _, i, name = key.split(".", 2)
                opt_state.setdefault(int(i), {})[name] = (
                    value.to(self.device) if name != "step" else value
                )
        self.optimizer.load_state_dict(
            {"state": opt_state, "param_groups": json.loads(meta["opt_param_groups"])}
        )
        self.scheduler.load_state_dict(json.loads(meta["scheduler"]))
        self.step = int(meta["step"])
        self.best_metric = float(meta["best_metric"])
        self.best_epoch = int(meta["best_epoch"])
        self.curves = json.loads(meta["curves"])
        self._epoch_losses = json.loads(meta["epoch_losses"])
        self._carried = None
        if json.loads(meta.get("carried", "false")):
            self._carried = {n: tensors[f"carry.{n}"].to(self.device) for n in self.param_names}


def fit_to_items(
    summary: Summary,
    items: torch.Tensor,  # [users, length], real item ids 1..n_items
    *,
    confidence: float,
    steps: int,
    lr: float,
    chunk: int,
) -> list[float]:
    """Fit the summary's learned tensors so that cell (u, t) puts about `confidence` of
    its mass on item items[u, t] and spreads the rest evenly over the catalogue (a
    finite optimum: one-hot targets would drive the logits to infinity): `steps`
    full-batch Adam steps on the cross-entropy, read `chunk` items at a time
    (`item_chunks.soft_cross_entropy`) so large catalogues fit. Returns the loss per step."""
    if items.shape != (summary.users, summary.length):
        raise ValueError(
            f"items must be [{summary.users}, {summary.length}], got {list(items.shape)}"
        )
    spread = (1.0 - confidence) / summary.n_items
    device = next(summary.parameters()).device
    target = items.reshape(-1).to(device) - 1  # [cells], 0-based
    users = torch.arange(summary.users, device=device)
    optimizer = torch.optim.Adam(summary.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        table = summary.item_vectors()  # [n, k]
        hidden = summary.scores(users).flatten(0, 1)  # [cells, k]
        # p @ table for the target p = confidence x one-hot + spread on every item
        mix = confidence * table[target] + spread * table.sum(0)
        loss = soft_cross_entropy(hidden, table, mix, chunk)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    return losses


def train_config_for_selection(learner: TrainConfig, steps: int) -> TrainConfig:
    """The learner recipe capped at `steps` (validation only at the end)."""
    return learner.model_copy(update={"max_steps": steps, "eval_every": steps})
