"""`python -m infra.local power`: what a cloud console's power buttons do, for one local machine.

off   = the plug is pulled: the machine's PID 1 is killed from the host, nothing inside shuts
        down (unflushed writes are lost, services get no stop), and it stays off;
on    = it boots again from its own disk, like a VPS after a power cut, and answers SSH;
cycle = off, then on.
The machine is found by the env's names and the node by the env's outputs (no config is read).
"""
from __future__ import annotations

import time

from infra import outputs
from infra.local import host, machines
from infra.local.names import EnvNames
from infra.spec import Node
from infra.steps import Progress

ACTIONS = ("off", "on", "cycle")


def node_of(env: str, node_name: str) -> Node:
    spec = outputs.read(env).spec
    for node in spec.nodes:
        if node.name == node_name:
            return node
    raise host.LocalEnvError(f"env {env} has no node {node_name!r}; its nodes are "
                             f"{', '.join(n.name for n in spec.nodes)}")


def power(env: str, node_name: str, action: str, progress: Progress | None = None) -> str:
    """Do `action` (off|on|cycle) to one machine; returns a one-line summary."""
    if action not in ACTIONS:
        raise host.LocalEnvError(f"power action {action!r} is not one of {', '.join(ACTIONS)}")
    host.require_root()
    progress = progress or Progress.quiet()
    names, node = EnvNames(env), node_of(env, node_name)
    done = []
    if action in ("off", "cycle"):
        t0 = time.monotonic()
        was_on = machines.power_off(names, node)
        done.append(f"powered off in {time.monotonic() - t0:.1f}s" if was_on else "was already off")
        progress.line(f"{node_name}: {done[-1]}")
    if action in ("on", "cycle"):
        boot_s = machines.power_on(names, node)
        done.append("was already on" if boot_s is None else f"booted, SSH answered after {boot_s:.1f}s")
        progress.line(f"{node_name}: {done[-1]}")
    return f"{env}/{node_name}: {'; '.join(done)}"
