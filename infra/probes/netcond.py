"""Network conditions for the client namespace: what a user behind a strict network has.

Each condition is an nftables table inside the client's own namespace (never the host's):
`udp-blocked` drops every UDP packet but DNS; `tcp443-only` lets out only TCP 443 and DNS.
"""
from __future__ import annotations

import contextlib
import subprocess
from typing import Iterator

TABLE = "voicestack_netcond"

RULES = {
    "normal": None,
    "udp-blocked": "meta l4proto udp udp dport != 53 drop",
    "tcp443-only": "meta l4proto udp udp dport != 53 drop\n\t\tmeta l4proto tcp tcp dport != 443 drop",
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
        _nft(netns, f"table inet {TABLE} {{\n\tchain out {{\n\t\ttype filter hook output priority 0; policy accept;\n"
                    f"\t\tct state established,related accept\n\t\t{rules}\n\t}}\n}}\n")
    try:
        yield
    finally:
        clear(netns)
