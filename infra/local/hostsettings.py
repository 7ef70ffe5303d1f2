"""What a local environment changes on the host itself, and how the last `down` gives it back.

  * net.ipv4.ip_forward: the host routes between the machines and the emulated internet, so
    `up` turns it on. The value it had before the first environment came up is recorded in
    /run/voicestack/.host/ (tmpfs: a host reboot resets the sysctl and the record together);
    the `down` of the last environment writes it back.
  * Machine state is root's alone: /var/lib/voicestack (machines' roots, ACME keys, SSH keys) and
    /run/voicestack (pid files, DNS and apt-proxy configs) and each env's directories are 0700.
  * The packaged coturn and apt-cacher-ng services stay disabled: the local environment runs its
    own instances with its own configs, and Debian's coturn config has no authentication (an
    open relay into private ranges and the metadata address on the next boot of the host).
"""
from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path
from typing import Iterator

from agent.locks import exclusive
from infra.local import host
from infra.local.names import RUN, STATE, EnvNameError, EnvNames

HOST_DIR_NAME = ".host"   # under /run/voicestack: the record and the lock (not an env name)
PROC_SYS = Path("/proc/sys")
FORWARD_KEY = "net.ipv4.ip_forward"
PACKAGED_DAEMONS = ("coturn.service", "apt-cacher-ng.service", "haproxy.service")
#: `systemctl is-enabled` answers that mean the unit starts at boot (or with what wants it).
STARTS_AT_BOOT = frozenset({"enabled", "enabled-runtime", "alias", "indirect", "linked", "linked-runtime"})


@contextlib.contextmanager
def _host_lock(run: Path) -> Iterator[Path]:
    """One env at a time changes or restores host settings (two ups/downs may run at once)."""
    d = run / HOST_DIR_NAME
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    with exclusive(d / "lock"):
        yield d


def other_envs(names: EnvNames, run: Path = RUN) -> list[str]:
    """Other local environments on this host (each has a run directory while it exists)."""
    found = []
    for d in run.iterdir() if run.is_dir() else []:
        if not d.is_dir() or d.name == names.env:
            continue
        try:
            EnvNames(d.name)
        except EnvNameError:
            continue  # .host and anything that is not an env
        found.append(d.name)
    return sorted(found)


def private_dirs(*dirs: Path) -> None:
    """Create `dirs` (and parents) and make each 0700, also when they existed with wider modes."""
    for d in dirs:
        d.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(d, 0o700)


def ensure_private_state(names: EnvNames) -> None:
    private_dirs(STATE, RUN, names.state_dir, names.run_dir)


def enable_forwarding(names: EnvNames, run: Path = RUN, proc_sys: Path = PROC_SYS, key: str = FORWARD_KEY) -> None:
    """Turn IPv4 forwarding on, recording what it was when no environment had it on yet.

    With other environments already up (and no record: they predate it), the original value is
    unknown, so nothing is recorded and forwarding stays on after the last `down`."""
    sysctl = proc_sys / key.replace(".", "/")
    with _host_lock(run) as d:
        (run / names.env).mkdir(parents=True, exist_ok=True, mode=0o700)  # this env counts as up from here
        record = d / key
        if not record.exists() and not other_envs(names, run):
            record.write_text(sysctl.read_text().strip() + "\n")
        sysctl.write_text("1")


def restore_forwarding(names: EnvNames, run: Path = RUN, proc_sys: Path = PROC_SYS,
                       key: str = FORWARD_KEY) -> str | None:
    """Write back the recorded value when no other environment is left; what was done, or None."""
    with _host_lock(run) as d:
        record = d / key
        if not record.exists() or other_envs(names, run):
            return None
        before = record.read_text().strip()
        (proc_sys / key.replace(".", "/")).write_text(before)
        record.unlink()
        return f"{key} = {before} (as before the first up)"


def disable_packaged_daemons(units: tuple[str, ...] = PACKAGED_DAEMONS, root: Path | None = None) -> list[str]:
    """Disable (and, with systemd running, stop) the packaged units that must not run on the host.

    `root`: operate on another root directory (systemctl --root), e.g. in a test. Returns the
    units that were disabled now."""
    if host.which("systemctl") is None:
        return []
    base = ["systemctl"] + ([f"--root={root}"] if root is not None else [])
    done = []
    for unit in units:
        state = subprocess.run([*base, "is-enabled", unit], capture_output=True, text=True).stdout.strip()
        if state not in STARTS_AT_BOOT:
            continue  # disabled, masked, static or not installed
        host.run([*base, "disable", "--quiet", unit], what=f"disable the packaged {unit} on this host")
        if root is None and Path("/run/systemd/system").is_dir():
            subprocess.run(["systemctl", "stop", unit], capture_output=True)
        done.append(unit)
    return done
