"""The rolling deploy (deploy/rolling.py) on the package's three-node cluster: every node's
LiveKit must restart (its config drifted on every node, which the converge repairs with a
restart, as an upgrade does), one node at a time out of the balancer, while a client keeps
opening new calls through the balancer: none may be refused.

Runs after test_node_loss (the package's module order) and leaves every node in the balancer.
"""
from __future__ import annotations

import threading

import pytest

from infra import outputs
from infra.local import balancer
from infra.local.names import EnvNames
from tests.e2e import callers, envs

ENV = envs.CLUSTER_ENV
#: Seconds the rolling deploy of three nodes may take.
ROLL_TIMEOUT_S = 1800

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def env(nat_cluster):
    return nat_cluster


def test_a_rolling_deploy_restarts_every_node_and_refuses_no_new_call(env) -> None:
    out, names = outputs.read(ENV), EnvNames(ENV)
    nodes = list(out.spec.balancer.targets)
    for node in nodes:
        balancer.wait_for(names, node, up=True, deadline_s=60)
    before = callers.livekit_pids(ENV, nodes)
    callers.drift_livekit_config(ENV, nodes)
    stop = threading.Event()
    running = callers.start_callers(out, stop)
    try:
        result, _summary, seconds = envs.timed_deploy(ENV, ROLL_TIMEOUT_S, "--rolling")
    finally:
        calls = callers.stop_callers(running, stop)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for node in nodes:
        assert f"rolling {ENV}: {node} out of the balancer" in result.stdout, result.stdout[-3000:]
    after = callers.livekit_pids(ENV, nodes)
    assert all(after[n] not in ("", "0", before[n]) for n in nodes), (before, after)
    refused = [c for c in calls if not c[1]]
    print(f"rolling deploy of {len(nodes)} nodes: {seconds:.1f}s, {len(calls)} new calls meanwhile, "
          f"{len(refused)} refused")
    assert len(calls) >= len(nodes), f"too few calls to prove anything: {calls}"
    assert not refused, f"calls failed during the rolling deploy: {refused}"
    for node in nodes:
        balancer.wait_for(names, node, up=True, deadline_s=60)
    # Converged: the next deploy has nothing to do on any node.
    again = envs.deploy(ENV, 600, "--rolling")
    assert again.returncode == 0 and "nothing to roll" in again.stdout, again.stdout[-2000:] + again.stderr[-2000:]
