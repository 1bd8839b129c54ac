"""Helpers shared by the service tests (`from helpers_service import ...`; the
fixtures for the real Postgres/Redis live in tests/integration/conftest.py)."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from api.db import Database
from api.services.auth import create_key


def require_or_skip(available: bool, reason: str) -> None:
    """Locally a missing server skips the test; under CI (the `CI` env var) it fails."""
    if available:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set, so this is a failure, not a skip)")
    pytest.skip(reason)


def auth_headers(db: Database, tenant: str) -> dict[str, str]:
    """Headers with a new key of a new tenant named after `tenant`."""
    _, key = create_key(db, f"{tenant}-{secrets.token_hex(3)}")
    return {"Authorization": f"Bearer {key}"}


# A job that runs in seconds on a CPU: the service tests are about the plumbing.
TINY_CONFIG = {
    "users": 4,
    "length": 8,
    "epochs": 1,
    "inner_steps": 4,
    "window": 2,
    "rank": 4,
    "select_steps": 5,
    "teacher": {"max_steps": 30, "eval_every": 10, "batch_size": 64},
    "learner": {"max_steps": 10, "eval_every": 5, "batch_size": 8},
    "evaluations": ["summary"],
}


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serving(app: Any) -> Iterator[str]:
    """The app behind a real uvicorn server on 127.0.0.1 (a thread of this process):
    its base URL. For clients that must talk HTTP over a socket (streamed uploads)."""
    import threading
    import time

    import uvicorn

    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
