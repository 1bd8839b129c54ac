"""Item-chunked softmax: the same values and meta-gradient as the dense path,
without [rows, items] tensors in the graph."""

import pytest
import torch
from helpers_distill import (
    NO_DROPOUT,
    WITH_DROPOUT,
    assert_same_meta_steps,
    default_dtype,
    distiller,
)
from torch.autograd import gradcheck, gradgradcheck

from td3core.item_chunks import logsumexp_scores, softmax_mix


def _inputs(rows: int = 5, items: int = 11, k: int = 3, m: int = 4):
    gen = torch.Generator().manual_seed(0)
    return tuple(
        torch.randn(*shape, generator=gen, dtype=torch.float64, requires_grad=True)
        for shape in ((rows, k), (items, k), (items, m))
    )


@pytest.mark.parametrize("chunk", [1, 4, 11, 50])
def test_softmax_mix_is_softmax_then_sum(chunk):
    A, K, W = _inputs()
    y, lse = softmax_mix(A, K, W, chunk)
    torch.testing.assert_close(y, torch.softmax(A @ K.T, -1) @ W)
    torch.testing.assert_close(lse, torch.logsumexp(A @ K.T, -1))
    torch.testing.assert_close(logsumexp_scores(A, K, chunk), torch.logsumexp(A @ K.T, -1))


def test_softmax_mix_is_stable_for_large_scores():
    A, K, W = (t.detach() for t in _inputs())
    y, lse = softmax_mix(A * 1e3, K, W, 3)  # exp would overflow without the running max
    assert torch.isfinite(y).all() and torch.isfinite(lse).all()
    torch.testing.assert_close(lse, torch.logsumexp(A * 1e3 @ K.T, -1))


def test_softmax_mix_gradients_to_second_order():
    # Second order: the differentiable inner steps differentiate its backward.
    assert gradcheck(lambda A, K, W: softmax_mix(A, K, W, 4), _inputs())
    assert gradgradcheck(lambda A, K, W: softmax_mix(A, K, W, 4), _inputs())
    A, K, _ = _inputs(k=3)
    assert gradgradcheck(lambda h, E: softmax_mix(h, E, E, 5), (A, K))  # shared inputs


def test_chunk_must_be_positive():
    with pytest.raises(ValueError, match="chunk"):
        softmax_mix(*_inputs(), 0)


@pytest.mark.parametrize(
    ("model", "method"),
    [(NO_DROPOUT, "tucker"), (WITH_DROPOUT, "tucker"), (NO_DROPOUT, "farzi")],
    ids=["no-dropout", "dropout", "farzi"],
)
@pytest.mark.parametrize("inner_steps", [3, 9])
@pytest.mark.parametrize("objective", ["inner", "kl-all"])
def test_chunked_meta_gradient_equals_the_dense_one(model, method, inner_steps, objective):
    # The tiny catalogue has 30 items: a chunk of 7 takes the chunked path.
    settings = dict(inner_steps=inner_steps, method=method, inner_objective=objective)
    with default_dtype(torch.float64):
        dense = distiller(model, **settings)
        chunked = distiller(model, **settings, item_chunk=7)
        assert chunked._chunked and not dense._chunked
        assert_same_meta_steps(
            dense, chunked, steps=2, loss_tol=(1e-9, 1e-12), grad_tol=(1e-7, 1e-12)
        )


def _widest_saved_item_dim(d) -> int:
    """The largest last dimension among tensors the meta-loss graph saves (its
    forward and the window's create_graph backward)."""
    widest = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal widest
        if t.dim() >= 2:
            widest = max(widest, t.shape[-1])
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        d.meta_loss().loss.backward()
    return widest


def test_chunked_graph_holds_no_item_wide_tensors():
    dense = distiller(NO_DROPOUT, inner_steps=3, item_chunk=30)
    chunked = distiller(NO_DROPOUT, inner_steps=3, item_chunk=7)
    items = chunked.split.n_items
    assert _widest_saved_item_dim(dense) >= items  # the check sees S and the logits
    assert _widest_saved_item_dim(chunked) < items
