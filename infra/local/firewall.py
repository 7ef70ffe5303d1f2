"""The cloud firewall: one nftables table per env on the host, in the path to the machines.

Inbound to the machines (from the internet side, and from the host itself, whose traffic
leaves from the internet-side address) only `spec.cloud_firewall` is accepted, plus replies;
everything else is dropped. Outbound from the machines may reach the internet side (as on a
cloud) but nothing beyond the host: no packet of the env is forwarded to the host's real
uplinks. Towards the host itself only the env's services are open.

The same table holds the emulated cloud's other network behaviour, from the spec:
  * nat nodes: the host is their 1:1 NAT router. Traffic to a node's public address is
    DNAT-ed to its interface address (from the internet side, from the host itself, and from
    other machines: hairpin NAT, which then passes the cloud firewall like outside traffic
    and is SNAT-ed to the sender's public address, as clouds do for public IPs); traffic from
    a node towards the internet side leaves with its public address.
  * blockUdp: every UDP packet between the internet side and the machines is dropped, as by a
    provider that blocks UDP. Traffic between the env's own machines is not the internet's
    and stays untouched.
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


def nat_map(names: EnvNames, spec: EnvSpec) -> dict[str, str]:
    """public address -> interface address, for every nat node (empty: no NAT to emulate)."""
    return {names.node_public_ip(n.index): names.node_interface_ip(n.index) for n in spec.nodes
            if n.network == "nat"}


def _nat_chains(names: EnvNames, spec: EnvSpec) -> str:
    mapping = nat_map(names, spec)
    if not mapping:
        return ""
    p, pub, cl = names.link_prefix, names.public_bridge, names.client_link
    publics = ", ".join(mapping)
    privates = ", ".join(mapping.values())
    dnat = ", ".join(f"{a} : {b}" for a, b in mapping.items())
    snat = ", ".join(f"{b} : {a}" for a, b in mapping.items())
    return f"""  chain nat_prerouting {{
    type nat hook prerouting priority dstnat; policy accept;
    iifname "{p}*" ip daddr {{ {publics} }} dnat ip to ip daddr map {{ {dnat} }} comment "1:1 NAT in"
  }}
  chain nat_output {{
    type nat hook output priority -100; policy accept;
    ip daddr {{ {publics} }} dnat ip to ip daddr map {{ {dnat} }} comment "1:1 NAT in, from the host"
  }}
  chain nat_postrouting {{
    type nat hook postrouting priority srcnat; policy accept;
    oifname "{cl}" ip saddr {{ {privates} }} snat ip to ip saddr map {{ {snat} }} comment "1:1 NAT out"
    oifname "{pub}" ct status dnat ip saddr {{ {privates} }} snat ip to ip saddr map {{ {snat} }} comment "hairpin NAT"
  }}
"""


def render(names: EnvNames, spec: EnvSpec) -> str:
    p = names.link_prefix
    pub, cl = names.public_bridge, names.client_link
    inbound = [line for r in spec.cloud_firewall for line in _rule(r)]
    services = ", ".join(str(x) for x in (APT_PROXY_PORT, HTTP_PORT, ACME_PORT, ACME_MGMT_PORT))
    body = "\n".join(f"    {line}" for line in inbound)
    t = names.nft_table
    nat = bool(nat_map(names, spec))
    no_udp = "blockUdp: the provider drops UDP"
    block_fwd = (f'    iifname "{cl}" oifname "{pub}" meta l4proto udp counter drop comment "{no_udp} from the internet"\n'
                 f'    iifname "{pub}" oifname "{cl}" meta l4proto udp counter drop comment "{no_udp} to the internet"\n'
                 if spec.udp_blocked else "")
    block_out = (f'    oifname "{pub}" meta l4proto udp counter drop comment "{no_udp} from outside"\n'
                 if spec.udp_blocked else "")
    hairpin = (f'    iifname "{pub}" oifname "{pub}" ct status dnat ct state established,related accept\n'
               f'    iifname "{pub}" oifname "{pub}" ct status dnat jump inbound comment "hairpin: a machine to a '
               'public address passes the cloud firewall"\n' if nat else "")
    # Hairpin traffic leaves the bridge it came from: a cloud router sends no ICMP redirects, and a
    # machine that took one would skip the NAT.
    no_redirects = f'    oifname "{pub}" icmp type redirect drop\n' if nat else ""
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
{block_fwd}    iifname "{cl}" oifname "{pub}" ct state established,related accept
    iifname "{cl}" oifname "{pub}" ct state invalid drop
    iifname "{cl}" oifname "{pub}" jump inbound
    iifname "{pub}" oifname "{cl}" accept comment "machines may reach the internet side"
{hairpin}    iifname "{p}*" oifname "{p}*" iifname != "{cl}" oifname != "{cl}" accept comment "within one bridge"
    iifname "{p}*" counter drop comment "nothing of the env reaches the host's real uplinks"
    oifname "{p}*" counter drop comment "nothing from elsewhere reaches the env"
  }}
  chain output {{
    type filter hook output priority filter - 5; policy accept;
{no_redirects}{block_out}    oifname "{pub}" ct state established,related accept
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
{_nat_chains(names, spec)}}}
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
