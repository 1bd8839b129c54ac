"""A real `td3 serve` in a subprocess, for the supervision and fault tests: start it,
find its worker processes, wait for readiness, and never leave a process behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import Any, TypeVar

import httpx
from helpers_service import free_port

ROOT = Path(__file__).resolve().parents[1]
T = TypeVar("T")


def children(pid: int) -> list[int]:
    """Live processes whose parent is `pid` (from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(stat.parent.name))
    return found


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def wait_for(condition: Callable[[], T], timeout: float, what: str, log: str = "") -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}\n{log}"
        time.sleep(0.2)


class Served:
    """A real `td3 serve` subprocess on a free port, in its own process group, with
    its log in `home/serve.log`. `close()` stops it and SIGKILLs every process group
    it or its workers ever had, so a test never leaves one behind."""

    def __init__(
        self, home: Path, env: dict[str, str] | None = None, args: tuple[str, ...] = ()
    ) -> None:
        self.home = Path(home)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("TD3_")}
        self.env.update(TD3_HOME=str(self.home), OMP_NUM_THREADS="1", **(env or {}))
        self.command = [sys.executable, "-m", "td3", "serve", "--port", str(self.port), *args]
        self.groups: set[int] = set()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Served:
        self.home.mkdir(parents=True, exist_ok=True)
        with (self.home / "serve.log").open("ab") as log:
            self.proc = subprocess.Popen(
                self.command,
                env=self.env,
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.groups.add(self.proc.pid)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def log(self, tail: int = 6000) -> str:
        """The last `tail` characters of its log (0: all of it)."""
        path = self.home / "serve.log"
        return path.read_text(errors="replace")[-tail:] if path.exists() else ""

    def workers(self) -> list[int]:
        """Pids of the worker main processes it runs now (each leads its own group)."""
        pids = children(self.pid)
        self.groups.update(pids)
        return pids

    def wait(self, condition: Callable[[], T], timeout: float, what: str) -> T:
        return wait_for(condition, timeout, what, self.log())

    def readyz(self) -> int | None:
        try:
            return httpx.get(f"{self.url}/readyz", timeout=5).status_code
        except httpx.TransportError:
            return None

    def wait_ready(self, timeout: float = 90) -> Served:
        self.wait(lambda: self.readyz() == 200, timeout, "/readyz 200")
        self.workers()
        return self

    def __enter__(self) -> Served:
        return self.start()

    def __exit__(self, *_: Any) -> None:
        self.close()

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.workers()
            self.proc.send_signal(signal.SIGTERM)
            with suppress(subprocess.TimeoutExpired):
                self.proc.wait(40)
        for group in self.groups:
            with suppress(ProcessLookupError, PermissionError):
                os.killpg(group, signal.SIGKILL)
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
