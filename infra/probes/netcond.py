"""Network conditions for the client namespace: what a user behind a strict network has.

Each condition is an nftables table inside the client's own namespace (never the host's):
`udp-blocked` drops every UDP packet but DNS; `tcp443-only` lets through only TCP 443 and DNS.
Both directions are filtered: LiveKit sends ICE checks to the client's host candidates too,
and a packet let in would make the client's answers "established" and so let UDP through.
"""
from __future__ import annotations

import contextlib
import subprocess
from typing import Iterator

TABLE = "voicestack_netcond"

#: condition -> (rules on the way out, rules on the way in); None: no filter.
RULES: dict[str, tuple[str, str] | None] = {
    "normal": None,
    "udp-blocked": ("meta l4proto udp udp dport != 53 drop", "meta l4proto udp udp sport != 53 drop"),
    "tcp443-only": ("meta l4proto udp udp dport != 53 drop\n\t\tmeta l4proto tcp tcp dport != 443 drop",
                    "meta l4proto udp udp sport != 53 drop\n\t\tmeta l4proto tcp tcp sport != 443 drop"),
}


def _nft(netns: str, script: str) -> None:
    subprocess.run(["ip", "netns", "exec", netns, "nft", "-f", "-"], input=script, text=True, check=True,
                   capture_output=True)


def clear(netns: str) -> None:
    subprocess.run(["ip", "netns", "exec", netns, "nft", "delete", "table", "inet", TABLE], capture_output=True)


@contextlib.contextmanager
def condition(netns: str, name: str) -> Iterator[None]:
    clear(netns)
    rules = RULES[name]
    if rules:
        out, into = rules
        _nft(netns, f"table inet {TABLE} {{\n\tchain out {{\n\t\ttype filter hook output priority 0; policy accept;\n"
                    f"\t\toif \"lo\" accept\n\t\tct state established,related accept\n\t\t{out}\n\t}}\n"
                    f"\tchain in {{\n\t\ttype filter hook input priority 0; policy accept;\n"
                    f"\t\tiif \"lo\" accept\n\t\t{into}\n\t}}\n}}\n")
    try:
        yield
    finally:
        clear(netns)
