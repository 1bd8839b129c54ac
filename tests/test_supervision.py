"""`td3 serve` supervises its workers (embedded mode: SQLite + the filesystem broker,
real worker processes): restarts a killed worker, stops every worker on SIGTERM,
refuses a second serve on the same home, keeps $TD3_HOME private, and a worker whose
serve was killed stops itself. /readyz needs a live worker."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from helpers_serve import ROOT, Served, alive, wait_for

pytestmark = pytest.mark.integration  # real processes (no Postgres or Redis needed)

# heartbeats and leases short enough for a test to see them
FAST = {"TD3_HEARTBEAT_INTERVAL": "0.5", "TD3_LEASE_SECONDS": "3", "TD3_SWEEP_INTERVAL": "1"}


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_serve_restarts_a_killed_worker_and_stops_them_all_on_sigterm(tmp_path):
    home = tmp_path / "home"
    with Served(home, FAST) as served:
        served.wait_ready()
        assert _mode(home) == 0o700
        for name in ("td3.db", "serve.lock"):
            assert _mode(home / name) == 0o600, name
        assert _mode(home / "broker") == 0o700 and _mode(home / "broker" / "queue") == 0o700

        second = subprocess.run(
            [sys.executable, "-m", "td3", "serve", "--port", "0"],
            env=served.env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert second.returncode == 2
        assert f"another `td3 serve` (pid {served.pid})" in second.stderr

        [first] = served.workers()
        os.kill(first, signal.SIGKILL)
        [second_worker] = served.wait(
            lambda: [p for p in served.workers() if p != first], 30, "a new worker"
        )
        assert not Path(f"/proc/{first}").exists(), "the dead worker was not reaped"
        served.wait_ready()
        assert "restarting in" in served.log(tail=0)

        served.proc.send_signal(signal.SIGTERM)
        assert served.proc.wait(40) == 0
        assert not alive(second_worker), "td3 serve left its worker behind"


def test_a_worker_outlives_no_killed_serve_and_the_home_can_be_served_again(tmp_path):
    home = tmp_path / "home"
    with Served(home, FAST) as served:
        served.wait_ready()
        workers = served.workers()
        os.kill(served.pid, signal.SIGKILL)
        served.proc.wait(10)
        wait_for(lambda: not any(alive(p) for p in workers), 20, "the orphaned worker to stop")
    with Served(home, FAST) as again:
        again.wait_ready()
        assert len(again.workers()) == 1


def test_readyz_is_503_without_a_live_worker(tmp_path):
    with Served(tmp_path / "home", FAST, args=("--no-worker",)) as served:
        served.wait(lambda: served.readyz() is not None, 60, "the API")
        body = httpx.get(f"{served.url}/readyz", timeout=5).json()
        assert body["status"] == "unavailable"
        assert body["checks"]["database"] == "ok" and body["checks"]["broker"] == "ok"
        assert body["checks"]["workers"].startswith("error: RuntimeError: 0 live worker(s)")


def test_one_gpu_per_worker_without_loading_torch(monkeypatch):
    from td3 import serve

    assert serve.gpu_devices({"CUDA_VISIBLE_DEVICES": "2,3"}) == ["2", "3"]
    assert serve.gpu_devices({"CUDA_VISIBLE_DEVICES": ""}) == []
    assert [serve._gpu_env(["2", "3"], i) for i in range(3)] == [
        {"CUDA_VISIBLE_DEVICES": "2"},
        {"CUDA_VISIBLE_DEVICES": "3"},
        {"CUDA_VISIBLE_DEVICES": "2"},
    ]
    assert serve._gpu_env([], 0) == {}
    monkeypatch.setenv("PATH", "/nonexistent")  # no nvidia-smi: no GPU
    assert serve.gpu_devices({}) == []
    probe = "import sys, td3.serve, td3.service_commands; print('torch' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert out.stdout.strip() == "False", out.stderr
