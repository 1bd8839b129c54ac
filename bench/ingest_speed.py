"""Speed of ingestion (issue "uploads are parsed line by line"): read + preprocess N
interactions from a file, as the API and the CLI do, and report rows per second and
the peak memory.

    python bench/ingest_speed.py                       # 10M rows, csv
    python bench/ingest_speed.py --rows 1000000 --format csv.gz parquet jsonl
    python bench/ingest_speed.py --bombs               # the API's memory under upload bombs

The file is synthetic but shaped like real logs: integer user ids (1..rows/20, so
about 20 interactions a user), Zipf-like item popularity over rows/100 items, epoch
timestamps, a rating column. It is written once into `--cache` (default: the system's
temporary folder) and reused. Each format is measured in a fresh child process, so
its peak resident memory is its own. `--bombs` sends the upload bombs of the issue
(2 MB of gzip expanding to 2 GiB; 1.56 MB expanding to 134M rows) to a real API
process and reports its answers and its peak memory.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import multiprocessing as mp
import os
import resource
import subprocess
import sys
import tempfile
import time
import zlib
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
    start, cpu = time.perf_counter(), time.process_time()
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
        # CPU seconds of all threads: on a shared machine wall time also counts the
        # others' load, this does not
        "cpu_s": round(time.process_time() - cpu, 2),
        "rows_per_s": round(len(inter) / total),
        "users_kept": dataset.n_users,
        "items_kept": dataset.n_items,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }


def gzip_of(block: bytes, total: int, head: bytes = b"") -> bytes:
    """gzip of `head` + `block` repeated to `total` bytes, built piece by piece."""
    z = zlib.compressobj(9, zlib.DEFLATED, 31)
    parts = [z.compress(head)]
    parts += [z.compress(block) for _ in range(total // len(block))]
    return b"".join(parts) + z.flush()


def bombs() -> None:
    """The issue's two bombs against a real API process (uvicorn, embedded SQLite, the
    default limits): status, message, time, and the process's peak resident memory."""
    import httpx

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "TD3_HOME": tempfile.mkdtemp(), "TD3_READINESS_WORKERS": "0"}

    def td3(*args: str) -> str:
        command = [sys.executable, "-m", "td3", *args]
        return subprocess.run(
            command, env=env, cwd=root, check=True, capture_output=True, text=True
        ).stdout

    td3("admin", "migrate")
    key = td3("admin", "create-key", "--tenant", "bench").strip().splitlines()[-1].strip()
    cases = {
        "gzip bomb (2 GiB of zeros, no newline)": gzip_of(b"\0" * (1 << 20), 2 << 30),
        "line bomb (1 GiB, 134M rows)": gzip_of(
            b"1,1,1,1\n" * (1 << 17), 1 << 30, b"user_id,item_id,rating,timestamp\n"
        ),
    }
    port = 18000 + os.getpid() % 1000
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "--factory",
            "api.main:create_app",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        env=env,
        cwd=root,
        stderr=subprocess.DEVNULL,
    )

    def peak_mb() -> float:
        status = Path(f"/proc/{server.pid}/status").read_text()
        return int(status.split("VmHWM:")[1].split()[0]) / 1024

    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=300) as client:
            for _ in range(200):
                with contextlib.suppress(httpx.TransportError):
                    if client.get("/healthz").status_code == 200:
                        break
                time.sleep(0.2)
            headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/octet-stream"}
            rows = b"".join(b"u%d,i%d,%d\n" % (u, i, i) for u in range(50) for i in range(10))
            client.post(
                "/v1/datasets", content=b"user_id,item_id,timestamp\n" + rows, headers=headers
            )
            print(json.dumps({"idle_peak_rss_mb": round(peak_mb())}))
            for name, body in cases.items():
                start = time.perf_counter()
                r = client.post("/v1/datasets", content=body, headers=headers)
                print(
                    json.dumps(
                        {
                            "upload": name,
                            "compressed_mb": round(len(body) / 1e6, 2),
                            "status": r.status_code,
                            "message": r.json()["error"]["message"],
                            "seconds": round(time.perf_counter() - start, 2),
                            "peak_rss_mb": round(peak_mb()),
                            "healthz": client.get("/healthz").status_code,
                        }
                    ),
                    flush=True,
                )
    finally:
        server.terminate()
        server.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--format", nargs="+", choices=FORMATS, default=["csv"])
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()))
    parser.add_argument("--bombs", action="store_true", help="measure the API under bombs")
    args = parser.parse_args()
    if args.bombs:
        bombs()
        return
    args.cache.mkdir(parents=True, exist_ok=True)
    ctx = mp.get_context("spawn")  # a fresh process per measurement: its own peak memory
    for fmt in args.format:
        path = data_file(args.cache, args.rows, fmt)
        with ctx.Pool(1) as pool:
            print(json.dumps(pool.apply(measure, (path,))), flush=True)


if __name__ == "__main__":
    main()
