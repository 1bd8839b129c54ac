"""Speed of ingestion (issue "uploads are parsed line by line"): read + preprocess N
interactions from a file, as the API and the CLI do, and report rows per second and
the peak memory.

    python bench/ingest_speed.py                       # 10M rows, csv
    python bench/ingest_speed.py --rows 1000000 --format csv.gz parquet jsonl

The file is synthetic but shaped like real logs: integer user ids (1..rows/20, so
about 20 interactions a user), Zipf-like item popularity over rows/100 items, epoch
timestamps, a rating column. It is written once into `--cache` (default: the system's
temporary folder) and reused. Each format is measured in a fresh child process, so
its peak resident memory is its own.
"""

from __future__ import annotations

import argparse
import gzip
import json
import multiprocessing as mp
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from td3core.data import PreprocessConfig, build_dataset, read_interactions

FORMATS = ("csv", "csv.gz", "parquet", "jsonl")


def table(rows: int, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    n_users, n_items = max(rows // 20, 1), max(rows // 100, 1)
    items = np.minimum(rng.zipf(1.3, rows), n_items)
    return pa.table(
        {
            "user_id": rng.integers(1, n_users + 1, rows),
            "item_id": rng.permutation(n_items)[items - 1] + 1,
            "rating": rng.integers(1, 6, rows),
            "timestamp": 1_500_000_000 + rng.integers(0, 10**8, rows),
        }
    )


def data_file(folder: Path, rows: int, fmt: str) -> Path:
    path = folder / f"ingest-{rows}.{fmt}"
    if path.exists():
        return path
    data = table(rows)
    tmp = path.with_suffix(".tmp")
    if fmt == "csv":
        pa_csv.write_csv(data, tmp)
    elif fmt == "csv.gz":
        with gzip.open(tmp, "wb", compresslevel=1) as f:
            f.write(data_file(folder, rows, "csv").read_bytes())
    elif fmt == "parquet":
        pq.write_table(data, tmp)
    else:
        with tmp.open("w") as f:
            for batch in data.to_batches(1 << 16):
                cols = batch.to_pydict()
                for u, i, r, t in zip(*cols.values(), strict=True):
                    f.write(
                        f'{{"user_id": "{u}", "item_id": "{i}", "rating": {r}, "timestamp": {t}}}\n'
                    )
    tmp.rename(path)
    return path


def measure(path: Path) -> dict[str, Any]:
    start = time.perf_counter()
    inter = read_interactions(path)
    read = time.perf_counter() - start
    dataset = build_dataset(inter, PreprocessConfig())
    total = time.perf_counter() - start
    return {
        "file": path.name,
        "file_mb": round(path.stat().st_size / 2**20, 1),
        "rows": len(inter),
        "read_s": round(read, 2),
        "preprocess_s": round(total - read, 2),
        "total_s": round(total, 2),
        "rows_per_s": round(len(inter) / total),
        "users_kept": dataset.n_users,
        "items_kept": dataset.n_items,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--format", nargs="+", choices=FORMATS, default=["csv"])
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()))
    args = parser.parse_args()
    args.cache.mkdir(parents=True, exist_ok=True)
    ctx = mp.get_context("spawn")  # a fresh process per measurement: its own peak memory
    for fmt in args.format:
        path = data_file(args.cache, args.rows, fmt)
        with ctx.Pool(1) as pool:
            print(json.dumps(pool.apply(measure, (path,))), flush=True)


if __name__ == "__main__":
    main()
