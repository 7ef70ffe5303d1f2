"""infra/verify.py and agent/locks.py: the suite's command line and the call slots its concurrent workers share."""
from __future__ import annotations

import contextlib
import queue
import threading
from pathlib import Path

import pytest

from agent import locks
from agent.locks import exclusive
from infra import verify


def test_the_suite_runs_its_checks_at_once_and_selects_by_name() -> None:
    argv = verify.argv("e2eedge", "host_02", "net_03")
    assert argv[argv.index("-n") + 1] == str(verify.WORKERS) and argv[argv.index("--dist") + 1] == "worksteal"
    assert argv[argv.index("-k") + 1] == "host_02 or net_03" and "--env=e2eedge" in argv
    assert "-n" not in verify.argv("e2eedge", workers=1)


def test_at_most_the_slots_are_held_and_a_waiter_gets_the_one_freed(tmp_path: Path) -> None:
    with contextlib.ExitStack() as held:
        slots = {held.enter_context(locks.slot(tmp_path, 2)) for _ in range(2)}
        assert slots == {0, 1}
        got: queue.Queue[int] = queue.Queue()
        done = threading.Event()

        def third() -> None:
            with locks.slot(tmp_path, 2, worker="gw3") as slot:  # waits on slot 3 % 2 = 1
                got.put(slot)
                done.wait(30)

        waiter = threading.Thread(target=third, daemon=True)
        waiter.start()
        with pytest.raises(queue.Empty):
            got.get(timeout=1.0)  # both slots are held: the third caller must wait
        held.close()  # both holders leave
        assert got.get(timeout=30) == 1
        done.set()
        waiter.join(30)
    # Every slot is free again once its holders left.
    with locks.slot(tmp_path, 2) as first, locks.slot(tmp_path, 2) as second:
        assert {first, second} == {0, 1}


@pytest.mark.parametrize(("cores", "nodes", "local", "want"), [
    (2, 1, True, 1),    # one local machine and the clients on two cores: one call at a time
    (4, 1, True, 2),    # four cores for one machine: two
    (2, 3, True, 1),    # three local machines share the two cores: one call at a time
    (16, 3, True, 2),   # never more than CALLS_AT_ONCE: the node's agent slots are for callers
    (2, 3, False, 2),   # cloud nodes have cores of their own
])
def test_calls_at_once_follow_the_cores_the_local_machines_share(monkeypatch, cores, nodes, local, want) -> None:
    import dataclasses

    from infra import outputs
    from tests.unit.support import outputs_for, spec_of

    out = outputs_for(spec_of(nodes))
    info = outputs.LocalInfo(operator_ip="198.19.1.1", gateway="198.18.1.1", public_network="198.18.1.0/24",
                             internet_network="198.19.1.0/24", netns={}) if local else None
    monkeypatch.setattr(verify.os, "cpu_count", lambda: cores)
    assert verify.calls_at_once(dataclasses.replace(out, local=info)) == want


def test_an_exclusive_lock_makes_the_second_holder_wait(tmp_path: Path) -> None:
    lock = tmp_path / "x.lock"
    entered = threading.Event()

    def second() -> None:
        with exclusive(lock):
            entered.set()

    with exclusive(lock):
        waiter = threading.Thread(target=second, daemon=True)
        waiter.start()
        assert not entered.wait(1.0), "a second holder got the lock while the first held it"
    assert entered.wait(30), "the second holder never got the lock once it was free"
    waiter.join(30)
    assert oct(lock.stat().st_mode & 0o777) == oct(0o600)


def test_the_call_slot_arguments_name_the_outputs_directory_and_the_slots(monkeypatch) -> None:
    from tests.unit.support import outputs_for, spec_of

    out = outputs_for(spec_of(1))
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw2")
    got = verify.call_slot_args(out)
    assert got == {"dir": str(out.paths.dir), "slots": verify.calls_at_once(out), "worker": "gw2"}
