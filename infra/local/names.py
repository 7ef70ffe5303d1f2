"""Every name and address of one local environment, derived from the env name alone.

`down` finds what `up` made from these names (no state file), so both must derive them the
same way. Addresses come from the benchmark range 198.18.0.0/15 (RFC 2544), which no real
network routes: the machines' "public" /24 in 198.18.0.0/16 and the emulated internet's /24
in 198.19.0.0/16, both picked by a hash of the env name so that two environments coexist.
Behind the emulated 1:1 NAT (network: nat) the machines' interfaces hold addresses of a /24 in
the shared address space 100.64.0.0/10 (RFC 6598, the range carrier NATs use), same octet.
"""
from __future__ import annotations

import hashlib
import ipaddress
import os
import re
from dataclasses import dataclass
from pathlib import Path

#: Host-side build caches (base image, Go builds, artifacts, wheels). VOICESTACK_CACHE moves them,
#: e.g. to measure a cold start without throwing away the shared caches (bench/bench_feedback.py).
CACHE = Path(os.environ.get("VOICESTACK_CACHE", "/var/cache/voicestack"))
STATE = Path("/var/lib/voicestack")
RUN = Path("/run/voicestack")

_ENV = re.compile(r"^[a-z][a-z0-9-]{0,23}$")

# Fixed host-side service ports (on the env's gateway address, see EnvNames.gateway).
DNS_PORT = 53
APT_PROXY_PORT = 3142
HTTP_PORT = 8808          # artifacts + wheelhouse
ACME_PORT = 14000         # pebble directory
ACME_MGMT_PORT = 15000    # pebble management (/roots/0)


class EnvNameError(ValueError):
    pass


@dataclass(frozen=True)
class EnvNames:
    env: str

    def __post_init__(self) -> None:
        if not _ENV.match(self.env):
            raise EnvNameError(f"env {self.env!r} is not usable for a local environment; use 1-24 lower-case "
                               "letters, digits or '-', starting with a letter (e.g. local, e2elocal)")

    # ---- identity -----------------------------------------------------------------------
    @property
    def tag(self) -> str:
        """Six hex digits of the env name: keeps interface names within 15 characters."""
        return hashlib.sha256(self.env.encode()).hexdigest()[:6]

    @property
    def octet(self) -> int:
        """Third octet of both /24s; 0 and 255 avoided so the nets never look special."""
        return 1 + int(hashlib.sha256(b"net:" + self.env.encode()).hexdigest(), 16) % 254

    # ---- links (all start with link_prefix, which `down` sweeps) ------------------------
    @property
    def link_prefix(self) -> str:
        return f"vs-{self.tag}-"

    @property
    def public_bridge(self) -> str:
        return f"{self.link_prefix}pub"

    @property
    def private_bridge(self) -> str:
        return f"{self.link_prefix}prv"

    @property
    def client_link(self) -> str:
        """Host end of the veth to the client namespace (the 'internet' uplink)."""
        return f"{self.link_prefix}cl"

    def node_public_link(self, index: int) -> str:
        return f"{self.link_prefix}p{index + 1}"

    def node_private_link(self, index: int) -> str:
        return f"{self.link_prefix}v{index + 1}"

    # ---- namespaces ---------------------------------------------------------------------
    @property
    def netns_prefix(self) -> str:
        return f"vs-{self.env}."

    def node_netns(self, node: str) -> str:
        return f"{self.netns_prefix}{node}"

    @property
    def client_netns(self) -> str:
        return f"{self.netns_prefix}client"

    def condition_netns(self, condition: str) -> str:
        """A client namespace of its own per network condition (infra/probes/netcond.py), so that
        checks under different conditions run at once without seeing each other's filter."""
        return f"{self.netns_prefix}client-{condition}"

    def condition_link(self, index: int) -> str:
        """Host end of the veth to the namespace of condition `index` (1, 2, ...; 0 is the client's)."""
        return f"{self.link_prefix}c{index}"

    def condition_ip(self, index: int) -> str:
        """The address of condition `index`'s namespace on the internet side (client_ip is index 0)."""
        return str(self.internet_net.network_address + 2 + index)

    # ---- nftables -----------------------------------------------------------------------
    @property
    def nft_table(self) -> str:
        return "vs_" + self.env.replace("-", "_")

    # ---- addresses ----------------------------------------------------------------------
    @property
    def public_net(self) -> ipaddress.IPv4Network:
        return ipaddress.ip_network(f"198.18.{self.octet}.0/24")

    @property
    def internet_net(self) -> ipaddress.IPv4Network:
        return ipaddress.ip_network(f"198.19.{self.octet}.0/24")

    @property
    def gateway(self) -> str:
        """The host on the public network: the machines' router and every host service."""
        return str(self.public_net.network_address + 1)

    @property
    def operator_ip(self) -> str:
        """The host on the internet side; its SSH to the machines comes from here (admin CIDR)."""
        return str(self.internet_net.network_address + 1)

    @property
    def client_ip(self) -> str:
        return str(self.internet_net.network_address + 2)

    def node_public_ip(self, index: int) -> str:
        return str(self.public_net.network_address + 10 + index)

    @property
    def interface_net(self) -> ipaddress.IPv4Network:
        """network nat: the machines' eth0 addresses; the cloud router maps each to a public one."""
        return ipaddress.ip_network(f"100.64.{self.octet}.0/24")

    @property
    def interface_gateway(self) -> str:
        """network nat: the router's address on the machines' network (their default gateway)."""
        return str(self.interface_net.network_address + 1)

    def node_interface_ip(self, index: int) -> str:
        """network nat: the private address on machine `index`'s eth0 (node_public_ip maps to it)."""
        return str(self.interface_net.network_address + 10 + index)

    # ---- paths --------------------------------------------------------------------------
    @property
    def state_dir(self) -> Path:
        return STATE / self.env

    @property
    def run_dir(self) -> Path:
        return RUN / self.env

    def machine_dir(self, node: str) -> Path:
        return self.state_dir / node

    @property
    def ssh_dir(self) -> Path:
        return self.state_dir / "ssh"

    @property
    def ssh_key(self) -> Path:
        return self.ssh_dir / "id_ed25519"

    @property
    def known_hosts(self) -> Path:
        return self.ssh_dir / "known_hosts"

    @property
    def netns_etc(self) -> Path:
        return self.netns_etc_of(self.client_netns)

    @staticmethod
    def netns_etc_of(netns: str) -> Path:
        """`ip netns exec` bind-mounts /etc/netns/<netns>/resolv.conf over /etc/resolv.conf."""
        return Path("/etc/netns") / netns
