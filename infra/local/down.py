"""`down`: remove everything of one local environment, found by its names (no state file).

Safe to repeat. Caches under /var/cache/voicestack (base image, Go build, artifacts, wheels,
apt cache) and `.stack/<env>/secrets.json` are kept; everything else of the env goes. The last
environment's `down` also restores what the first `up` changed on the host (hostsettings).
"""
from __future__ import annotations

import shutil
import subprocess
from typing import Callable

from infra import outputs, steps
from infra.local import firewall, host, hostsettings, machines, network
from infra.local.names import EnvNames


def down(env: str, progress: steps.Progress | None = None) -> list[str]:
    """Remove the environment; returns what was removed (empty when nothing was there)."""
    host.require_root()
    progress = progress or steps.Progress()
    names = EnvNames(env)
    removed: list[str] = []

    def step(fn: Callable[[], list[str]]) -> Callable[[], str]:
        def run() -> str:
            done = fn()
            removed.extend(done)
            return ", ".join(done) if done else "nothing to remove"
        return run

    steps.run(progress, [
        ("machines", step(lambda: machines.stop(names))),
        ("host services", step(lambda: _stop_services(names))),
        ("cloud firewall", step(lambda: firewall.remove(names))),
        ("networks", step(lambda: network.remove(names))),
        ("mounts", step(lambda: _unmount(names))),
        ("files", step(lambda: _remove_files(names))),
        ("host settings", step(lambda: [r for r in [hostsettings.restore_forwarding(names)] if r])),
    ], errors=(host.LocalEnvError,))
    return removed


def _stop_services(names: EnvNames) -> list[str]:
    # Every host service names the env's run or state dir on its command line.
    pids = sorted(set(host.pids_matching(f"{names.run_dir}/") + host.pids_matching(f"{names.state_dir}/")))
    pids = [p for p in pids if "systemd-nspawn" not in host.cmdline(p)]
    labels = [f"{host.cmdline(p).split(' ')[0].rsplit('/', 1)[-1]} ({p})" for p in pids]
    host.stop_pids(pids, grace_s=5)
    return labels


def mounts_of(names: EnvNames) -> list[str]:
    found = []
    with open("/proc/self/mountinfo") as fh:
        for line in fh:
            point = line.split()[4]
            if any(point == str(d) or point.startswith(f"{d}/") for d in (names.state_dir, names.run_dir)):
                found.append(point)
            elif point.startswith("/run/netns/") and point[len("/run/netns/"):].startswith(names.netns_prefix):
                found.append(point)
    return found


def _unmount(names: EnvNames) -> list[str]:
    done = []
    for point in sorted(mounts_of(names), key=len, reverse=True):
        if subprocess.run(["umount", point], capture_output=True).returncode == 0 or \
                subprocess.run(["umount", "-l", point], capture_output=True).returncode == 0:
            done.append(f"mount {point}")
    return done


def _remove_files(names: EnvNames) -> list[str]:
    done = []
    for d in (names.state_dir, names.run_dir):
        if d.exists():
            shutil.rmtree(d, ignore_errors=True)
            done.append(str(d))
    if outputs.remove(names.env):
        done.append(str(outputs.path_for(names.env)))
    return done
