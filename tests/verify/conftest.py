"""Fixtures of the verification suite: everything comes from `.stack/<env>/outputs.json`."""
from __future__ import annotations

import os
from typing import Any, Callable

import pytest

from infra import probes
from infra.outputs import Outputs, OutputsError, read
from infra.spec import EnvSpec


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
    return outputs.spec


@pytest.fixture(scope="session")
def node_ips(outputs: Outputs) -> dict[str, str]:
    return {n.name: n.public_ip for n in outputs.nodes}


Probe = Callable[..., dict[str, Any]]


@pytest.fixture(scope="session")
def probe(outputs: Outputs) -> Probe:
    return lambda probe_name, **args: probes.run(outputs, probe_name, **args)


@pytest.fixture(scope="session")
def cafile(outputs: Outputs) -> str | None:
    return outputs.ca_bundle or None
