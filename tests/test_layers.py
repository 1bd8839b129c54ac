"""The layer rules of docs/ARCHITECTURE.md hold: import-linter's contracts (in
pyproject.toml) and, at run time, the HTTP API's process never loads torch or the
worker (torch and CUDA belong to the job that runs in a worker's child)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )


def test_import_contracts_are_kept() -> None:
    lint = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run(
        [str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_api_loads_neither_torch_nor_the_worker() -> None:
    result = run_python(
        "import sys, api.main\n"
        "api.main.create_app\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'worker'))\n"
        "print(bad)\n"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_the_command_line_starts_without_torch() -> None:
    # `td3 --help` and the service commands must not pay torch's import time.
    result = run_python(
        "import sys\n"
        "from td3.cli import build_parser\n"
        "build_parser()\n"
        "print('torch' in sys.modules)\n"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
