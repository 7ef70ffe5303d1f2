"""The rolling deploy (deploy/rolling.py) on the package's three-node cluster: every node's
LiveKit must restart (its config drifted on every node, which the converge repairs with a
restart, as an upgrade does), one node at a time out of the balancer, while a client keeps
opening new calls through the balancer: none may be refused. Meanwhile a long call lives on the
node rolled last (its room, its agent job and its signalling there): while the other nodes are
upgraded it keeps its audio (the agent answers it after each of them is back), then it hangs up before its own
node drains.

Runs after test_node_loss (the package's module order) and leaves every node in the balancer.
"""
from __future__ import annotations

import sys
import threading

import pytest

from infra import outputs
from infra.local import balancer
from infra.local.names import EnvNames
from infra.probes.roundtrip import CallSession
from tests.e2e import callers, envs

ENV = envs.CLUSTER_ENV
#: Seconds the rolling deploy of three nodes may take.
ROLL_TIMEOUT_S = 1800

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def env(nat_cluster):
    return nat_cluster


def test_a_rolling_deploy_restarts_every_node_and_refuses_no_new_call(env, figure) -> None:
    out, names = outputs.read(ENV), EnvNames(ENV)
    nodes = list(out.spec.balancer.targets)
    for node in nodes:
        balancer.wait_for(names, node, up=True, deadline_s=60)
    before = callers.livekit_pids(ENV, nodes)
    callers.drift_livekit_config(ENV, nodes)
    last = nodes[-1]   # the rolling deploy takes the balancer's targets in order
    answers: list[dict] = []
    with CallSession(out) as session:
        room, missed = callers.colocated_call(ENV, out, session, last)
        print(f"long call in room {room}: room and agent on {last} (earlier tries' agents on {missed or 'none'})")
        stop = threading.Event()
        roll = callers.Streamed([sys.executable, "-m", "deploy", "--env", ENV, "--rolling"], str(envs.ROOT))
        running = callers.start_callers(out, stop, epoch=roll.t0)
        try:
            for node in nodes[:-1]:
                roll.wait_line(f"rolling {ENV}: {node} converged", ROLL_TIMEOUT_S)
                answers.append({"after": node, **session.speak()})
            session.hangup()   # before its own node drains (which would wait for it)
            rc, text = roll.finish(ROLL_TIMEOUT_S)
        finally:
            if roll.proc.poll() is None:   # the test failed before the roll ended: stop it
                roll.proc.kill()
            calls = callers.stop_callers(running, stop)
    print(text[-3000:])
    assert rc == 0, text[-6000:]
    for node in nodes:
        assert f"rolling {ENV}: {node} out of the balancer" in text, text[-3000:]
    after = callers.livekit_pids(ENV, nodes)
    assert all(after[n] not in ("", "0", before[n]) for n in nodes), (before, after)
    refused = [c for c in calls if not c.ok]
    figure(f"rolling deploy of {len(nodes)} nodes: {len(calls)} new calls meanwhile, {len(refused)} refused; "
           f"the long call on {last}: " + ", ".join(f"after {a['after']} answered {a.get('answer')!r} "
                                                   f"in {a.get('latency_s')} s" for a in answers))
    for line in text.splitlines():
        if " drained in " in line or " rolled in " in line:
            figure(line)
    assert len(calls) >= len(nodes), f"too few calls to prove anything: {calls}"
    if refused:   # where each was, beside the roll's steps in time (a call's time: its start)
        where = "\n".join(f"+{c.at_s:.1f} s {callers.placement(ENV, nodes, c.room)}: {c.error}" for c in refused)
        pytest.fail(f"{len(refused)} of {len(calls)} calls failed during the rolling deploy:\n{where}\n"
                    f"the roll:\n{roll.timeline(f'rolling {ENV}: ')}")
    for a in answers:
        assert callers.answered_lights(a), (
            f"the long call on {last} lost its audio while {a['after']} was upgraded: {a}")
    for node in nodes:
        balancer.wait_for(names, node, up=True, deadline_s=60)
    # Converged: the next deploy has nothing to do on any node.
    again = envs.deploy(ENV, 600, "--rolling")
    assert again.returncode == 0 and "nothing to roll" in again.stdout, again.stdout[-2000:] + again.stderr[-2000:]
