"""The order of the deploy: its phases, and each host's tasks in the converge phase.

Only routing lives here; every task decides its own details from the spec.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from pyinfra import host

from deploy.tasks import certificates
from deploy.tasks.agent import agent
from deploy.tasks.base import base
from deploy.tasks.caddy import caddy
from deploy.tasks.coturn import coturn
from deploy.tasks.edge import edge
from deploy.tasks.firewall import firewall
from deploy.tasks.livekit import livekit
from deploy.tasks.redis import redis
from infra.spec import Role

# (host name, op hash) -> task label, for the progress report. With different task lists per
# host, pyinfra's API mode orders and names operations across hosts by call-site line numbers
# (pyinfra-dev/pyinfra#410), so each host's own label is recorded as its operations are added.
TASK_OF: dict[tuple[str, str], str] = {}


def labelled(label: str, task: Callable[[], None]) -> None:
    before = len(host.op_hash_order)
    task()
    for op_hash in host.op_hash_order[before:]:
        TASK_OF[(host.name, op_hash)] = label


def converge() -> None:
    """All tasks for the current host, in order (run by pyinfra once per host)."""
    vs = host.data.vs
    labelled("base", base)
    labelled("firewall", firewall)
    if vs.node.has(Role.REDIS):
        labelled("redis", redis)
    if vs.node.has(Role.LIVEKIT):
        labelled("livekit", livekit)
        labelled("caddy", caddy)        # before coturn: it obtains the TURN certificate
        if vs.spec.sni_split:
            labelled("edge", edge)
    if vs.node.has(Role.TURN):
        labelled("coturn", coturn)
    if vs.node.has(Role.AGENT):
        labelled("agent", agent)       # last: its worker connects to this node's LiveKit


@dataclass(frozen=True)
class Phase:
    """One pass over some hosts. `prepare` reads what earlier phases made (on every host) and
    returns the keyword arguments of `run`; the phase is skipped when `hosts` selects none."""

    name: str
    run: Callable[..., None]
    hosts: Callable[[list[Any]], list[Any]] = list
    prepare: Callable[[list[Any]], dict[str, Any]] | None = None


def _share(**pems: Any) -> None:
    labelled("certificates", lambda: certificates.share(**pems))


PHASES: tuple[Phase, ...] = (
    Phase("converge", converge),
    # With several nodes: the certificates go from the node that obtained them to the others.
    Phase("share certificates", _share, hosts=certificates.receivers, prepare=certificates.collect),
)
