"""The distillation's inner loop replayed from CUDA graphs (opt-in).

On a GPU an inner step of the paper's small learner is many small kernels on tensors of
a few thousand elements, and eager PyTorch spends its time launching them, not in them:
one H200 took about 4.7 ms per ordinary step whatever the problem's size, and an outer
step of the ML-1M shape ran about 33,700 device operations, busy for 132 ms of a
profiled 1.29 s (bench/README.md, "On one H200"). A CUDA graph records the kernels
once and replays them with a single launch.

Two kinds of graph, both reading and writing static buffers that the caller fills:
- `GraphedPlainSteps`: one graph per synthetic batch for the ordinary steps (the steps
  cycle through the batches in a fixed order): the learner's flat parameters and
  gradient, Adam's moments and step count, the batches' soft sequences, the ALT
  positions. The same steps as `Distiller._plain_steps`, the same kernels in order.
- `GraphedFunction`: any function of static inputs, replayed whole; the distiller uses
  it for the W differentiable steps, the outer objective and its gradient w.r.t. the
  summary's factors (`distill.WindowReplay`).

CUDA only; `tests/test_cuda.py` checks them against the eager steps where a GPU is
present. Not used unless asked for (`Distiller(..., cuda_graphs=True)`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import TypeVar

import torch
from torch import Tensor

from td3core.inner import ALT_FIRST_POSITION, BoundLearner, SoftSequences, inner_loss

WARMUP_STEPS = 3  # eager steps on a side stream before capture, as torch.cuda.graph asks
T = TypeVar("T")


class GraphedPlainSteps:
    def __init__(
        self,
        learner: BoundLearner,
        theta: Tensor,
        batches: list[SoftSequences],
        alt_sizes: list[int] | None,
        *,
        lr: float,
        eps: float,
        weight_decay: float,
        everywhere: bool,
    ):
        """Graphs for steps on learners shaped like `theta` (a flat buffer of
        `learner.layout`). `batches`: one example per synthetic batch, in the order
        the steps visit them (the graphs are built for their shapes); `alt_sizes`:
        each batch's number of ALT positions, None without ALT."""
        if theta.device.type != "cuda":
            raise ValueError("CUDA graphs need a CUDA device")
        self.learner = learner
        self.everywhere = everywhere
        self.theta = torch.zeros_like(theta)
        self.theta.grad = torch.zeros_like(theta)
        self.exp_avg = torch.zeros_like(self.theta)
        self.exp_avg_sq = torch.zeros_like(self.theta)
        self.batches = [SoftSequences(b.probs.clone(), b.inputs.clone()) for b in batches]
        # any valid position until the first steps copy theirs in
        self.positions: list[Tensor | None] = (
            [torch.full((n,), ALT_FIRST_POSITION, device=theta.device) for n in alt_sizes]
            if alt_sizes is not None
            else [None] * len(batches)
        )
        leaves = learner.layout.views(self.theta)
        grads = learner.layout.views(self.theta.grad)
        for name, leaf in leaves.items():
            leaf.requires_grad_(True)
            leaf.grad = grads[name]
        self.leaves = leaves
        self.optimizer = torch.optim.Adam(
            [self.theta], lr=lr, eps=eps, weight_decay=weight_decay, fused=True, capturable=True
        )
        self.step_count = torch.zeros((), device=theta.device, dtype=torch.float32)
        self.optimizer.state[self.theta] = {
            "step": self.step_count,
            "exp_avg": self.exp_avg,
            "exp_avg_sq": self.exp_avg_sq,
        }
        self.graphs: list[torch.cuda.CUDAGraph] = []

    def run(
        self,
        theta: Tensor,
        exp_avg: Tensor,
        exp_avg_sq: Tensor,
        step: int,
        batches: list[SoftSequences],
        positions: list[Tensor | None],
        count: int,
    ) -> None:
        """`count` ordinary steps from (theta, moments, step), written back into
        theta and the moments in place. `batches` holds every synthetic batch's S
        for this phase, `positions` each step's ALT positions (or None)."""

        def load() -> None:
            with torch.no_grad():
                self.theta.copy_(theta)
                self.exp_avg.copy_(exp_avg)
                self.exp_avg_sq.copy_(exp_avg_sq)
                self.step_count.fill_(float(step))  # a kernel argument: no synchronisation
                for static_batch, batch in zip(self.batches, batches, strict=True):
                    static_batch.probs.copy_(batch.probs)
                    static_batch.inputs.copy_(batch.inputs)

        load()
        if not self.graphs:
            self._capture()
            load()  # the warm-up moved them
        for t in range(count):
            k = t % len(self.batches)
            found, static = positions[t], self.positions[k]
            if found is not None and static is not None:
                static.copy_(found)
            self.graphs[k].replay()
        theta.copy_(self.theta)
        exp_avg.copy_(self.exp_avg)
        exp_avg_sq.copy_(self.exp_avg_sq)

    def _step(self, k: int) -> None:
        assert self.theta.grad is not None
        self.theta.grad.zero_()
        model = self.learner(self.leaves)
        inner_loss(model, self.batches[k], self.positions[k], everywhere=self.everywhere).backward()
        self.optimizer.step()

    def _capture(self) -> None:
        steps = [functools.partial(self._step, k) for k in range(len(self.batches))]
        self.graphs = [graph for graph, _ in _captured(steps, self.theta.device)]


class GraphedFunction:
    """`fn()` replayed from one CUDA graph (`capture`), else simply called.

    `fn` must read only tensors that outlive it (static inputs, which the caller
    refills between calls) and must not write to them; it returns tensors, which
    every replay rewrites in place. The first call warms up and captures
    (`_captured`, as for `GraphedPlainSteps`)."""

    def __init__(self, fn: Callable[[], list[Tensor]], *, capture: bool):
        self.fn = fn
        self.capture = capture
        self.graph: torch.cuda.CUDAGraph | None = None
        self.outputs: list[Tensor] = []

    def __call__(self) -> list[Tensor]:
        if not self.capture:
            return self.fn()
        if self.graph is None:
            ((self.graph, self.outputs),) = _captured([self.fn], torch.cuda.current_device())
        self.graph.replay()
        return self.outputs


def _captured(
    steps: Sequence[Callable[[], T]], device: torch.device | int
) -> list[tuple[torch.cuda.CUDAGraph, T]]:
    """Each of `steps` captured in a CUDA graph of its own (all in one memory pool, so
    they replay one at a time), after WARMUP_STEPS rounds of them on a side stream, as
    torch.cuda.graph asks. The warm-up draws dropout masks: the RNG is forked so that
    capturing (done once, at whichever step a run or a resumed run starts) leaves no
    trace in the draws. Returns each graph with what its step returned at capture."""
    with torch.random.fork_rng(devices=[device]):
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(WARMUP_STEPS):
                for step in steps:
                    step()
        torch.cuda.current_stream().wait_stream(side)
        captured: list[tuple[torch.cuda.CUDAGraph, T]] = []
        pool = None
        for step in steps:
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                result = step()
            pool = graph.pool()
            captured.append((graph, result))
    return captured
