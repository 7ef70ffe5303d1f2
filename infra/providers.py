"""What we know about each provider: where it can run, and whether UDP media works there.

The UDP verdicts come from the provider table of the operator's guide the project grew from
(reliability_security research: OVH throttles UDP); a provider that blocks UDP cannot carry
WebRTC media, so it is refused before anything is created.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Provider:
    name: str
    #: Pulumi program exists for it ("hetzner", "digitalocean"), local machines ("local"),
    #: or the operator brings the hosts ("existing").
    kind: str
    regions: frozenset[str] = frozenset()  # empty: any value accepted (bring-your-own)
    server_types: frozenset[str] = frozenset()
    default_region: str = ""
    default_server_type: str = ""
    #: Refusal reason when the provider is known to block UDP.
    refused: str = ""
    #: Printed, not fatal: what the operator must set up by hand.
    warning: str = ""
    #: Server types that are arm64 machines (the rest are amd64).
    arm64_prefixes: tuple[str, ...] = ()

    def architecture(self, server_type: str) -> str:
        """Debian architecture of a server type: selects the release artifact to pin."""
        return "arm64" if server_type.startswith(self.arm64_prefixes) and self.arm64_prefixes else "amd64"


HETZNER = Provider(
    name="hetzner",
    kind="hetzner",
    regions=frozenset({"nbg1", "fsn1", "hel1", "ash", "hil", "sin"}),
    server_types=frozenset({
        "cx22", "cx23", "cx32", "cx33", "cx42", "cx43", "cx52", "cx53",
        "cpx11", "cpx12", "cpx21", "cpx22", "cpx31", "cpx32", "cpx41", "cpx42", "cpx51", "cpx52", "cpx62",
        "cax11", "cax21", "cax31", "cax41",
        "ccx13", "ccx23", "ccx33", "ccx43", "ccx53", "ccx63",
    }),
    default_region="nbg1",
    default_server_type="cx23",
    arm64_prefixes=("cax",),
)

DIGITALOCEAN = Provider(
    name="digitalocean",
    kind="digitalocean",
    regions=frozenset({
        "nyc1", "nyc2", "nyc3", "sfo2", "sfo3", "ams3", "sgp1", "lon1", "fra1", "tor1", "blr1", "syd1", "atl1",
    }),
    server_types=frozenset({
        "s-1vcpu-1gb", "s-1vcpu-2gb", "s-2vcpu-2gb", "s-2vcpu-4gb", "s-4vcpu-8gb", "s-8vcpu-16gb",
        "s-2vcpu-4gb-amd", "s-4vcpu-8gb-amd", "s-2vcpu-4gb-intel", "s-4vcpu-8gb-intel",
        "c-2", "c-4", "c-8", "c-16", "g-2vcpu-8gb", "g-4vcpu-16gb", "m-2vcpu-16gb",
    }),
    default_region="fra1",
    default_server_type="s-2vcpu-4gb",
)

LOCAL = Provider(
    name="local",
    kind="local",
    regions=frozenset({"local"}),
    server_types=frozenset({"nspawn"}),
    default_region="local",
    default_server_type="nspawn",
)

EXISTING = Provider(name="existing", kind="existing")
CONTABO = Provider(name="contabo", kind="existing")

_NAT_WARNING = (
    "{name}: UDP works but needs set-up by hand: open TCP 80/443/7881 and the ICE/TURN UDP ports in the "
    "security group / firewall and give each node a public address mapped 1:1 to it (AWS/GCP: elastic/static "
    "external IP, no NAT gateway for media); list each host's interface address as interfaceIp (network nat) "
    "so LiveKit and coturn advertise the public one. Hosts are taken from 'hosts'."
)

SCALEWAY = Provider(
    name="scaleway",
    kind="existing",
    warning="scaleway: its default security group drops inbound UDP; open the ICE and TURN UDP ports in it. "
    "Hosts are taken from 'hosts'.",
)
AWS = Provider(name="aws", kind="existing", warning=_NAT_WARNING.format(name="aws"))
GCP = Provider(name="gcp", kind="existing", warning=_NAT_WARNING.format(name="gcp"))
OVH = Provider(
    name="ovh",
    kind="existing",
    refused="OVH often blocks or rate-limits UDP, so WebRTC media would not flow (only signalling works). "
    "Use hetzner or digitalocean, or 'existing' with a host whose UDP you have tested (make preflight).",
)

PROVIDERS: dict[str, Provider] = {
    p.name: p for p in (HETZNER, DIGITALOCEAN, LOCAL, EXISTING, CONTABO, SCALEWAY, AWS, GCP, OVH)
}
