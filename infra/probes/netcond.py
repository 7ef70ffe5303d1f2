"""Network conditions for the client namespace: what a user behind a strict network has.

Each filtered condition has a client namespace of its own on the emulated internet
(infra/local/network.py) with its nftables table applied there for good (never in the host's
namespace): `udp-blocked` drops every UDP packet but DNS; `tcp443-only` lets through only TCP 443
and DNS. Checks under different conditions can so run at once.
Both directions are filtered: LiveKit sends ICE checks to the client's host candidates too,
and a packet let in would make the client's answers "established" and so let UDP through.
"""
from __future__ import annotations

import subprocess

TABLE = "voicestack_netcond"

#: condition -> (rules on the way out, rules on the way in); None: no filter.
RULES: dict[str, tuple[str, str] | None] = {
    "normal": None,
    "udp-blocked": ("meta l4proto udp udp dport != 53 drop", "meta l4proto udp udp sport != 53 drop"),
    "tcp443-only": ("meta l4proto udp udp dport != 53 drop\n\t\tmeta l4proto tcp tcp dport != 443 drop",
                    "meta l4proto udp udp sport != 53 drop\n\t\tmeta l4proto tcp tcp sport != 443 drop"),
}


#: The conditions that filter anything: each has a client namespace of its own.
FILTERED: tuple[str, ...] = tuple(name for name, rules in RULES.items() if rules)


def _nft(netns: str, script: str) -> None:
    subprocess.run(["ip", "netns", "exec", netns, "nft", "-f", "-"], input=script, text=True, check=True,
                   capture_output=True)


def clear(netns: str) -> None:
    subprocess.run(["ip", "netns", "exec", netns, "nft", "delete", "table", "inet", TABLE], capture_output=True)


def apply(netns: str, name: str) -> None:
    """Give namespace `netns` the filter of condition `name`, replacing whatever table it had in one
    nft transaction (never a moment without the filter)."""
    rules = RULES[name]
    if not rules:
        clear(netns)
        return
    out, into = rules
    _nft(netns, f"table inet {TABLE}\ndelete table inet {TABLE}\n"
                f"table inet {TABLE} {{\n\tchain out {{\n\t\ttype filter hook output priority 0; policy accept;\n"
                f"\t\toif \"lo\" accept\n\t\tct state established,related accept\n\t\t{out}\n\t}}\n"
                f"\tchain in {{\n\t\ttype filter hook input priority 0; policy accept;\n"
                f"\t\tiif \"lo\" accept\n\t\t{into}\n\t}}\n}}\n")
