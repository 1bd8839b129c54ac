"""The distillation on a GPU computes what it computes on the CPU, and the inner steps
replayed from CUDA graphs (ordinary steps; window and outer objective) are the eager ones.

The comparisons need a GPU (CI has none: they run where one is lent, see
bench/gpu.sh); the refusal without one runs everywhere."""

import pytest
import torch
from helpers_distill import (
    NO_DROPOUT,
    WITH_DROPOUT,
    assert_same_meta_steps,
    default_dtype,
    distiller,
    tiny_split,
)

from td3core.errors import ConfigError
from td3core.evaluation import evaluate
from td3core.models.sasrec import SASRec

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_cuda_graphs_are_refused_without_a_cuda_device():
    with pytest.raises(ConfigError, match="CUDA graphs need a CUDA device"):
        distiller(NO_DROPOUT, cuda_graphs=True)


@needs_cuda
@pytest.mark.parametrize("backend", ["func", "higher"])
def test_the_meta_gradient_on_the_gpu_is_the_cpu_one(backend):
    # float64, dropout off: the devices differ by rounding alone. (The fused Adam's
    # step count once read as 0 on CUDA in float64: NaN here, right figures on the CPU.)
    settings = dict(inner_steps=9, backend=backend, inner_eps=1e-30)
    with default_dtype(torch.float64):
        cpu = distiller(NO_DROPOUT, **settings)
        gpu = distiller(NO_DROPOUT, **settings, device="cuda")
        assert_same_meta_steps(cpu, gpu, steps=2, loss_tol=(1e-9, 1e-12), grad_tol=(1e-7, 1e-12))


@needs_cuda
def test_cuda_graphs_are_refused_for_the_reference_backend():
    with pytest.raises(ConfigError, match="the func backend"):
        distiller(NO_DROPOUT, device="cuda", cuda_graphs=True, backend="higher")


@needs_cuda
@pytest.mark.parametrize("objective", ["inner", "kl-all"])
@pytest.mark.parametrize("real_chunk", [8192, 40], ids=["whole", "in-chunks"])
def test_graphed_steps_give_the_eager_meta_gradient(objective, real_chunk):
    # Without dropout the replays run the eager steps' kernels on the same values:
    # the ordinary steps' graphs and the window's (with the outer objective).
    settings = dict(inner_steps=12, inner_objective=objective, real_chunk=real_chunk, device="cuda")
    eager = distiller(NO_DROPOUT, **settings)
    graphed = distiller(NO_DROPOUT, **settings, cuda_graphs=True)
    # the first step builds the graphs, the later ones replay them
    plain = assert_same_meta_steps(
        eager, graphed, steps=3, loss_tol=(1e-5, 1e-7), grad_tol=(1e-4, 1e-7)
    )
    assert graphed._graphed is not None and any(plain)
    window = graphed._window_graph
    assert window is not None and window.graph is not None and window.graph.graph is not None


@needs_cuda
def test_graphed_steps_with_dropout_are_seeded_and_resume_alike():
    def run(stop_after: int | None) -> dict[str, torch.Tensor]:
        d = distiller(WITH_DROPOUT, inner_steps=12, device="cuda", cuda_graphs=True)
        d.run(stop_after=stop_after)
        if stop_after is not None:  # continue in a new distiller (graphs built again)
            d = distiller(
                WITH_DROPOUT, inner_steps=12, device="cuda", cuda_graphs=True, state=d.state_bytes()
            )
            d.run()
        return {k: v.detach().cpu() for k, v in d.summary.named_parameters()}

    whole, resumed = run(None), run(2)
    for name, value in whole.items():
        assert torch.isfinite(value).all()
        assert torch.equal(value, resumed[name]), name


@needs_cuda
def test_evaluation_ranks_on_the_gpu_as_on_the_cpu():
    # Ranks are computed where the scores are (only ranks leave the device).
    split, negatives = tiny_split()
    torch.manual_seed(0)
    model = SASRec.from_config(split.n_items, split.max_len, NO_DROPOUT)
    on_cpu = evaluate(model, split.valid, split, negatives)
    on_gpu = evaluate(model.cuda(), split.valid, split, negatives)
    assert on_gpu.keys() == on_cpu.keys() == {"uni100", "full"}
    for protocol, metrics in on_cpu.items():
        assert on_gpu[protocol] == pytest.approx(metrics, abs=1e-9), protocol
