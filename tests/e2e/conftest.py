"""Environments several e2e modules share: a fresh three-node cluster costs minutes of CI, so
the modules that need one (the cross-node TURN call, the Redis failover) use the same one,
made once per session (env `e2ecluster`: three nodes behind the emulated 1:1 NAT, as on
AWS/GCP, so the cluster path is also the NAT path). Modules that break a node on purpose
restore it before they end; the session tears the environment down at the end."""
from __future__ import annotations

import time
from typing import Iterator

import pytest

from infra.local.up import Context
from tests.e2e import envs

CLUSTER_ENV, CLUSTER_NODES = envs.CLUSTER_ENV, envs.CLUSTER_NODES


@pytest.fixture(scope="session")
def nat_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Context]:
    envs.require_host()
    envs.down(CLUSTER_ENV)  # leftovers of an earlier, interrupted run
    config = envs.write_config(tmp_path_factory.mktemp(CLUSTER_ENV) / f"Pulumi.{CLUSTER_ENV}.yaml", {"network": "nat"})
    t0 = time.monotonic()
    ctx = envs.up(CLUSTER_ENV, CLUSTER_NODES, config=config)
    t1 = time.monotonic()
    deployed = envs.deploy(CLUSTER_ENV, timeout=2400)
    print(f"{CLUSTER_ENV}: up of {CLUSTER_NODES} machines {t1 - t0:.0f}s, first deploy {time.monotonic() - t1:.0f}s")
    assert deployed.returncode == 0, deployed.stdout[-3000:] + deployed.stderr[-3000:]
    yield ctx
    envs.down(CLUSTER_ENV)
