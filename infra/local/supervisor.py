"""The host process of one local machine: runs systemd-nspawn, and runs it again when the machine reboots.

    python3 -I infra/local/supervisor.py [--cgroup DIR]... -- systemd-nspawn -b -D <rootfs> --keep-unit ...

A cloud server that reboots comes back by itself. systemd-nspawn with --keep-unit exits with
status 133 when the machine inside reboots (EXIT_FORCE_RESTART in systemd's nspawn.c, which
Debian's systemd-nspawn@.service turns into a restart with RestartForceExitStatus=133). This
host has no systemd as PID 1 to do that, so this process does: it starts nspawn again on 133
and ends, with nspawn's own status, on anything else (0 after `systemctl poweroff` inside; a
failure status after the plug was pulled, i.e. the machine's PID 1 was killed; nspawn errors).

--cgroup: nspawn starts in these cgroup directories (one per hierarchy, created when missing).
nspawn puts the machine below the cgroup it starts in, so without its own one every machine on
this host would share one tree and each machine's systemd would find the others' processes
(as pid 0) in its units' cgroups: it then cannot kill what a dead main process leaves behind
(e.g. nginx workers holding port 443 after `kill -9` of the master).

SIGTERM/SIGINT are passed on to nspawn once (nspawn then shuts the machine down cleanly) and end
the loop. nspawn runs in a process group of its own, so a signal to this process's group reaches
nspawn only through here: nspawn treats a second SIGTERM as "terminate immediately".

Standard library only, run with `python3 -I` (no project imports, no environment): it outlives
the `up` that started it, and its command line (this file's path and the rootfs) is how `up`,
`down` and the power commands find it (infra/local/machines.py).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Callable, Sequence

#: nspawn's exit status when the machine asked for a reboot (with --keep-unit).
REBOOT_STATUS = 133
#: A machine that reboots more often than this within the window is left off: a boot loop
#: would otherwise burn the host's CPU for ever (a VPS provider stops such a server too).
MAX_REBOOTS = 10
REBOOT_WINDOW_S = 300.0
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
MARK = "voicestack supervisor:"


@dataclass(frozen=True)
class Decision:
    again: bool      # start nspawn again
    reason: str      # one line for the console log


def decide(status: int, reboots: Sequence[float], now: float, stopping: bool) -> Decision:
    """What to do when nspawn ended with `status`; `reboots` are the monotonic times of earlier restarts."""
    if stopping:
        return Decision(False, f"stopped on request (nspawn exited {status})")
    if status != REBOOT_STATUS:
        how = "powered off" if status == 0 else f"stopped with status {status}"
        return Decision(False, f"the machine {how}; not starting it again")
    recent = [t for t in reboots if now - t <= REBOOT_WINDOW_S]
    if len(recent) >= MAX_REBOOTS:
        return Decision(False, f"the machine rebooted {len(recent) + 1} times within {REBOOT_WINDOW_S:.0f}s; "
                               "leaving it off (see the console log above; power it on when fixed)")
    return Decision(True, "the machine rebooted (nspawn exited 133); starting it again")


def exit_status(returncode: int) -> int:
    """A shell-style status for the child's returncode (a signal -N becomes 128+N)."""
    return 128 - returncode if returncode < 0 else returncode


def _enter_cgroups(dirs: Sequence[str]) -> None:
    """In the child before exec: move this process into each cgroup directory."""
    for d in dirs:
        with open(f"{d}/cgroup.procs", "w") as fh:
            fh.write("0\n")  # 0 = the writing process


def supervise(cmd: Sequence[str], say: Callable[[str], None] | None = None, cgroups: Sequence[str] = ()) -> int:
    """Run `cmd` until it ends with something other than a reboot (or we are told to stop)."""
    say = say or (lambda msg: print(f"{MARK} {msg}", flush=True))
    stopping = False
    child: subprocess.Popen[bytes] | None = None

    def on_stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        if stopping:
            return  # nspawn has its signal already; a second one would kill the machine outright
        stopping = True
        if child is not None and child.poll() is None:
            child.send_signal(signum)

    for sig in STOP_SIGNALS:
        signal.signal(sig, on_stop)
    reboots: list[float] = []
    while True:
        # No stop request may slip between the check and the start of a new nspawn.
        signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            if stopping:
                return 0
            for d in cgroups:
                os.makedirs(d, exist_ok=True)

            def in_child() -> None:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
                _enter_cgroups(cgroups)

            child = subprocess.Popen(list(cmd), start_new_session=True, preexec_fn=in_child)
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
        status = exit_status(child.wait())
        decision = decide(status, reboots, time.monotonic(), stopping)
        say(decision.reason)
        if not decision.again:
            return status
        reboots.append(time.monotonic())


def main(argv: list[str]) -> int:
    if "--" not in argv or argv.index("--") == len(argv) - 1:
        print(f"usage: {sys.argv[0]} [--cgroup DIR]... -- systemd-nspawn ...", file=sys.stderr)
        return 2
    own, cmd = argv[:argv.index("--")], argv[argv.index("--") + 1:]
    cgroups = [own[i + 1] for i, a in enumerate(own[:-1]) if a == "--cgroup"]
    return supervise(cmd, cgroups=cgroups)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
