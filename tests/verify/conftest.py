"""Fixtures of the verification suite: everything comes from `.stack/<env>/outputs.json`."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import pytest

from infra.envspec import spec_from_outputs
from infra.outputs import Outputs, OutputsError, read
from infra.spec import EnvSpec

ROOT = Path(__file__).resolve().parents[2]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--env", default=os.environ.get("ENV", "local"), help="environment whose outputs to verify")


@pytest.fixture(scope="session")
def outputs(request: pytest.FixtureRequest) -> Outputs:
    try:
        return read(request.config.getoption("--env"))
    except OutputsError as exc:
        pytest.exit(str(exc), returncode=2)


@pytest.fixture(scope="session")
def spec(outputs: Outputs) -> EnvSpec:
    return spec_from_outputs(outputs)


@pytest.fixture(scope="session")
def node_ips(outputs: Outputs) -> dict[str, str]:
    return {n.name: n.public_ip for n in outputs.nodes}


Probe = Callable[..., dict[str, Any]]


def run_probe(outputs: Outputs, probe_name: str, **args: Any) -> dict[str, Any]:
    """Run a probe on the operator's side; in local environments inside the client namespace."""
    argv = [sys.executable, "-m", "tests.verify.outside", probe_name, json.dumps(args)]
    if outputs.client_netns:
        argv = ["ip", "netns", "exec", outputs.client_netns, *argv]
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise RuntimeError(f"probe {probe_name} failed to run: {' '.join(argv)}\n{proc.stderr}")
    return json.loads(proc.stdout)


@pytest.fixture(scope="session")
def probe(outputs: Outputs) -> Probe:
    return lambda probe_name, **args: run_probe(outputs, probe_name, **args)


@pytest.fixture(scope="session")
def cafile(outputs: Outputs) -> str | None:
    return outputs.ca_bundle or None
