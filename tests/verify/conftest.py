"""Fixtures of the verification suite: everything comes from `.stack/<env>/outputs.json`."""
from __future__ import annotations

import fcntl
import os
import re
from typing import Any, Callable, Iterator

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


#: Calls the suite places at once (infra/verify.py runs its checks in parallel): each holds one of
#: the node's agent jobs (AGENT_MAX_JOBS, 4 by default) until its room closes, ~20 s after the
#: caller left, so two leave room for real callers while a verify runs.
CALLS_AT_ONCE = 2


@pytest.fixture
def call_slot(outputs: Outputs) -> Iterator[int]:
    """One of CALLS_AT_ONCE slots across the suite's worker processes (flock on files next to the
    outputs; the kernel drops a lock when its holder dies, so a crashed worker frees its slot)."""
    slots = [os.open(outputs.paths.dir / f".verify-call-{i}.lock", os.O_RDWR | os.O_CREAT, 0o600)
             for i in range(CALLS_AT_ONCE)]
    held = None
    try:
        for i, fd in enumerate(slots):
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                held = i
                break
            except BlockingIOError:
                continue
        if held is None:  # all taken: wait for one, a worker's own by its number (gw0, gw1, ...)
            worker = re.sub(r"\D", "", os.environ.get("PYTEST_XDIST_WORKER", "0")) or "0"
            held = int(worker) % CALLS_AT_ONCE
            fcntl.flock(slots[held], fcntl.LOCK_EX)
        yield held
    finally:
        for fd in slots:
            os.close(fd)  # closing releases the lock held on it
