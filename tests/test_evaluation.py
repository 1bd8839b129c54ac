import math

import numpy as np
import pytest
import torch
from helpers_models import make_samples, make_split, random_sequences
from torch import nn

from td3core.evaluation import evaluate, metrics_from_ranks, ranks_from_scores, sample_negatives
from td3core.models import SASRec


def test_ranks_are_pessimistic():
    target = torch.tensor([0.5, 0.5, float("nan"), float("inf"), 0.5])
    cand = torch.tensor(
        [
            [0.1, 0.2, 0.3],  # all below -> 1
            [0.5, 0.9, 0.1],  # a tie and a higher one -> 3
            [0.1, 0.2, 0.3],  # NaN target -> last (4)
            [0.1, 0.2, 0.3],  # inf target -> last (4)
            [float("nan"), 0.1, 0.2],  # NaN candidate beats the target -> 2
        ]
    )
    assert ranks_from_scores(target, cand).tolist() == [1, 3, 4, 4, 2]


def test_ranks_respect_the_mask():
    target = torch.tensor([0.5, float("nan")])
    cand = torch.tensor([[0.9, 0.8, 0.1], [0.1, 0.2, 0.3]])
    mask = torch.tensor([[True, False, True], [True, True, False]])
    assert ranks_from_scores(target, cand, mask).tolist() == [2, 3]


def test_metrics_by_hand():
    m = metrics_from_ranks(torch.tensor([1, 3, 6, 30]), ks=(5, 10))
    assert m["HR@5"] == pytest.approx(50.0)
    assert m["HR@10"] == pytest.approx(75.0)
    assert m["MRR@5"] == pytest.approx(100 * (1 + 1 / 3) / 4)
    assert m["MRR@10"] == pytest.approx(100 * (1 + 1 / 3 + 1 / 6) / 4)
    assert m["NDCG@5"] == pytest.approx(100 * (1 + 1 / math.log2(4)) / 4)
    assert m["NDCG@10"] == pytest.approx(100 * (1 + 1 / 2 + 1 / math.log2(7)) / 4)


def test_negatives_exclude_history_and_follow_the_seed():
    seqs = random_sequences(50, 300, min_len=5, max_len=150, seed=3)
    split = make_split(seqs, 300, max_len=10)
    a = sample_negatives(split.test, seqs, 300, n=100, seed=7)
    b = sample_negatives(split.test, seqs, 300, n=100, seed=7)
    c = sample_negatives(split.test, seqs, 300, n=100, seed=8)
    assert a.shape == (50, 100) and torch.equal(a, b) and not torch.equal(a, c)
    for row, user in enumerate(split.test.users.tolist()):
        negs = a[row].numpy()
        assert len(set(negs)) == 100 and negs.min() >= 1 and negs.max() <= 300
        assert not set(negs) & set(seqs[user])


def test_negatives_for_a_user_who_saw_almost_everything():
    seqs = [np.arange(1, 11), np.array([1, 2, 3])]
    samples = make_samples([(0, seqs[0], 9), (1, seqs[1], 2)], max_len=5)
    with pytest.warns(UserWarning, match="fewer than 5"):
        negs = sample_negatives(samples, seqs, 12, n=5)
    assert sorted(negs[0].tolist()) == [0, 0, 0, 11, 12]  # padded with 0 = not a candidate
    assert (negs[1] >= 4).all()


class ConstantModel(nn.Module):
    def __init__(self, n_items: int, value: float):
        super().__init__()
        self.n_items, self.value = n_items, value

    def score_all(self, items, lengths):
        return torch.full((items.shape[0], self.n_items + 1), self.value)


def test_nan_scores_rank_last_not_first():
    seqs = random_sequences(40, 200, seed=1)
    split = make_split(seqs, 200, max_len=10)
    negs = sample_negatives(split.test, seqs, 200)
    for value in (float("nan"), 0.0):  # NaN everywhere, or all ties
        out = evaluate(ConstantModel(200, value), split.test, split, negs)
        assert out["uni100"]["HR@20"] == 0.0 and out["full"]["HR@20"] == 0.0


def test_full_ranking_masks_the_prefix():
    # the oracle scores items by index; the target 5 is beaten only by 6..9, minus the
    # prefix items 7 and 9 the user already saw
    seqs = [np.array([7, 9, 5])]
    split = make_split(seqs, 9, max_len=4)

    class Oracle(ConstantModel):
        def score_all(self, items, lengths):
            return torch.arange(self.n_items + 1.0).expand(items.shape[0], -1)

    out = evaluate(Oracle(9, 0), split.test, split, None, ks=(1, 2, 3))
    assert out["full"]["HR@2"] == 0.0 and out["full"]["HR@3"] == 100.0  # rank 3: 8, 6 above


def test_untrained_sasrec_scores_chance():
    n_items, users = 500, 2000
    seqs = random_sequences(users, n_items, seed=0)
    split = make_split(seqs, n_items, max_len=20)
    negs = sample_negatives(split.test, seqs, n_items, seed=0)
    torch.manual_seed(0)
    model = SASRec(n_items, 20).train()
    scores = model.eval().score_all(split.test.history, split.test.lengths)
    assert torch.isfinite(scores).all()
    model.train()
    out = evaluate(model, split.test, split, negs, batch_size=256)
    assert model.training  # mode restored
    assert 5.0 < out["uni100"]["HR@10"] < 15.0  # chance: 10/101 = 9.9 %
    assert out["full"]["HR@10"] < 5.0  # chance: about 10/(500 - history) = 2 %
