"""The order of the deploy; every task decides its own details from the spec."""
from __future__ import annotations

from pyinfra import host

from deploy.tasks.agent import agent
from deploy.tasks.base import base
from deploy.tasks.caddy import caddy
from deploy.tasks.coturn import coturn
from deploy.tasks.edge import edge
from deploy.tasks.firewall import firewall
from deploy.tasks.livekit import livekit
from deploy.tasks.redis import redis
from infra.spec import Role

# (host name, op hash) -> task label. In API mode pyinfra pairs the n-th operation of every
# host, so with different task lists per host its shared op names mix; this keeps each
# host's own label for the progress output.
TASK_OF: dict[tuple[str, str], str] = {}


def _run(label: str, task) -> None:
    before = len(host.op_hash_order)
    task()
    for op_hash in host.op_hash_order[before:]:
        TASK_OF[(host.name, op_hash)] = label


def converge() -> None:
    """All tasks for the current host, in order (run by pyinfra once per host)."""
    vs = host.data.vs
    _run("base", base)
    _run("firewall", firewall)
    if vs.node.has(Role.REDIS):
        _run("redis", redis)
    if vs.node.has(Role.LIVEKIT):
        _run("livekit", livekit)
        _run("caddy", caddy)        # before coturn: it obtains the TURN certificate
        if vs.spec.sni_split:
            _run("edge", edge)
    if vs.node.has(Role.TURN):
        _run("coturn", coturn)
    if vs.node.has(Role.AGENT):
        _run("agent", agent)       # last: its worker connects to this node's LiveKit
