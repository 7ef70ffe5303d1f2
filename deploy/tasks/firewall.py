"""Host firewall: nftables, default-deny inbound, opened only by the spec's host_firewall rules."""
from __future__ import annotations

import ipaddress

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.operations import systemd

from deploy.inventory import DeployInputError, NodeVars
from deploy.tasks._ops import install_validated, put_rendered

STAGED = "/etc/nftables.conf.staged"
LIVE = "/etc/nftables.conf"


def _match(sources: tuple[str, ...]) -> list[str]:
    """nft source matches for a rule: [] = anyone; else one 'ip saddr {…}' / 'ip6 saddr {…}' per family."""
    nets = [ipaddress.ip_network(s, strict=False) for s in sources]
    if any(n.prefixlen == 0 for n in nets):
        return [""]
    v4 = [str(n) for n in nets if n.version == 4]
    v6 = [str(n) for n in nets if n.version == 6]
    out = []
    if v4:
        out.append(f"ip saddr {{ {', '.join(v4)} }} ")
    if v6:
        out.append(f"ip6 saddr {{ {', '.join(v6)} }} ")
    return out


def firewall_vars(vs: NodeVars) -> dict:
    """The rendered rules: one line per (rule, address family); pure, used by tests."""
    ssh = vs.spec.port("ssh")
    if not any(r.protocol == "tcp" and r.start <= ssh.start <= r.end for r in vs.spec.host_firewall):
        raise DeployInputError(f"the host firewall would not let SSH ({ssh.label}) in, locking the deploy out; "
                             "set adminCidrs to the deploying machine's address")
    rules = []
    for r in vs.spec.host_firewall:
        for m in _match(r.sources):
            rules.append({"line": f"{m}{r.protocol} dport {r.port_range} accept",
                          "comment": r.description.split(":")[0]})
    return {"rules": rules, "env": vs.spec.env}


@deploy("Host firewall (nftables)")
def firewall():
    vs: NodeVars = host.data.vs
    put_rendered(name=f"Render {STAGED}", service="firewall", template="nftables.conf.j2", dest=STAGED, mode="600",
                 variables=firewall_vars(vs))
    install_validated(name=f"Validate (nft -c), load and install {LIVE}", src=STAGED, dest=LIVE,
                      check="nft -c -f {path}", apply="nft -f {path}", mode="600")
    # nftables.service loads the live file at boot.
    systemd.service(name="Enable nftables at boot", service="nftables.service", enabled=True)
