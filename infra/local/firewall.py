"""The cloud firewall: one nftables table per env on the host, in the path to the machines.

Inbound to the machines (from the internet side, and from the host itself, whose traffic
leaves from the internet-side address) only `spec.cloud_firewall` is accepted, plus replies;
everything else is dropped. Outbound from the machines may reach the internet side (as on a
cloud) but nothing beyond the host: no packet of the env is forwarded to the host's real
uplinks. Towards the host itself only the env's services are open.
"""
from __future__ import annotations

import ipaddress

from infra.local import host
from infra.local.names import ACME_MGMT_PORT, ACME_PORT, APT_PROXY_PORT, DNS_PORT, HTTP_PORT, EnvNames
from infra.spec import EnvSpec, FirewallRule


def _rule(r: FirewallRule) -> list[str]:
    ports = str(r.start) if r.start == r.end else f"{r.start}-{r.end}"
    comment = r.description.replace('"', "'")[:120]
    out = []
    v4 = [s for s in r.sources if ipaddress.ip_network(s, strict=False).version == 4]
    v6 = [s for s in r.sources if ipaddress.ip_network(s, strict=False).version == 6]
    for fam, srcs in (("ip", v4), ("ip6", v6)):
        if srcs:
            out.append(f'{fam} saddr {{ {", ".join(srcs)} }} {r.protocol} dport {ports} accept comment "{comment}"')
    return out


def render(names: EnvNames, spec: EnvSpec) -> str:
    p = names.link_prefix
    pub, cl = names.public_bridge, names.client_link
    inbound = [line for r in spec.cloud_firewall for line in _rule(r)]
    services = ", ".join(str(x) for x in (APT_PROXY_PORT, HTTP_PORT, ACME_PORT, ACME_MGMT_PORT))
    body = "\n".join(f"    {line}" for line in inbound)
    t = names.nft_table
    return f"""table inet {t}
delete table inet {t}
table inet {t} {{
  comment "voicestack env {names.env}: cloud firewall (generated from the spec; do not edit)"
  chain inbound {{
{body}
    counter drop comment "default deny"
  }}
  chain forward {{
    type filter hook forward priority filter - 5; policy accept;
    iifname "{cl}" oifname "{pub}" ct state established,related accept
    iifname "{cl}" oifname "{pub}" ct state invalid drop
    iifname "{cl}" oifname "{pub}" jump inbound
    iifname "{pub}" oifname "{cl}" accept comment "machines may reach the internet side"
    iifname "{p}*" oifname "{p}*" iifname != "{cl}" oifname != "{cl}" accept comment "within one bridge"
    iifname "{p}*" counter drop comment "nothing of the env reaches the host's real uplinks"
    oifname "{p}*" counter drop comment "nothing from elsewhere reaches the env"
  }}
  chain output {{
    type filter hook output priority filter - 5; policy accept;
    oifname "{pub}" ct state established,related accept
    oifname "{pub}" jump inbound
  }}
  chain input {{
    type filter hook input priority filter - 5; policy accept;
    iifname {{ "{pub}", "{cl}" }} ct state established,related accept
    iifname {{ "{pub}", "{cl}" }} meta l4proto {{ tcp, udp }} th dport {DNS_PORT} accept comment "env DNS"
    iifname "{pub}" tcp dport {{ {services} }} accept comment "apt proxy, artifacts, ACME"
    iifname {{ "{pub}", "{cl}" }} icmp type echo-request accept
    iifname "{p}*" counter drop comment "nothing else of the host"
  }}
}}
"""


def apply(names: EnvNames, spec: EnvSpec) -> str:
    ruleset = render(names, spec)
    host.run(["nft", "-f", "-"], input=ruleset, what=f"load nftables table inet {names.nft_table}")
    return ruleset


def exists(names: EnvNames) -> bool:
    return host.run(["nft", "list", "table", "inet", names.nft_table], check=False).returncode == 0


def remove(names: EnvNames) -> list[str]:
    if exists(names):
        host.run(["nft", "delete", "table", "inet", names.nft_table], what=f"delete nftables table {names.nft_table}")
        return [f"nftables table inet {names.nft_table}"]
    return []
