"""`td3 demo`: the whole service loop in one command, against the embedded service
(started in the background) or a running one (`--url`)."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from api.lifecycle import TERMINAL, JobStatus
from api.settings import Settings
from td3.tables import evaluation_markdown


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
        "alt": args.length >= 7,
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
    import httpx

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
        client = httpx.Client(base_url=url, timeout=60)
        deadline = time.monotonic() + args.start_timeout
        while True:
            try:
                if client.get("/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if server is not None and server.poll() is not None:
                _say(f"error: the service exited (code {server.returncode}); see {log_path}")
                return 1
            if time.monotonic() > deadline:
                _say(f"error: the service at {url} is not ready; see {log_path}")
                return 1
            time.sleep(0.3)
        _say("service ready")

        key = args.key or os.environ.get("TD3_API_KEY")
        if not key:
            from api.db import Database
            from api.services.auth import create_key

            _tenant, key = create_key(Database(settings.database_url), args.tenant)
            _say(f"created an API key for tenant {args.tenant!r}")
        headers = {"Authorization": f"Bearer {key}"}

        from td3core.data.synthetic import generate_interactions, write_interactions_csv

        with tempfile.TemporaryDirectory(prefix="td3-demo-") as tmp:
            path = Path(tmp) / "synthetic.csv"
            inter = generate_interactions(args.data_users, args.data_items, args.data_length, 0)
            write_interactions_csv(inter, path)
            _say(f"generated {len(inter)} synthetic interactions -> uploading")
            with path.open("rb") as f:
                r = client.post(
                    "/v1/datasets",
                    params={"filename": "synthetic.csv"},
                    content=f,
                    headers={**headers, "Content-Type": "text/csv"},
                )
        if r.status_code != 201:
            _say(f"error: upload failed: {r.status_code} {r.text}")
            return 1
        ds = r.json()
        _say(f"dataset {ds['id']}: {json.dumps(ds['statistics'])}")

        body = {"dataset_id": ds["id"], "config": demo_config(args)}
        r = client.post(
            "/v1/jobs", json=body, headers={**headers, "Idempotency-Key": secrets.token_hex(8)}
        )
        if r.status_code not in (200, 202):
            _say(f"error: job submission failed: {r.status_code} {r.text}")
            return 1
        job = r.json()
        deadline = time.monotonic() + args.timeout

        # Follow the job's event log: every recorded status change and progress entry
        # is shown once, however fast the job runs between two polls.
        cursor: str | None = None
        finished = False
        while True:
            params: dict[str, str | int] = {"limit": 200}
            if cursor:
                params["cursor"] = cursor
            page = client.get(f"/v1/jobs/{job['id']}/events", params=params, headers=headers).json()
            for event in page["items"]:
                if event["kind"] == "progress":
                    _say(_fmt_progress(event["data"]))
                elif event["kind"] == "status":
                    _say(f"job {job['id']} {event['data']['status']}")
            cursor = page["next_cursor"] or cursor
            if page["items"]:
                continue
            if finished:  # the log is drained up to the terminal status
                break
            job = client.get(f"/v1/jobs/{job['id']}", headers=headers).json()
            if job["status"] in TERMINAL:
                finished = True
                continue
            if time.monotonic() > deadline:
                _say(f"error: job still {job['status']} after {args.timeout}s")
                return 1
            time.sleep(args.poll)
        if job["status"] != JobStatus.SUCCEEDED:
            _say(f"error: job {job['status']}: {json.dumps(job.get('error'))}")
            return 1
        t = job["timings"]
        _say(f"job succeeded in {t['run_seconds']}s (attempts {job['attempts']})")

        r = client.get(f"/v1/jobs/{job['id']}/summary", headers=headers)
        if r.status_code != 200:
            _say(f"error: summary download failed: {r.status_code} {r.text}")
            return 1
        out = Path(args.out or settings.home / f"{job['id']}-summary.safetensors")
        out.write_bytes(r.content)
        digest = hashlib.sha256(r.content).hexdigest()
        if digest != r.headers.get("x-content-sha256"):
            _say(
                f"error: sha256 mismatch: got {digest}, header {r.headers.get('x-content-sha256')}"
            )
            return 1
        _say(f"summary: {out} ({len(r.content)} bytes, sha256 {digest} verified)")
        r = client.get(f"/v1/jobs/{job['id']}/report", headers=headers)
        if r.status_code != 200:
            _say(f"error: report failed: {r.status_code} {r.text}")
            return 1
        report = r.json()
        _say("report:")
        _say(json.dumps(report, indent=2))
        _say("\nevaluation on the test split (percent; same split and negatives for every row):")
        _say(evaluation_markdown(report["evaluation"]))
        return 0
    finally:
        if server is not None:
            _say("stopping the service")
            _stop(server)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGINT)  # uvicorn shuts down, then serve stops its worker
    try:
        proc.wait(40)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)
