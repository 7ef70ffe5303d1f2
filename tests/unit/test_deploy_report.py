"""deploy/report.py's heartbeat: a long step says it is still running; a finished one says nothing more."""
from __future__ import annotations

import threading
import time

from deploy.report import Heartbeat


class Lines:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.changed = threading.Condition()

    def say(self, line: str) -> None:
        with self.changed:
            self.lines.append(line)
            self.changed.notify_all()

    def wait_for(self, fragment: str, timeout: float = 10) -> None:
        with self.changed:
            assert self.changed.wait_for(lambda: any(fragment in line for line in self.lines), timeout), self.lines


def test_a_long_step_says_it_is_still_running_until_it_ends() -> None:
    out = Lines()
    beat = Heartbeat(every=0.05, say=out.say)
    beat.start("[ 97/150] agent: Install the hash-checked requirements")
    out.wait_for("still running: [ 97/150] agent: Install the hash-checked requirements")
    beat.stop()
    said = len(out.lines)
    beat.start("[ 98/150] agent: next")
    out.wait_for("[ 98/150] agent: next")
    assert all("97/150" in line for line in out.lines[:said])
    assert not any("97/150" in line for line in out.lines[said:]), out.lines


def test_a_step_shorter_than_the_interval_says_nothing() -> None:
    out = Lines()
    beat = Heartbeat(every=0.2, say=out.say)
    started = time.monotonic()
    beat.start("quick step")
    beat.stop()
    beat.start("slow step")
    out.wait_for("slow step")
    assert not any("quick step" in line for line in out.lines), out.lines
    assert time.monotonic() - started >= 0.2   # the first line comes after one interval, not before
