"""A bounded load test on loopback: 50 clients for 15 seconds against a real `td3
serve` (the API process on Postgres and Redis), submitting jobs and polling them.
It prints what was served (requests, per-status counts, p50/p99 latency) and asserts
no 5xx, no dropped connection and a generous p99."""

from __future__ import annotations

import asyncio
import random
import secrets
import statistics
import time
from collections import Counter

import httpx
import pytest
from helpers_serve import Served
from helpers_service import TINY_CONFIG

from api.db import Database
from api.services.auth import create_key

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CLIENTS, SECONDS, P99_BOUND = 50, 15.0, 5.0


async def _client(
    url: str, headers: dict[str, str], dataset: str, until: float, seen: list[tuple[int, float]]
) -> None:
    jobs: list[str] = []
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=60) as http:
        while time.monotonic() < until:
            start = time.perf_counter()
            try:
                if not jobs or random.random() < 0.1:
                    body = {"dataset_id": dataset, "config": TINY_CONFIG}
                    r = await http.post("/v1/jobs", json=body)
                    if r.status_code == 202:
                        jobs.append(r.json()["id"])
                elif random.random() < 0.8:
                    r = await http.get(f"/v1/jobs/{random.choice(jobs)}")
                else:
                    r = await http.get("/v1/jobs", params={"limit": 20})
                status = r.status_code
            except httpx.TransportError:
                status = 0  # no answer at all
            seen.append((status, time.perf_counter() - start))


def test_fifty_clients_get_no_server_errors(tmp_path, settings, synthetic_csv):
    db = Database(settings.database_url)
    tenants = [create_key(db, f"load-{i}-{secrets.token_hex(3)}")[1] for i in range(5)]
    env = {
        "TD3_DATABASE_URL": settings.database_url,
        "TD3_BROKER_URL": settings.broker_url,
        "TD3_GPU_QUEUE": f"{settings.gpu_queue}-load",  # no worker reads it
        "TD3_READINESS_WORKERS": "0",
        "TD3_TENANT_MAX_ACTIVE_JOBS": "0",
    }
    with Served(tmp_path / "home", env, args=("--no-worker",)) as served:
        served.wait_ready()
        datasets = []
        for key in tenants:
            r = httpx.post(
                f"{served.url}/v1/datasets",
                params={"filename": "s.csv"},
                content=synthetic_csv,
                headers={"Authorization": f"Bearer {key}"},
                timeout=60,
            )
            assert r.status_code == 201, r.text
            datasets.append(r.json()["id"])
        seen: list[tuple[int, float]] = []

        async def run() -> None:
            until = time.monotonic() + SECONDS
            await asyncio.gather(
                *(
                    _client(
                        served.url,
                        {"Authorization": f"Bearer {tenants[i % 5]}"},
                        datasets[i % 5],
                        until,
                        seen,
                    )
                    for i in range(CLIENTS)
                )
            )

        asyncio.run(run())
    import redis

    redis.Redis.from_url(settings.broker_url).delete(env["TD3_GPU_QUEUE"])

    statuses = Counter(status for status, _ in seen)
    latencies = sorted(seconds for _, seconds in seen)
    p50 = statistics.median(latencies)
    p99 = latencies[int(0.99 * (len(latencies) - 1))]
    errors = sum(n for status, n in statuses.items() if status == 0 or status >= 500)
    print(
        f"\nload: {CLIENTS} clients x {SECONDS:g} s: {len(seen)} requests "
        f"({len(seen) / SECONDS:.0f}/s), statuses {dict(sorted(statuses.items()))}, "
        f"errors {errors}, p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms"
    )
    assert errors == 0, statuses
    assert statuses[202] > 0 and statuses[200] > 0
    assert p99 < P99_BOUND
