"""Probes from the operator's side of the internet: what a client out there would see.

In a local environment they run inside its client network namespace (`client_netns`), so the
traffic really crosses the emulated cloud firewall; elsewhere on this machine. The verify
suite, `make preflight` and the benchmarks use them as a library.
"""
from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

from infra.outputs import ROOT, Outputs
from infra.probes import netcond


def in_client_side(outputs: Outputs, argv: list[str], condition: str = "normal") -> list[str]:
    """`argv` run on the internet side: inside the client namespace of a local environment (the one
    of network `condition`, infra/probes/netcond.py)."""
    if condition not in netcond.RULES:
        raise ValueError(f"no network condition {condition!r}; known: {', '.join(netcond.RULES)}")
    netns = outputs.netns_for(condition)
    return ["ip", "netns", "exec", netns, *argv] if netns else list(argv)


def agent_dispatch(outputs: Outputs) -> str | None:
    """The agent a probe's token dispatches to its room: the stack's `agentName` when set (the agent
    then joins only rooms that ask for it, so a call without it would wait for an agent forever),
    else None (the agent joins every room)."""
    return outputs.spec.config.agent_name or None


#: Seconds a probe process may take in all (its own `timeout` argument bounds each network wait).
PROBE_DEADLINE = 120


def run(outputs: Outputs, probe: str, **args: Any) -> dict[str, Any]:
    """Run one probe of infra.probes.outside from the client side; its JSON result. `args` go to
    the probe as they are (e.g. host, port, timeout)."""
    argv = in_client_side(outputs, [sys.executable, "-m", "infra.probes.outside", probe, json.dumps(args)])
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=PROBE_DEADLINE)
    if proc.returncode != 0:
        raise RuntimeError(f"probe {probe} failed to run: {' '.join(argv)}\n{proc.stderr}")
    return json.loads(proc.stdout)
