"""`down`: remove everything of one local environment, found by its names (no state file).

Safe to repeat. Caches under /var/cache/voicestack (base image, Go build, artifacts, wheels,
apt cache) and `.stack/<env>/secrets.json` are kept; everything else of the env goes.
"""
from __future__ import annotations

import shutil
import subprocess
import time
from typing import Callable

from infra import outputs
from infra.local import firewall, host, machines, network
from infra.local.names import EnvNames


def down(env: str, print_fn: Callable[[str], None] = print) -> list[str]:
    host.require_root()
    names = EnvNames(env)
    start = time.monotonic()
    removed: list[str] = []

    def step(label: str, fn: Callable[[], list[str]]) -> None:
        t0 = time.monotonic()
        done = fn()
        removed.extend(done)
        print_fn(f"[{time.monotonic() - start:6.1f}s] {label}: "
                 f"{', '.join(done) if done else 'nothing to remove'} ({time.monotonic() - t0:.1f}s)")

    step("machines", lambda: machines.stop(names))
    step("host services", lambda: _stop_services(names))
    step("cloud firewall", lambda: firewall.remove(names))
    step("networks", lambda: network.remove(names))
    step("mounts", lambda: _unmount(names))
    step("files", lambda: _remove_files(names))
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
    out = outputs.path_for(names.env)
    if out.exists():
        out.unlink()
        done.append(str(out))
    return done
