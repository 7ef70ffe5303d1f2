"""The deploy's inventory, built from `.stack/<env>/outputs.json` and nothing else.

The outputs carry the derived spec, the hosts and the secrets. Everything a task needs for one
node is gathered into one frozen `NodeVars`, stored as pyinfra host data under the key `vs`
(voicestack), so tasks and templates never read outputs or config themselves.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deploy import artifacts as artifactsmod
from infra import config as configmod
from infra import outputs as outputsmod
from infra.secrets import forward_secret, redis_config_command, redis_password, redis_sentinel_password
from infra.spec import EnvSpec, Node, Role, Scope

#: acmeCa -> ACME directory (acmeCa "local": the environment's own server, from the outputs).
ACME_DIRECTORIES = {
    "letsencrypt": "https://acme-v02.api.letsencrypt.org/directory",
    "letsencrypt-staging": "https://acme-staging-v02.api.letsencrypt.org/directory",
}
#: The host-data key of NodeVars (`host.data.vs` in every task).
HOST_DATA_KEY = "vs"


class DeployInputError(Exception):
    """The outputs, the manifest or the spec cannot drive a deploy; the message says what to fix."""


@dataclass(frozen=True)
class Secrets:
    api_key: str
    api_secret: str
    turn_secret: str
    redis_password: str
    token_key: str = ""       # the bearer key of the token endpoint (agent nodes)
    call_password: str = ""   # basic auth of the private voice page (Caddy keeps only its bcrypt hash)
    redis_sentinel_password: str = ""   # the Sentinels' requirepass (clusters)
    redis_config_command: str = ""      # the secret name of Redis' CONFIG command (clusters)
    forward_secret: str = ""            # FORWARD_SECRET: signs events forwarded to forwardUrl (n8n checks it)

    def __repr__(self) -> str:
        return "Secrets(<hidden>)"


@dataclass(frozen=True)
class NodeVars:
    """One node's view of the environment: the spec plus its addresses and secrets."""

    spec: EnvSpec
    node: Node
    public_ip: str
    private_ip: str | None
    secrets: Secrets = field(repr=False)
    #: Every address of a LiveKit node that coturn may relay to (its allow-list): each node's public
    #: address (the only one LiveKit advertises) and, behind 1:1 NAT, its interface address.
    livekit_peers: tuple[str, ...]
    #: Private IPs of the nodes that run Redis + Sentinel, in spec order (the first is the seed
    #: primary, see EnvSpec.redis_seed_node); empty with one node.
    redis_nodes: tuple[str, ...]
    acme_directory: str
    artifacts: dict[str, artifactsmod.Artifact]
    apt_proxy: str | None
    pip_index: str | None = None         # index URL for the agent's venv (None: pip's default)
    #: host:port of the certificate node's HTTP on the private network (its followers relay ACME
    #: challenges there); None on the certificate node itself and with one node.
    certificate_relay: str | None = None
    #: The address on the node's public-facing interface: = public_ip (direct), or the private
    #: address the cloud maps public_ip to (nat). Services bind here; they advertise public_ip.
    interface_ip: str = ""
    network: str = "direct"

    def __post_init__(self) -> None:
        if not self.interface_ip:
            object.__setattr__(self, "interface_ip", self.public_ip)

    @property
    def nat(self) -> bool:
        return self.network == "nat"

    @property
    def cfg(self) -> configmod.StackConfig:
        return self.spec.config

    @property
    def is_certificate_node(self) -> bool:
        return self.spec.certificate_node == self.node

    @property
    def turn_host(self) -> str | None:
        """The TURN name this node answers at and obtains the certificate of (None: no coturn here)."""
        return self.spec.turn_host_of(self.node)

    def release(self, name: str, uname_arch: str) -> tuple[artifactsmod.Artifact, str, str, str]:
        """(artifact, Debian arch, url, digest) of the pinned release `name` for a node's `uname -m`;
        DeployInputError when the architecture is unknown or the release is not pinned."""
        arch = artifactsmod.ARCHES.get(uname_arch)
        if arch is None:
            raise DeployInputError(f"{self.node.name}: unsupported architecture {uname_arch}")
        art = self.artifacts[name]
        try:
            url, digest = art.for_arch(arch)
        except artifactsmod.ArtifactError as exc:
            raise DeployInputError(f"{self.node.name}: {exc}") from exc
        return art, arch, url, digest

    @property
    def balancer_address(self) -> str | None:
        """The private address the load balancer reaches this node on (None: no balancer, or a
        node it does not target); DeployInputError when the node has no private address."""
        lb = self.spec.balancer
        if lb is None or self.node.name not in lb.targets:
            return None
        if not self.private_ip:
            raise DeployInputError(f"node {self.node.name} has no private address, which the load balancer "
                                   "reaches it on; re-run the provisioner (make up)")
        return self.private_ip

    def bind_address(self, scope: Scope) -> str:
        """The address a listener of this scope binds on this node."""
        if scope is Scope.LOOPBACK:
            return "127.0.0.1"
        if scope is Scope.PRIVATE:
            if not self.private_ip:
                raise DeployInputError(f"{self.node.name} has no private IP but a private port must bind on it")
            return self.private_ip
        # A public listener binds the interface's address: behind 1:1 NAT the public one is on no interface.
        return self.interface_ip


def _acme_directory(spec: EnvSpec, deploy: outputsmod.DeployInputs) -> str:
    cfg = spec.config
    if cfg.acme_ca in ACME_DIRECTORIES:
        return ACME_DIRECTORIES[cfg.acme_ca]
    if cfg.acme_ca.startswith("https://"):
        return cfg.acme_ca
    if not deploy.acme_directory:
        raise DeployInputError(f"acmeCa is {cfg.acme_ca!r} but the outputs have no deploy.acme_directory; "
                               "re-run the local environment's 'up' so it records its ACME server")
    return deploy.acme_directory


def _artifacts(spec: EnvSpec, deploy: outputsmod.DeployInputs) -> dict[str, artifactsmod.Artifact]:
    try:
        overrides = {name: artifactsmod.Override.from_outputs(name, o) for name, o in deploy.artifacts.items()}
        return {"livekit": artifactsmod.resolve("livekit", spec.config.livekit_version, overrides),
                "caddy": artifactsmod.resolve("caddy", spec.config.caddy_version, overrides)}
    except artifactsmod.ArtifactError as exc:
        raise DeployInputError(str(exc)) from exc


def node_vars(out: outputsmod.Outputs) -> dict[str, NodeVars]:
    """NodeVars for every node of the outputs, keyed by node name."""
    spec = out.spec
    by_name = {n.name: n for n in out.nodes}
    if sorted(by_name) != sorted(n.name for n in spec.nodes):
        raise DeployInputError(f"the outputs list nodes {sorted(by_name)} but the spec has "
                               f"{[n.name for n in spec.nodes]}; re-run the provisioner (make up) so they agree")
    for n in out.nodes:
        try:
            ipaddress.ip_address(n.public_ip)
        except ValueError as exc:
            raise DeployInputError(f"node {n.name}: public_ip {n.public_ip!r} is not an IP address") from exc
    secrets = Secrets(out.api_key, out.api_secret, out.turn_secret, redis_password(out.api_secret),
                      token_key=out.token_key, call_password=out.call_password,
                      redis_sentinel_password=redis_sentinel_password(out.api_secret),
                      redis_config_command=redis_config_command(out.api_secret),
                      forward_secret=forward_secret(out.api_secret))

    def private_ip(node: Node) -> str | None:
        return by_name[node.name].private_ip or node.private_ip

    peers: list[str] = []
    for n in spec.nodes_with(Role.LIVEKIT):
        o = by_name[n.name]
        peers += [o.public_ip] + ([o.interface_ip] if o.interface_ip and o.interface_ip != o.public_ip else [])
    redis_nodes = []
    for n in spec.redis_nodes:
        if not private_ip(n):
            raise DeployInputError(f"{n.name} runs Redis but has no private IP in the outputs; re-run the "
                                   "provisioner (make up) so every cluster node has one")
        redis_nodes.append(str(private_ip(n)))
    acme = _acme_directory(spec, out.deploy)
    arts = _artifacts(spec, out.deploy)
    leader = spec.certificate_node
    relay = None
    if leader is not None and spec.multi_node:
        relay = f"{private_ip(leader)}:{spec.port('http').start}"
    result = {}
    for node in spec.nodes:
        o = by_name[node.name]
        result[node.name] = NodeVars(
            spec=spec, node=node, public_ip=o.public_ip, private_ip=private_ip(node), secrets=secrets,
            livekit_peers=tuple(dict.fromkeys(peers)), redis_nodes=tuple(redis_nodes), acme_directory=acme,
            artifacts=arts, apt_proxy=out.deploy.apt_proxy, pip_index=out.deploy.pip_index,
            certificate_relay=relay if leader is not None and node != leader else None,
            interface_ip=o.interface_ip or o.public_ip, network=o.network)
    return result


def ssh_data(out: outputsmod.Outputs, connect_timeout: int) -> dict[str, dict[str, Any]]:
    """pyinfra host data for SSH, per node (the key and known_hosts of the outputs)."""
    known_hosts = Path(out.deploy.known_hosts) if out.deploy.known_hosts else out.paths.known_hosts
    known_hosts.parent.mkdir(parents=True, exist_ok=True)
    known_hosts.touch(mode=0o600, exist_ok=True)
    data = {}
    for n in out.nodes:
        key = Path(n.ssh_key).expanduser()
        if not key.is_file():
            raise DeployInputError(f"node {n.name}: SSH key {key} does not exist")
        data[n.name] = {
            "ssh_hostname": n.public_ip,
            "ssh_port": n.ssh_port,
            "ssh_user": n.ssh_user,
            "ssh_key": str(key),
            "ssh_known_hosts_file": str(known_hosts),
            "ssh_strict_host_key_checking": out.deploy.ssh_strict_host_key_checking,
            "ssh_paramiko_connect_kwargs": {"banner_timeout": connect_timeout, "auth_timeout": connect_timeout},
        }
    return data


def build(env: str, connect_timeout: int = 5):
    """(outputs, pyinfra Inventory) for an environment; DeployInputError when it cannot deploy."""
    from pyinfra.api import Inventory

    try:
        out = outputsmod.read(env)
    except outputsmod.OutputsError as exc:
        raise DeployInputError(str(exc)) from exc
    nv = node_vars(out)
    ssh = ssh_data(out, connect_timeout)
    hosts = [(n.name, {**ssh[n.name], HOST_DATA_KEY: nv[n.name]}) for n in out.nodes]
    return out, Inventory((hosts, {}))
