"""Local environments for the e2e suites, made the way `make up` makes them (validate, then the
local provisioner). Each suite uses its own env name and clears leftovers of an interrupted run."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from infra import up as pipeline
from infra.local import down as local_down
from infra.local import up as local_up
from infra.steps import Progress

ROOT = Path(__file__).resolve().parents[2]
#: The session's shared three-node cluster behind the emulated NAT (tests/e2e/conftest.py).
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


def down(env: str) -> None:
    local_down.down(env, Progress.quiet())


def deploy(env: str, timeout: float = 1200) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "deploy", "--env", env], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)
