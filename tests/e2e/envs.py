"""Local environments for the e2e suites, made the way `make up` makes them (validate, then the
local provisioner). Each suite uses its own env name and clears leftovers of an interrupted run."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from infra import outputs
from infra import up as pipeline
from infra.local import down as local_down
from infra.local import up as local_up
from infra.steps import Progress

ROOT = Path(__file__).resolve().parents[2]
#: The session's shared three-node cluster behind the emulated NAT (tests/e2e/cluster/conftest.py).
CLUSTER_ENV = "e2ecluster"
CLUSTER_NODES = 3


def require_host() -> None:
    # Fail, never skip: a missing prerequisite is a broken CI machine, not a pass.
    if os.geteuid() != 0:
        pytest.fail("the local environment needs root")
    if shutil.which("systemd-nspawn") is None:
        pytest.fail("systemd-nspawn missing: run 'make deps' (Debian package systemd-container)")


def write_config(path: Path, settings: dict[str, Any]) -> Path:
    """A stack file for a local environment, as an operator writes one."""
    path.write_text(yaml.safe_dump({"config": {f"voicestack:{k}": v for k, v in
                                               {"provider": "local", **settings}.items()}}))
    return path


def up(env: str, nodes: int = 1, config: Path | None = None) -> local_up.Context:
    spec = pipeline.load(env, config, nodeCount=nodes)
    return local_up.up(spec, Progress.quiet())


def fresh(env: str, nodes: int = 1, config: Path | None = None) -> local_up.Context:
    """A new environment for one module: the host checked, leftovers of an interrupted run removed,
    then up (the time of the up alone is printed)."""
    require_host()
    down(env)
    t0 = time.monotonic()
    ctx = up(env, nodes, config)
    print(f"{env}: up of {nodes} machine(s) {time.monotonic() - t0:.1f}s")
    return ctx


def fresh_deployed(env: str, nodes: int = 1, config: Path | None = None, timeout: float = 1200) -> local_up.Context:
    """fresh(), then deployed; fails with the end of the deploy's output."""
    ctx = fresh(env, nodes, config)
    result, _summary, _seconds = timed_deploy(env, timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return ctx


def down(env: str) -> None:
    local_down.down(env, Progress.quiet())


def deploy(env: str, timeout: float = 1200, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "deploy", "--env", env, *extra], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


def timed_deploy(env: str, timeout: float = 1200, *extra: str) -> tuple[subprocess.CompletedProcess[str], dict, float]:
    """deploy(), its summary (.stack/<env>/deploy-last.json, {} if none) and seconds; prints the end of its output."""
    t0 = time.monotonic()
    result = deploy(env, timeout, *extra)
    seconds = time.monotonic() - t0
    path = outputs.EnvPaths(env).deploy_last
    summary = json.loads(path.read_text()) if path.is_file() else {}
    print(f"deploy --env {env}: rc={result.returncode} in {seconds:.1f}s\n{result.stdout[-3000:]}{result.stderr[-3000:]}")
    return result, summary, seconds
