"""Embedded mode: no servers at all (SQLite + kombu's filesystem:// broker in
$TD3_HOME), a real Celery worker subprocess, one tiny job end to end via `demo`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TD3_")}
    env.update(TD3_HOME=str(home), OMP_NUM_THREADS="1")
    return env


def test_admin_create_key_prints_key_last(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "td3", "admin", "create-key", "--tenant", "t1"],
        cwd=ROOT,
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1].startswith("td3_")
    assert (tmp_path / "td3.db").exists()
    r = subprocess.run(
        [sys.executable, "-m", "td3", "admin", "list-tenants"],
        cwd=ROOT,
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "t1" in r.stdout


@pytest.mark.slow
def test_embedded_demo_end_to_end(tmp_path):
    out = tmp_path / "summary.safetensors"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "td3",
            "demo",
            "--out",
            str(out),
            "--timeout",
            "240",
            # a tiny job: this test is about the embedded plumbing, not about quality
            "--users",
            "4",
            "--length",
            "8",
            "--epochs",
            "1",
            "--inner-steps",
            "4",
            "--window",
            "2",
            "--teacher-steps",
            "30",
            "--learner-steps",
            "10",
            "--data-users",
            "60",
            "--data-items",
            "40",
            "--data-length",
            "12",
        ],
        cwd=tmp_path,
        env=_env(tmp_path / "home"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    log = tmp_path / "home" / "demo-serve.log"
    assert r.returncode == 0, (
        r.stdout[-3000:] + r.stderr[-3000:] + (log.read_text()[-3000:] if log.exists() else "")
    )
    assert "verified" in r.stdout
    assert "| summary |" in r.stdout  # the evaluation table, and only it: the report is a file
    assert '"format"' not in r.stdout
    (report,) = tmp_path.glob("job_*-report.json")  # beside the summary
    assert json.loads(report.read_text())["format"] == "td3-report/1"
    assert "<svg" in report.with_suffix(".html").read_text()
    assert "[teacher]" in r.stdout
    assert out.stat().st_size > 0
    assert (tmp_path / "home" / "td3.db").exists()
    assert (tmp_path / "home" / "broker" / "queue").is_dir()
