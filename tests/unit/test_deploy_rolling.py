"""The rolling deploy's choices before it touches a node: which nodes roll, in what order, and
what it refuses (the SSH side runs in tests/e2e/cluster/test_rolling.py)."""
from __future__ import annotations

import subprocess

import pytest

from deploy import fastpath, rolling
from tests.unit.support import outputs_for, spec_of


def _checks(clean: dict[str, bool]):
    return lambda out, limit=(): [fastpath.NodeCheck(node=n, clean=c, why="test")
                                  for n, c in clean.items() if not limit or n in limit]


def test_a_single_node_is_refused_before_any_ssh(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fastpath, "check", lambda *a: pytest.fail("no SSH before the input checks"))
    with pytest.raises(rolling.RollingError, match="load balancer"):
        rolling.plan(outputs_for(spec_of(1)), ())


def test_an_unknown_node_is_refused_before_any_ssh(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fastpath, "check", lambda *a: pytest.fail("no SSH before the input checks"))
    with pytest.raises(rolling.RollingError, match="node-9"):
        rolling.plan(outputs_for(spec_of(3)), ("node-2", "node-9"))


def test_only_changed_nodes_roll_in_the_balancers_order(monkeypatch: pytest.MonkeyPatch) -> None:
    out = outputs_for(spec_of(3))
    monkeypatch.setattr(fastpath, "check", _checks({"node-1": False, "node-2": True, "node-3": False}))
    assert rolling.plan(out, ()) == (["node-1", "node-3"], [])
    assert rolling.plan(out, ("node-3",)) == (["node-3"], [])
    # --full: every chosen node, changed or not.
    assert rolling.plan(out, (), full=True) == (["node-1", "node-2", "node-3"], [])


def test_nothing_changed_rolls_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    out = outputs_for(spec_of(3))
    monkeypatch.setattr(fastpath, "check", _checks({"node-1": True, "node-2": True, "node-3": True}))
    assert rolling.plan(out, ()) == ([], [])




class FakeNode:
    """A node's side of the drain: the commands it was sent."""

    def __init__(self) -> None:
        self.commands: list[str] = []

    def __call__(self, _out, _node, command: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        self.commands.append((command, timeout))
        return subprocess.CompletedProcess(command, 0, "", "")


def test_a_node_drains_its_agent_services_before_its_livekit(monkeypatch) -> None:
    """A job on the node's worker may belong to a room on another node and signal through this
    node's LiveKit: the worker must be gone before LiveKit stops, each bounded by its own deadline."""
    out = outputs_for(spec_of(3))
    fake = FakeNode()
    monkeypatch.setattr(rolling, "ssh", fake)
    steps = rolling.drain_services(out, "node-2")
    assert [what for what, _s in steps] == ["agent services", "livekit"]
    assert [c for c, _t in fake.commands] == ["systemctl stop voicestack-agent.service",
                                             "systemctl stop livekit.service"]
    agent_t, livekit_t = (t for _c, t in fake.commands)
    assert agent_t > 60 and livekit_t > out.spec.config.livekit_stop_timeout
    recorded = outputs_for(spec_of(3, recording="agent-calls"))
    fake = FakeNode()
    monkeypatch.setattr(rolling, "ssh", fake)
    rolling.drain_services(recorded, "node-1")
    assert fake.commands[0][0] == "systemctl stop voicestack-agent.service voicestack-recorder.service"


def test_a_failed_stop_keeps_the_node_out(monkeypatch) -> None:
    out = outputs_for(spec_of(3))
    monkeypatch.setattr(rolling, "ssh", lambda *a, **k: subprocess.CompletedProcess("x", 1, "", "Unit failed"))
    with pytest.raises(RuntimeError, match="stays out of the balancer"):
        rolling.drain_services(out, "node-3")
