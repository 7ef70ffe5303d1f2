"""The host side: commands, required tools, background processes with pid files.

The host has no systemd as PID 1, so host services are plain background processes whose
pid files live under /run/voicestack/<env>/ and whose command lines name that directory, so
`down` can find them even without the pid files.
"""
from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

from agent.locks import exclusive

# tool -> Debian package that provides it
TOOLS = {
    "systemd-nspawn": "systemd-container",
    "debootstrap": "debootstrap",
    "nft": "nftables",
    "ip": "iproute2",
    "pebble": "pebble",
    "apt-cacher-ng": "apt-cacher-ng",
    "dnsmasq": "dnsmasq-base",
    "haproxy": "haproxy",
    "go": "golang (or a Go toolchain in PATH / /usr/local/go/bin)",
    "ssh": "openssh-client",
    "ssh-keygen": "openssh-client",
    "curl": "curl",
}

# The one list of host packages (scripts/install_host_deps.sh reads the same file).
HOST_PACKAGES = tuple(line.strip() for line in (Path(__file__).parent / "packages.txt").read_text().splitlines()
                      if line.strip() and not line.startswith("#"))


class LocalEnvError(Exception):
    """A problem the operator can act on; the message says what and what to do."""


def require_root() -> None:
    if os.geteuid() != 0:
        raise LocalEnvError("the local environment needs root (network namespaces, bridges, nftables, "
                            "systemd-nspawn); run it with sudo")


def which(tool: str) -> str | None:
    found = shutil.which(tool)
    if found is None and tool == "go" and Path("/usr/local/go/bin/go").exists():
        found = "/usr/local/go/bin/go"
    return found


def require_tools(tools: Iterable[str]) -> None:
    missing = [t for t in tools if which(t) is None]
    if missing:
        pkgs = sorted({TOOLS.get(t, t) for t in missing})
        raise LocalEnvError(f"missing tools: {', '.join(missing)}; install them with "
                            f"\"apt-get install {' '.join(p.split(' ')[0] for p in pkgs)}\" "
                            f"(packages: {', '.join(pkgs)})")


def run(cmd: Sequence[str], *, check: bool = True, input: str | None = None, env: dict | None = None,
        timeout: float | None = None, what: str = "") -> subprocess.CompletedProcess:
    """Run a command; on failure raise with the command ready to paste and its stderr."""
    proc = subprocess.run(list(cmd), input=input, text=True, capture_output=True, env=env, timeout=timeout)
    if check and proc.returncode != 0:
        raise LocalEnvError(f"failed to {what or 'run a command'}: {shlex.join(cmd)} exited {proc.returncode}\n"
                            f"{proc.stderr.strip() or proc.stdout.strip()}")
    return proc


@contextlib.contextmanager
def cache_lock(name: str) -> Iterator[None]:
    """Serialise builds into the shared cache (two envs coming up at once build it once)."""
    from infra.local.names import CACHE
    CACHE.mkdir(parents=True, exist_ok=True)
    with exclusive(CACHE / f".{name}.lock"):
        yield


def wait_until(what: str, probe: Callable[[], bool], deadline_s: float, interval: float = 0.2) -> float:
    """Poll `probe` until it is true; raise after the deadline. Returns the seconds it took."""
    start = time.monotonic()
    while True:
        if probe():
            return time.monotonic() - start
        if time.monotonic() - start > deadline_s:
            raise LocalEnvError(f"timed out after {deadline_s:.0f}s waiting for {what}")
        time.sleep(interval)


# ---- processes ------------------------------------------------------------------------------

def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is not alive
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def read_pid(pidfile: Path) -> int | None:
    try:
        pid = int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if pid_alive(pid) else None


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def pids_matching(needle: str) -> list[int]:
    """Processes whose command line contains `needle` (a path of one env, never a bare name)."""
    me = os.getpid()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != me and needle in cmdline(int(entry.name)):
            found.append(int(entry.name))
    return found


def start_daemon(name: str, cmd: Sequence[str], run_dir: Path, log: Path, env: dict | None = None,
                 cwd: str | None = None) -> int:
    """Start `cmd` in the background (own session, output to `log`), record its pid file."""
    run_dir.mkdir(parents=True, exist_ok=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen(list(cmd), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, env=env, cwd=cwd)
    (run_dir / f"{name}.pid").write_text(f"{proc.pid}\n")
    return proc.pid


def running(name: str, run_dir: Path) -> int | None:
    return read_pid(run_dir / f"{name}.pid")


def stop_pids(pids: Iterable[int], sig: int = signal.SIGTERM, grace_s: float = 10.0) -> None:
    """Signal each pid (its whole process group when it leads one), then SIGKILL stragglers."""
    pids = [p for p in pids if pid_alive(p)]
    for pid in pids:
        _signal(pid, sig)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(pid_alive(p) for p in pids):
        time.sleep(0.1)
    for pid in pids:
        if pid_alive(pid):
            _signal(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(pid_alive(p) for p in pids):
        time.sleep(0.05)


def children(pid: int) -> list[int]:
    """Direct children of `pid` (from /proc; empty when it is gone)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return found


def signal_pid(pid: int, sig: int) -> None:
    """Send `sig` to `pid` (its whole process group when it leads one); a gone pid is no error."""
    _signal(pid, sig)


def _signal(pid: int, sig: int) -> None:
    try:
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except ProcessLookupError:
        pass


def port_open_tcp(host: str, port: int, timeout: float = 0.5) -> bool:
    import socket
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False
