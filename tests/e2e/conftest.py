"""Environments several e2e modules share: a fresh three-node cluster costs minutes of CI, so
the modules that need one (the cross-node TURN call, the Redis failover) use the same one,
made once per session (env `e2ecluster`: three nodes behind the emulated 1:1 NAT, as on
AWS/GCP, so the cluster path is also the NAT path). Modules that break a node on purpose
restore it before they end; the session tears the environment down at the end."""
from __future__ import annotations

from typing import Iterator

import pytest

from infra.local.up import Context
from tests.e2e import envs


@pytest.fixture(scope="session")
def nat_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Context]:
    config = envs.write_config(tmp_path_factory.mktemp(envs.CLUSTER_ENV) / f"Pulumi.{envs.CLUSTER_ENV}.yaml",
                               {"network": "nat"})
    yield envs.fresh_deployed(envs.CLUSTER_ENV, envs.CLUSTER_NODES, config=config, timeout=2400)
    envs.down(envs.CLUSTER_ENV)
