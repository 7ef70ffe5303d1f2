"""The machines' host process (infra/local/supervisor.py): starts nspawn again on a reboot, never otherwise.

The decision is tested as a pure function; the loop runs for real with a small stand-in for
systemd-nspawn (a shell script that exits like nspawn does); the real nspawn is in the e2e
chaos suite (tests/e2e/test_chaos.py).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from infra.local import supervisor
from infra.local.supervisor import MAX_REBOOTS, REBOOT_STATUS, REBOOT_WINDOW_S, decide

SCRIPT = Path(supervisor.__file__)


@pytest.mark.parametrize("status,again", [(REBOOT_STATUS, True), (0, False), (1, False), (137, False)],
                         ids=["reboot-133", "poweroff-0", "failure-1", "killed-137"])
def test_only_a_reboot_starts_the_machine_again(status: int, again: bool) -> None:
    assert decide(status, [], now=1000.0, stopping=False).again is again


def test_a_stop_request_wins_over_a_reboot() -> None:
    d = decide(REBOOT_STATUS, [], now=1000.0, stopping=True)
    assert not d.again and "stopped on request" in d.reason


def test_a_boot_loop_is_left_off_but_old_reboots_are_forgotten() -> None:
    now = 10_000.0
    recent = [now - i for i in range(MAX_REBOOTS)]
    looping = decide(REBOOT_STATUS, recent, now, stopping=False)
    assert not looping.again and f"rebooted {MAX_REBOOTS + 1} times" in looping.reason
    old = [now - REBOOT_WINDOW_S - 1 - i for i in range(MAX_REBOOTS)]
    assert decide(REBOOT_STATUS, old + recent[:MAX_REBOOTS - 1], now, stopping=False).again


def test_a_signal_death_is_reported_like_a_shell_does() -> None:
    assert supervisor.exit_status(-signal.SIGKILL) == 137 and supervisor.exit_status(133) == 133


def _run(args: list[str], **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-I", str(SCRIPT), "--", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True, **kw)


def test_the_loop_reruns_a_rebooting_child_and_ends_with_its_status(tmp_path: Path) -> None:
    count = tmp_path / "boots"
    # Boots 1 and 2 "reboot" (exit 133), boot 3 "powers off" (exit 0) - what nspawn does.
    child = (f'n=$(cat {count} 2>/dev/null || echo 0); echo $((n+1)) > {count}; '
             f'[ "$n" -lt 2 ] && exit {REBOOT_STATUS}; exit 0')
    proc = _run(["sh", "-c", child])
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert count.read_text().strip() == "3"
    assert out.count("rebooted (nspawn exited 133); starting it again") == 2
    assert "powered off; not starting it again" in out


def test_a_failing_child_is_not_started_again(tmp_path: Path) -> None:
    proc = _run(["sh", "-c", "exit 7"])
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 7 and "stopped with status 7" in out


def test_sigterm_reaches_the_child_exactly_once_and_ends_the_loop(tmp_path: Path) -> None:
    """What `down` does: SIGTERM to the supervisor's process group, and maybe once more to its pid.
    nspawn treats a second SIGTERM as "kill the machine now", so it must see one."""
    seen, started = tmp_path / "sigterms", tmp_path / "started"
    child = (f"trap 'echo x >> {seen}; sleep 0.5; exit {REBOOT_STATUS}' TERM; "
             f"echo go >> {started}; while :; do sleep 0.1; done")
    proc = _run(["sh", "-c", child])
    deadline = time.monotonic() + 20
    while not started.exists():
        assert time.monotonic() < deadline, "the child never started"
        time.sleep(0.05)  # poll interval of the deadline loop
    os.killpg(proc.pid, signal.SIGTERM)
    os.kill(proc.pid, signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
    # Even though the child ended with 133 (as nspawn would after a reboot), it is not started again.
    assert seen.read_text().count("x") == 1, out
    assert started.read_text().count("go") == 1 and "stopped on request" in out
    assert proc.returncode == REBOOT_STATUS


def test_usage_without_a_command() -> None:
    proc = subprocess.run([sys.executable, "-I", str(SCRIPT)], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and "usage" in proc.stderr


MOUNTINFO = """\
25 30 0:22 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
26 25 0:23 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
34 25 0:31 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
35 25 0:32 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""


def test_the_machines_cgroups_are_found_in_both_hierarchies() -> None:
    from infra.local import machines

    assert machines.cgroup_mounts(MOUNTINFO) == (Path("/sys/fs/cgroup/systemd"), Path("/sys/fs/cgroup/unified"))
    unified_host = "30 1 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n"
    assert machines.cgroup_mounts(unified_host) == (None, Path("/sys/fs/cgroup"))
