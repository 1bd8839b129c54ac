"""Budget samples spend exactly mu x zeta training interactions, never a user's
validation or test item, and follow their seed."""

import numpy as np
import pytest
from helpers_models import make_split, random_sequences

from td3core.baselines import sampled_split
from td3core.config import SAMPLERS
from td3core.data.sampling import packed_rows, sample_sequences, training_sequences
from td3core.errors import ConfigError


@pytest.fixture(scope="module")
def split():
    # 3..30 items per user: some shorter than zeta, some much longer
    return make_split(random_sequences(60, 200, min_len=3, max_len=30, seed=2), 200, 8)


def is_subsequence(seq: np.ndarray, of: np.ndarray) -> bool:
    remaining = iter(of.tolist())
    return all(item in remaining for item in seq.tolist())


@pytest.mark.parametrize("method", SAMPLERS)
@pytest.mark.parametrize(("users", "length"), [(5, 8), (7, 3), (13, 20), (500, 50)])
def test_budget_is_spent_exactly_on_training_items(split, method, users, length):
    train = training_sequences(split)
    total = sum(len(s) for s in train)
    chosen, seqs = sample_sequences(split, method, users=users, length=length, seed=0)
    assert sum(len(s) for s in seqs) == min(users * length, total)
    assert list(chosen) == sorted(set(chosen.tolist()))  # one entry per user, by id
    short = 0
    for user, seq in zip(chosen.tolist(), seqs, strict=True):
        assert len(seq) >= 1
        if method == "random-interactions":  # a time-ordered subsequence of training items
            assert is_subsequence(seq, train[user])
            continue
        assert len(seq) <= length and np.array_equal(seq, train[user][-len(seq) :])
        short += len(seq) < min(length, len(train[user]))
    assert short <= 1  # only the user that hit the budget is cut short


def test_longest_takes_the_longest_users(split):
    train = training_sequences(split)
    chosen, _ = sample_sequences(split, "longest", users=5, length=8, seed=0)
    taken = {len(train[u]) for u in chosen.tolist()}
    others = [len(s) for u, s in enumerate(train) if u not in set(chosen.tolist())]
    assert min(taken) >= max(others)
    assert np.array_equal(chosen, sample_sequences(split, "longest", users=5, length=8, seed=9)[0])


@pytest.mark.parametrize("method", ["random-users", "random-interactions"])
def test_sampling_follows_the_seed(split, method):
    def draw(seed: int) -> np.ndarray:
        chosen, seqs = sample_sequences(split, method, users=5, length=8, seed=seed)
        return np.concatenate([chosen, *seqs])

    assert np.array_equal(draw(1), draw(1))
    assert not np.array_equal(draw(1), draw(2))


@pytest.mark.parametrize("method", SAMPLERS)
def test_sampled_split_reports_its_interactions(split, method):
    sub, interactions = sampled_split(split, method, users=5, length=8, seed=0)
    _, seqs = sample_sequences(split, method, users=5, length=8, seed=0)
    assert interactions == 40
    assert len(sub.train) == sum(len(s) - 1 for s in seqs)  # every prefix with a target
    assert sub.valid is split.valid and sub.test is split.test


def test_unknown_method(split):
    with pytest.raises(ConfigError, match="unknown sampling method"):
        sample_sequences(split, "newest", users=1, length=1, seed=0)


@pytest.mark.parametrize("method", ["random-users", "longest"])
def test_packed_rows_lay_a_sample_end_to_end(split, method):
    _, sequences = sample_sequences(split, method, users=3, length=8, seed=4)
    rows = packed_rows(split, method, users=3, length=8, seed=4)
    assert rows.shape == (3, 8)
    assert np.array_equal(rows.reshape(-1), np.concatenate(sequences))
    assert np.array_equal(rows, packed_rows(split, method, users=3, length=8, seed=4))


def test_packed_rows_of_random_users_follow_the_seed_and_the_longest_do_not(split):
    def rows(method: str, seed: int) -> np.ndarray:
        return packed_rows(split, method, users=3, length=8, seed=seed)

    assert not np.array_equal(rows("random-users", 4), rows("random-users", 5))
    assert np.array_equal(rows("longest", 4), rows("longest", 5))


def test_packed_rows_repeat_a_small_training_set(split):
    everything = np.concatenate(training_sequences(split))
    # more cells than interactions
    rows = packed_rows(split, "random-users", users=40, length=50, seed=0)
    flat = rows.reshape(-1)
    assert len(everything) < flat.size
    assert np.array_equal(flat[len(everything) :][:10], flat[:10])
    assert np.array_equal(np.sort(flat[: len(everything)]), np.sort(everything))
