"""Softmax over a large item catalogue, streamed in item chunks.

Every |V|-wide quantity of the distillation is a softmax over items followed by a
sum: the learner's input S @ E, the soft targets' cross-entropy and the outer
cross-entropy. `softmax_mix` computes y = softmax(A @ K^T) @ W and lse =
logsumexp(A @ K^T) a chunk of items at a time with an exact online log-sum-exp
(the running maximum rescales what was summed so far), so nothing [rows, |V|]
exists at once. Backward recomputes each chunk's softmax from the saved lse, and
runs each chunk under activation checkpointing, so even the graph that the
differentiable inner steps keep for the meta-gradient (double backward) holds
the chunks' small inputs, not their [rows, chunk] products.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint


def softmax_mix(A: Tensor, K: Tensor, W: Tensor, chunk: int) -> tuple[Tensor, Tensor]:
    """y = softmax(A @ K^T) @ W and lse = logsumexp(A @ K^T), chunked over the rows
    of K and W (the items). A: [R, k], K: [n, k], W: [n, m] -> y [R, m], lse [R].
    Differentiable (to any order) with respect to A, K and W."""
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1 (got {chunk})")
    y, lse = _SoftmaxMix.apply(A, K, W, chunk)
    return y, lse


def logsumexp_scores(h: Tensor, table: Tensor, chunk: int) -> Tensor:
    """logsumexp(h @ table^T) over the table's rows, chunked: h [R, k], table [n, k] -> [R]."""
    return softmax_mix(h, table, table.new_empty(len(table), 0), chunk)[1]


def soft_cross_entropy(hidden: Tensor, table: Tensor, target_mix: Tensor, chunk: int) -> Tensor:
    """Mean over rows of CE(p, softmax(hidden @ table^T)), given target_mix = p @ table
    (a table row for a hard target): logsumexp(h E^T) - h . (p @ E), as sum(p) = 1.
    hidden, target_mix: [R, k]; table: [n, k]."""
    return (logsumexp_scores(hidden, table, chunk) - (hidden * target_mix).sum(-1)).mean()


def _chunks(n: int, chunk: int) -> list[slice]:
    return [slice(start, min(start + chunk, n)) for start in range(0, n, chunk)]


class _SoftmaxMix(torch.autograd.Function):
    @staticmethod
    def forward(ctx, A: Tensor, K: Tensor, W: Tensor, chunk: int) -> tuple[Tensor, Tensor]:
        rows = A.shape[0]
        peak = A.new_full((rows, 1), float("-inf"))  # running max of the scores
        total = A.new_zeros(rows, 1)  # sum of exp(score - peak)
        y = A.new_zeros(rows, W.shape[1])  # sum of exp(score - peak) * W
        for part in _chunks(len(K), chunk):
            scores = A @ K[part].T  # [R, C]
            new_peak = torch.maximum(peak, scores.amax(dim=1, keepdim=True))
            rescale = torch.exp(peak - new_peak)
            weights = torch.exp(scores - new_peak)
            total = total * rescale + weights.sum(dim=1, keepdim=True)
            y = y * rescale + weights @ W[part]
            peak = new_peak
        y = y / total
        lse = (peak + torch.log(total)).squeeze(1)
        ctx.chunk = chunk
        ctx.save_for_backward(A, K, W, y, lse)
        return y, lse

    @staticmethod
    def backward(ctx, grad_y: Tensor, grad_lse: Tensor) -> tuple[Tensor, Tensor, Tensor, None]:
        A, K, W, y, lse = ctx.saved_tensors
        # d score_i = s_i * (grad_y . W_i - (grad_y . y - grad_lse)): the second term
        # is the softmax's normalisation, the same for every item of a row.
        shift = (grad_y * y).sum(dim=1) - grad_lse  # [R]
        # With create_graph (the differentiable inner steps) each chunk is recorded
        # under checkpointing so the meta-gradient's graph keeps only its inputs.
        differentiable = torch.is_grad_enabled()
        grad_A = torch.zeros_like(A)
        grad_K, grad_W = [], []
        for part in _chunks(len(K), ctx.chunk):
            args = (A, K[part], W[part], lse, grad_y, shift)
            if differentiable:
                parts = checkpoint(_chunk_backward, *args, use_reentrant=False)
            else:
                parts = _chunk_backward(*args)
            grad_A = grad_A + parts[0]
            grad_K.append(parts[1])
            grad_W.append(parts[2])
        return grad_A, torch.cat(grad_K), torch.cat(grad_W), None


def _chunk_backward(
    A: Tensor, K: Tensor, W: Tensor, lse: Tensor, grad_y: Tensor, shift: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """One chunk's share of the gradient: (A [R, k], K [C, k], W [C, m])."""
    probs = torch.exp(A @ K.T - lse[:, None])  # [R, C], this chunk's softmax columns
    grad_scores = probs * (grad_y @ W.T - shift[:, None])  # [R, C]
    return grad_scores @ K, grad_scores.T @ A, probs.T @ grad_y
