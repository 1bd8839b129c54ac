"""`td3 demo`: the whole service loop in one command, against the embedded service
(started in the background) or a running one (`--url`)."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from api.settings import Settings
from td3.client import Client, Event, TD3Error, WaitTimeout
from td3.tables import evaluation_markdown
from td3core.config import ALT_MIN_LENGTH


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _say(msg: str) -> None:
    print(msg, flush=True)


def _fmt_progress(p: dict[str, Any]) -> str:
    losses = " ".join(f"{k}={v:.4g}" for k, v in (p.get("losses") or {}).items())
    eta = p.get("eta_seconds")
    eta_s = f" eta {eta:.0f}s" if isinstance(eta, int | float) else ""
    return (
        f"  [{p.get('stage')}] epoch {p.get('epoch')} step {p.get('step')}/{p.get('total')}"
        f"{' ' + losses if losses else ''}{eta_s}"
    )


def demo_config(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "users": args.users,
        "length": args.length,
        "epochs": args.epochs,
        "inner_steps": args.inner_steps,
        "window": args.window,
        "temperature": args.temperature,
        "alt": args.length >= ALT_MIN_LENGTH,
        "select_steps": 20,
        "seed": 0,
        "real_batch": 512,
        "teacher": {"max_steps": args.teacher_steps, "eval_every": 25, "batch_size": 128},
        "learner": {
            "max_steps": args.learner_steps,
            "eval_every": 10,
            "batch_size": 10,
            "lr": 0.005,
        },
        "evaluations": ["summary", "full", "random-users", "random-interactions"],
    }


def run_demo(args: argparse.Namespace) -> int:
    settings = Settings()
    server: subprocess.Popen[bytes] | None = None
    url = args.url
    log_path = settings.home / "demo-serve.log"
    try:
        if url is None:
            settings.ensure_dirs()
            port = args.port or _free_port()
            url = f"http://127.0.0.1:{port}"
            _say(
                f"starting the embedded service on {url} (state: {settings.home}, log: {log_path})"
            )
            log_file = log_path.open("ab")
            server = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "td3",
                    "serve",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                ],
                env={**os.environ, **settings.child_env()},
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        key = args.key or os.environ.get("TD3_API_KEY")
        with Client(url, key or "", timeout=60) as probe:
            deadline = time.monotonic() + args.start_timeout
            while not probe.ready():
                if server is not None and server.poll() is not None:
                    _say(f"error: the service exited (code {server.returncode}); see {log_path}")
                    return 1
                if time.monotonic() > deadline:
                    _say(f"error: the service at {url} is not ready; see {log_path}")
                    return 1
                time.sleep(0.3)
        _say("service ready")

        if not key:
            from api.db import Database
            from api.services.auth import create_key

            _tenant, key = create_key(Database(settings.database_url), args.tenant)
            _say(f"created an API key for tenant {args.tenant!r}")
        with Client(url, key, timeout=60) as client:
            return _run(client, args, settings)
    except TD3Error as exc:
        _say(f"error: {exc}")
        return 1
    finally:
        if server is not None:
            _say("stopping the service")
            _stop(server)


def _run(client: Client, args: argparse.Namespace, settings: Settings) -> int:
    """Upload, distil, follow, download, report: the loop a pipeline runs."""
    from td3core.data.synthetic import generate_interactions, write_interactions_csv

    with tempfile.TemporaryDirectory(prefix="td3-demo-") as tmp:
        path = Path(tmp) / "synthetic.csv"
        inter = generate_interactions(
            args.data_users, args.data_items, args.data_length, 0, follow=args.data_follow
        )
        write_interactions_csv(inter, path)
        _say(f"generated {len(inter)} synthetic interactions -> uploading")
        ds = client.upload(path, labels={"source": "td3-demo"})
    _say(f"dataset {ds.id}: {json.dumps(ds.statistics)}")

    job = client.create_job(ds.id, demo_config(args), labels={"source": "td3-demo"})

    def show(event: Event) -> None:
        # every recorded status change and progress entry, once, however fast the job runs
        if event.kind == "progress":
            _say(_fmt_progress(event.data))
        elif event.kind == "status":
            _say(f"job {job.id} {event.data['status']}")

    try:
        job = client.wait(job.id, timeout=args.timeout, poll=args.poll, on_event=show)
    except WaitTimeout as exc:
        _say(f"error: job still {exc.job.status} after {args.timeout}s")
        return 1
    if job.status != "succeeded":
        _say(f"error: job {job.status}: {job.error.model_dump_json() if job.error else ''}")
        return 1
    _say(f"job succeeded in {job.timings['run_seconds']}s (attempts {job.attempts})")

    out = client.download_summary(
        job.id, Path(args.out or settings.home / f"{job.id}-summary.safetensors")
    )
    digest = hashlib.sha256(out.read_bytes()).hexdigest()
    _say(f"summary: {out} ({out.stat().st_size} bytes, sha256 {digest} verified)")
    # The whole report goes to files (JSON and a self-contained HTML page); the terminal
    # gets the comparison alone.
    report = client.report(job.id)
    report_json = out.with_name(f"{job.id}-report.json")
    report_json.write_text(report.model_dump_json(indent=2))
    report_html = out.with_name(f"{job.id}-report.html")
    report_html.write_text(client.report_html(job.id))
    _say(f"report: {report_json} (open {report_html} in a browser)")
    _say("\nevaluation on the test split (percent; same split and negatives for every row):")
    _say(evaluation_markdown(report.evaluation))
    return 0


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGINT)  # uvicorn shuts down, then serve stops its worker
    try:
        proc.wait(40)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)
