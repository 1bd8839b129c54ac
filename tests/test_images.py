"""The images' inputs agree: the API lock has no torch, the worker lock has it, the
locks pin what their `.in` files and pyproject.toml ask for, and the Dockerfile and
docker-compose.yml build each image from its own lock. (No container engine runs here:
the images themselves are not built by the tests.)"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
REQ = ROOT / "requirements"
TRAINING = {"torch", "higher", "tqdm"}


def _name(requirement: str) -> str:
    return re.split(r"[\[<>=!~; ]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def _inputs(path: Path) -> list[str]:
    lines = [line.strip() for line in path.read_text().splitlines()]
    return [line for line in lines if line and not line.startswith(("#", "-r"))]


def _pins(path: Path) -> dict[str, str]:
    return dict(re.findall(r"^([A-Za-z0-9_.\-]+)==([^ \\]+)", path.read_text(), re.M))


def test_the_api_inputs_are_pyprojects_dependencies_without_the_training_stack():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = sorted(d for d in project["dependencies"] if _name(d) not in TRAINING)
    assert sorted(_inputs(REQ / "api.in")) == wanted
    training = sorted(d for d in project["dependencies"] if _name(d) in TRAINING)
    assert sorted(_inputs(REQ / "worker.in")) == training
    assert "-r api.in" in (REQ / "worker.in").read_text()


def test_the_locks_pin_every_input_with_hashes_and_only_the_worker_has_torch():
    api, worker = _pins(REQ / "api.lock"), _pins(REQ / "worker.lock")
    for lock, path in ((api, REQ / "api.in"), (worker, REQ / "worker.in")):
        assert {_name(r) for r in _inputs(path)} <= {_name(p) for p in lock}, path
    assert not any(_name(p) == "torch" or p.startswith("nvidia") for p in api)
    assert "torch" in worker
    assert all(worker[p] == v for p, v in api.items()), "the two images resolve alike"
    for path in (REQ / "api.lock", REQ / "worker.lock"):
        text = path.read_text()
        assert text.count("--hash=sha256:") >= text.count("==")


def test_the_dockerfile_and_compose_build_each_image_from_its_lock():
    dockerfile = (ROOT / "Dockerfile").read_text()
    for target in ("api", "worker"):
        stage = dockerfile.split(f" AS {target}\n", 1)[1].split("\nFROM ", 1)[0]
        assert f"requirements/{target}.lock" in stage
        assert "--require-hashes" in stage
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    assert services["api"]["build"]["target"] == "api"
    assert services["worker"]["build"]["target"] == "worker"
