"""Small synthetic interaction logs with sequential structure a model can learn.

The real datasets are licensed, so tests, the demo and the quickstart use this.
Items are split into clusters (item k is in cluster k % n_clusters); within a
cluster the items form a fixed random cycle. Each step a user either follows the
cycle from their last item (probability `follow`: the learnable next-item
signal) or picks a cluster - mostly the same one, else the next one, rarely any -
and a popular item in it (Zipf-like skew). Timestamps increase per user; rows are
returned in global time order, like a real log.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import os
from pathlib import Path

import numpy as np

from td3core.data.types import Interactions

_T0 = 1_600_000_000  # an arbitrary epoch second to start the log at


def generate_interactions(
    n_users: int = 200,
    n_items: int = 100,
    mean_length: int = 20,
    seed: int = 0,
    *,
    n_clusters: int | None = None,
    follow: float = 0.6,
    stay: float = 0.7,
    min_length: int = 5,
    zipf: float = 0.8,
) -> Interactions:
    """Deterministic given the arguments. Lengths are min_length + Poisson, with mean
    about max(mean_length, min_length). Ids are "1".."n" strings, with ratings 1-5."""
    if n_users < 1 or n_items < 2 or min_length < 1:
        raise ValueError("need n_users >= 1, n_items >= 2 and min_length >= 1")
    rng = np.random.default_rng(seed)
    n_clusters = n_clusters or max(2, min(10, n_items // 10))
    n_clusters = min(n_clusters, n_items)

    # A fixed random cycle through each cluster's items.
    successor = np.empty(n_items, dtype=np.int64)
    for c in range(n_clusters):
        cycle = rng.permutation(np.arange(c, n_items, n_clusters))
        successor[cycle] = np.roll(cycle, -1)
    sizes = np.bincount(np.arange(n_items) % n_clusters, minlength=n_clusters)
    weights = 1.0 / np.arange(1, sizes.max() + 1) ** zipf
    rank_cdf = np.cumsum(weights) / weights.sum()

    lengths = min_length + rng.poisson(max(mean_length - min_length, 0), size=n_users)
    steps = int(lengths.max())
    items = np.empty((n_users, steps), dtype=np.int64)
    cluster = rng.integers(0, n_clusters, size=n_users)
    for t in range(steps):
        u = rng.random(n_users)
        # Cluster move: stay, else next cluster (70 %), else a uniformly random one.
        moved = np.where(
            u < stay + (1 - stay) * 0.7,
            (cluster + 1) % n_clusters,
            rng.integers(0, n_clusters, size=n_users),
        )
        cluster = np.where(u < stay, cluster, moved)
        rank = np.minimum(np.searchsorted(rank_cdf, rng.random(n_users)), sizes.max() - 1)
        popular = cluster + (rank % sizes[cluster]) * n_clusters
        if t == 0:
            items[:, t] = popular
            continue
        follows = rng.random(n_users) < follow
        items[:, t] = np.where(follows, successor[items[:, t - 1]], popular)
        cluster = np.where(follows, items[:, t] % n_clusters, cluster)

    gaps = rng.integers(60, 86_400, size=(n_users, steps))
    times = _T0 + rng.integers(0, 30 * 86_400, size=(n_users, 1)) + np.cumsum(gaps, axis=1)
    ratings = rng.choice(np.arange(1.0, 6.0), p=[0.05, 0.1, 0.2, 0.35, 0.3], size=(n_users, steps))

    mask = np.arange(steps)[None, :] < lengths[:, None]
    user_of = np.broadcast_to(np.arange(n_users)[:, None], (n_users, steps))[mask]
    flat_times = times[mask].astype(np.float64)
    order = np.argsort(flat_times, kind="stable")
    inter = Interactions(
        users=[str(u + 1) for u in user_of[order].tolist()],
        items=[str(i + 1) for i in items[mask][order].tolist()],
        timestamps=flat_times[order],
        ratings=ratings[mask][order],
        source=f"synthetic(n_users={n_users}, n_items={n_items}, mean_length={mean_length}, "
        f"seed={seed})",
        fmt="csv",
    )
    # Hash the CSV rendering, so a file written with write_interactions_csv reads back
    # with the same sha256.
    inter.sha256 = hashlib.sha256(interactions_to_csv_bytes(inter)).hexdigest()
    return inter


def interactions_to_csv_bytes(inter: Interactions) -> bytes:
    """CSV with a header `user_id,item_id[,rating],timestamp` (integral values as integers)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    has_rating = inter.ratings is not None
    writer.writerow(
        ["user_id", "item_id", "rating", "timestamp"]
        if has_rating
        else ["user_id", "item_id", "timestamp"]
    )
    times = [_number(t) for t in inter.timestamps.tolist()]
    if inter.ratings is not None:
        rates = [_number(r) for r in inter.ratings.tolist()]
        writer.writerows(zip(inter.users, inter.items, rates, times, strict=True))
    else:
        writer.writerows(zip(inter.users, inter.items, times, strict=True))
    return out.getvalue().encode("utf-8")


def write_interactions_csv(inter: Interactions, path: str | os.PathLike[str]) -> Path:
    """Write `inter` as CSV (gzip-compressed when the name ends in .gz); returns the path."""
    path = Path(path)
    data = interactions_to_csv_bytes(inter)
    if path.name.endswith(".gz"):
        data = gzip.compress(data, mtime=0)  # mtime=0: the same data gives the same bytes
    path.write_bytes(data)
    return path


def _number(x: float) -> str:
    return str(int(x)) if x.is_integer() else repr(x)
