"""The rolling deploy's choices before it touches a node: which nodes roll, in what order, and
what it refuses (the SSH side runs in tests/e2e/cluster/test_rolling.py)."""
from __future__ import annotations

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
