"""Specs and outputs for unit tests (operator venv): built the way the provisioners build them."""
from __future__ import annotations

from typing import Any

from infra import outputs
from infra.config import parse
from infra.spec import EnvSpec, derive, port_problems

ADMIN = "198.51.100.7/32"
PUBLIC = ["203.0.113.10", "203.0.113.11", "203.0.113.12"]
#: Interface addresses of nat nodes (the cloud maps PUBLIC[i] to INTERFACE[i]).
INTERFACE = ["172.31.9.10", "172.31.9.11", "172.31.9.12"]
SECRET = "s" * 40
TURN_SECRET = "t" * 40
TOKEN_KEY = "k" * 40
CALL_PASSWORD = "p" * 24
ART = {"livekit": {"version": "1.13.5", "url": "http://198.18.0.1/livekit.tar.gz", "sha256": "ab" * 32},
       "caddy": {"version": "2.11.4", "url": "http://198.18.0.1/caddy.tar.gz", "sha512": "cd" * 64}}
ACME = "https://198.18.0.1:14000/dir"
#: The load balancer's public address, for specs that have one (clusters).
BALANCER = "203.0.113.5"


def spec_of(nodes: int = 1, env: str = "t", **changes: Any) -> EnvSpec:
    """A local-provider spec (no operator CIDR added: the tests name their admin network)."""
    raw = {"provider": "local", "domain": "example.test", "adminCidrs": [ADMIN], "acmeCa": "local",
           "nodeCount": nodes, **changes}
    cfg = parse(raw, env=env)
    assert not port_problems(cfg), port_problems(cfg)
    return derive(cfg)


def outputs_for(spec: EnvSpec, *, token_key: str = TOKEN_KEY, call_password: str = CALL_PASSWORD,
                **deploy: Any) -> outputs.Outputs:
    nodes = [outputs.NodeOut(name=n.name, public_ip=PUBLIC[n.index], private_ip=n.private_ip, ssh_user="root",
                             ssh_key="/dev/null", roles=sorted(r.value for r in n.roles), network=n.network,
                             interface_ip=INTERFACE[n.index] if n.network == "nat" else None) for n in spec.nodes]
    inputs = outputs.DeployInputs(**{"acme_directory": ACME, "artifacts": ART, **deploy})
    return outputs.assemble(spec, nodes, api_secret=SECRET, turn_secret=TURN_SECRET, token_key=token_key or "x",
                            call_password=call_password or "x",
                            deploy=inputs, balancer_ip=BALANCER if spec.balancer else None)


# ---- one node's deploy variables, and the agent task's files rendered from them ----------------

def node(nodes: int = 1, name: str = "node-1", **changes: Any) -> tuple[EnvSpec, Any]:
    """The spec of `nodes` nodes with `changes`, and node `name`'s deploy variables."""
    from deploy.inventory import node_vars  # deploy imports infra: kept out of support's import time
    spec = spec_of(nodes, **changes)
    return spec, node_vars(outputs_for(spec))[name]


def env_lines(vs: Any) -> dict[str, str]:
    """The agent's env file as a dict (what the units read)."""
    from deploy.render import render
    from deploy.tasks import agent
    text = render("agent", "agent.env.j2", agent.agent_vars(vs))
    return dict(line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#"))


def agent_unit(vs: Any, name: str) -> str:
    """The rendered unit file of agent service `name`."""
    from deploy.render import render
    from deploy.tasks import agent
    return render("agent", agent.unit_template(name), agent.unit_vars(agent.agent_vars(vs), name))
