"""The cluster modules share one environment: a fresh three-node cluster costs minutes, so the
modules of this package (the cross-node TURN call with the whole verify suite, node loss and the
rolling deploy, in `make test`; the Redis failover, in `make test-e2e-long`) use the same one when
run together, made once (env `e2ecluster`: three nodes behind the emulated 1:1 NAT, as on
AWS/GCP, so the cluster path is also the NAT path) and removed when the package's last test is
done, before the other e2e modules run. Each module also runs alone."""
from __future__ import annotations

from typing import Callable, Iterator

import pytest

from infra.local.up import Context
from tests.e2e import envs


@pytest.fixture(scope="package")
def nat_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Context]:
    config = envs.write_config(tmp_path_factory.mktemp(envs.CLUSTER_ENV) / f"Pulumi.{envs.CLUSTER_ENV}.yaml",
                               {"network": "nat"})
    yield envs.fresh_deployed(envs.CLUSTER_ENV, envs.CLUSTER_NODES, config=config, timeout=2400)
    envs.down(envs.CLUSTER_ENV)


#: What the cluster tests measured (a drain's steps, the time until new calls succeed after a power
#: cut, a rolling deploy's calls and times): printed after the run's summary, pass or fail, since
#: pytest keeps a passing test's own output to itself.
FIGURES: list[str] = []


@pytest.fixture
def figure() -> Callable[[str], None]:
    def note(line: str) -> None:
        print(line)
        FIGURES.append(line)
    return note


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if FIGURES:
        terminalreporter.section("cluster figures")
        for line in FIGURES:
            terminalreporter.write_line(line)
