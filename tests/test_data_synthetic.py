"""Synthetic interactions: deterministic, well-formed, fast, and readable back from CSV."""

from __future__ import annotations

import time

import numpy as np

from td3core.data.preprocess import PreprocessConfig, build_dataset
from td3core.data.readers import read_interactions
from td3core.data.synthetic import generate_interactions, write_interactions_csv


def same(a, b) -> bool:
    return (
        a.users == b.users
        and a.items == b.items
        and a.sha256 == b.sha256
        and np.array_equal(a.timestamps, b.timestamps)
        and np.array_equal(a.ratings, b.ratings)
    )


def test_deterministic_given_seed():
    assert same(generate_interactions(seed=4), generate_interactions(seed=4))
    assert not same(generate_interactions(seed=4), generate_interactions(seed=5))


def test_shape_of_the_log():
    inter = generate_interactions(n_users=100, n_items=50, mean_length=12, seed=2)
    assert len(set(inter.users)) == 100
    assert {int(i) for i in inter.items} <= set(range(1, 51))
    assert np.all(np.diff(inter.timestamps) >= 0)  # global time order
    users = np.array(inter.users)
    lengths = [int((users == u).sum()) for u in set(inter.users)]
    assert min(lengths) >= 5 and 9 <= np.mean(lengths) <= 15
    assert inter.ratings is not None and set(inter.ratings.tolist()) <= {1.0, 2.0, 3.0, 4.0, 5.0}


def test_survives_default_preprocessing():
    ds = build_dataset(generate_interactions(), PreprocessConfig())
    assert ds.n_users == 200 and ds.n_items >= 90


def successor_hits(**kwargs) -> float:
    """How often an item's most frequent training successor is the user's test item."""
    ds = build_dataset(generate_interactions(**kwargs), PreprocessConfig(kcore="none"))
    counts = np.zeros((ds.n_items + 1, ds.n_items + 1))
    for s in ds.sequences:
        np.add.at(counts, (s[:-2], s[1:-1]), 1)  # train transitions only
    return float(np.mean([counts[s[-2]].argmax() == s[-1] for s in ds.sequences]))


def test_has_sequential_signal():
    # The most frequent successor of an item predicts the next item far above chance.
    assert successor_hits(n_users=300, seed=0) > 0.3  # chance is about 1 / n_items = 0.01


def test_follow_sets_the_strength_of_the_signal():
    # The demo's data (follow 0.8, 400 items) is more predictable than the default 0.6.
    demo = successor_hits(n_users=600, n_items=400, seed=0, follow=0.8)
    assert demo > successor_hits(n_users=600, n_items=400, seed=0) + 0.1


def test_fast():
    start = time.perf_counter()
    generate_interactions(n_users=1000)
    assert time.perf_counter() - start < 2.0  # about 0.1 s; generous for slow CI machines


def test_csv_round_trip(tmp_path):
    inter = generate_interactions(n_users=20, seed=7)
    back = read_interactions(write_interactions_csv(inter, tmp_path / "syn.csv"))
    assert same(inter, back)  # same bytes, so the same sha256 too
    gz = read_interactions(write_interactions_csv(inter, tmp_path / "syn.csv.gz"))
    assert gz.users == inter.users and np.array_equal(gz.timestamps, inter.timestamps)
