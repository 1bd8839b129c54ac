"""Prometheus metrics at `/metrics`.

Requests are counted in this process (by route template, method and status, with
their latency). Everything about jobs is read from the database at scrape time, since
jobs run in worker processes, possibly on other machines: jobs by status, the queue
depth (queued jobs), live workers (recent heartbeats), the outer steps per second of
the running jobs (from the progress they write: steps left / ETA) and the peak GPU
memory they report (CUDA workers only). No tenant data: counts and rates only."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.db import Database
from api.lifecycle import JobStatus
from api.models import Job, Worker, utcnow


class ServiceCollector(Collector):
    """The service's state, read from the database when Prometheus scrapes."""

    def __init__(self, db: Database, *, lease_seconds: float):
        self.db = db
        self.lease_seconds = lease_seconds

    def collect(self) -> Any:
        by_status = GaugeMetricFamily("td3_jobs", "jobs by status", labels=["status"])
        queue = GaugeMetricFamily("td3_queue_depth", "jobs waiting for a worker")
        workers = GaugeMetricFamily("td3_live_workers", "workers with a recent heartbeat")
        rate = GaugeMetricFamily(
            "td3_outer_steps_per_second", "distillation outer steps per second, all running jobs"
        )
        gpu = GaugeMetricFamily(
            "td3_gpu_memory_bytes", "peak GPU memory reported by running jobs (CUDA only)"
        )
        since = utcnow() - timedelta(seconds=self.lease_seconds)
        with self.db.session() as session:
            counts = dict(
                session.execute(select(Job.status, func.count()).group_by(Job.status)).all()
            )
            live = session.scalar(select(func.count()).where(Worker.heartbeat_at >= since))
            progress = session.scalars(
                select(Job.progress).where(Job.status == JobStatus.RUNNING)
            ).all()
        for status in JobStatus:
            by_status.add_metric([status.value], counts.get(status, 0))
        queue.add_metric([], counts.get(JobStatus.QUEUED, 0))
        workers.add_metric([], live or 0)
        rate.add_metric([], sum(_steps_per_second(p) for p in progress if p))
        gpu.add_metric([], sum(float(p.get("gpu_memory_bytes") or 0) for p in progress if p))
        yield from (by_status, queue, workers, rate, gpu)


def _steps_per_second(progress: dict[str, Any]) -> float:
    if progress.get("stage") != "distill":
        return 0.0
    eta, left = (
        progress.get("eta_seconds"),
        (progress.get("total") or 0) - (progress.get("step") or 0),
    )
    return left / eta if eta and left > 0 else 0.0


class Metrics:
    """One registry per app (tests build many apps in one process)."""

    def __init__(self, db: Database, *, lease_seconds: float):
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "td3_http_requests",
            "HTTP requests by route template, method and status",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "td3_http_request_seconds",
            "HTTP request latency by route template",
            ["route"],
            registry=self.registry,
        )
        self.registry.register(ServiceCollector(db, lease_seconds=lease_seconds))


class CountRequests:
    """ASGI middleware counting every HTTP request in `metrics` once it is answered."""

    def __init__(self, app: ASGIApp, *, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, status = time.perf_counter(), 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            # the route template, never the raw path (ids would make unbounded label sets)
            template = getattr(scope.get("route"), "path", None) or "unmatched"
            self.metrics.requests.labels(template, scope["method"], str(status)).inc()
            self.metrics.latency.labels(template).observe(time.perf_counter() - start)
