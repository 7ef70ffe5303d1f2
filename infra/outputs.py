"""`.stack/<env>/outputs.json`: the one contract between provisioning, deploy and verify.

Both provisioners (local machines, Pulumi stacks) call `assemble`, which puts the *derived*
spec (nodes and roles, every port, both firewalls, DNS records, TURN servers, the non-secret
settings) next to the addresses and secrets. Downstream, `Outputs.spec` is the only way to get
an environment spec: deploy, verify, preflight and the benchmarks read this file and nothing
else, so a copy of `.stack/<env>/` drives them from any checkout. It holds secrets: written
0600 in a 0700 directory, atomically.
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from infra import spec as specmod
from infra.codec import DecodeError, from_plain, to_plain
from infra.files import write_private

ROOT = Path(__file__).resolve().parent.parent
STACK_DIR = ROOT / ".stack"
#: Bumped whenever a reader of an older file would misread it (3: networking models, published DNS;
#: 4: a TURN name per node in clusters, whose DNS records the provisioner publishes).
SCHEMA = 4


@dataclass(frozen=True)
class EnvPaths:
    """Every file of one environment under `.stack/<env>/` (paths only; nothing is created)."""

    env: str

    @property
    def dir(self) -> Path:
        return STACK_DIR / self.env

    @property
    def outputs(self) -> Path:
        return self.dir / "outputs.json"

    @property
    def secrets(self) -> Path:
        return self.dir / "secrets.json"

    @property
    def deploy_last(self) -> Path:
        return self.dir / "deploy-last.json"

    @property
    def verify_results(self) -> Path:
        """What the verify suite measured last (round trips), for make up's summary."""
        return self.dir / "verify-results.json"

    @property
    def known_hosts(self) -> Path:
        return self.dir / "known_hosts"


@dataclass(frozen=True)
class NodeOut:
    name: str
    public_ip: str
    private_ip: str | None
    ssh_user: str
    ssh_key: str
    roles: list[str]
    ssh_port: int = 22
    #: "direct": public_ip is on the node's interface; "nat": the cloud maps it 1:1 to interface_ip.
    network: str = "direct"
    #: The address on the node's public-facing interface (what services bind); = public_ip for direct.
    interface_ip: str | None = None


@dataclass(frozen=True)
class DeployInputs:
    """What the deploy needs besides the spec and the addresses (all optional)."""

    acme_directory: str | None = None      # the ACME server when acmeCa is "local"
    artifacts: dict[str, dict[str, str]] = field(default_factory=dict)  # name -> {version, url, sha256}
    apt_proxy: str | None = None           # http://host:port for the nodes' apt
    pip_index: str | None = None           # Python package index for the agent's venv
    known_hosts: str | None = None         # SSH known_hosts of the nodes (default .stack/<env>/known_hosts)
    ssh_strict_host_key_checking: str = "accept-new"   # accept-new | yes | no


@dataclass(frozen=True)
class LocalInfo:
    """Facts of a local environment (namespaces, networks): for operator tools and tests."""

    operator_ip: str          # the host on the emulated internet (the deploy's SSH comes from it)
    gateway: str              # the host on the machines' network (DNS, ACME, apt, artifacts)
    public_network: str
    internet_network: str
    netns: dict[str, str]     # node name -> its network namespace
    interface_network: str | None = None  # nat: the machines' interface addresses (behind the 1:1 NAT)
    #: network condition (infra/probes/netcond.py) -> the client namespace that has it
    condition_netns: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Outputs:
    env: str
    provider: str
    spec: specmod.EnvSpec
    livekit_url: str
    livekit_domain: str
    turn_domain: str
    token_endpoint: str
    api_key: str
    api_secret: str
    turn_secret: str
    token_key: str
    nodes: list[NodeOut]
    #: Basic-auth password of the private voice page (user: spec.config.call_user). Empty in files
    #: written before the page existed: the deploy then asks for a re-run of the provisioner.
    call_password: str = ""
    #: What the provisioner published in DNS: name -> addresses (the spec's records; a provider may
    #: publish another address than the nodes' for a name, e.g. DigitalOcean's reserved IPs).
    dns: dict[str, list[str]] = field(default_factory=dict)
    deploy: DeployInputs = field(default_factory=DeployInputs)
    ca_bundle: str | None = None     # local: the ACME root to trust
    dns_server: str | None = None    # local: the environment's DNS server
    client_netns: str | None = None  # local: a namespace on the internet side of the cloud firewall
    local: LocalInfo | None = None
    schema: int = SCHEMA

    def __repr__(self) -> str:  # secrets inside
        return f"Outputs(env={self.env!r}, provider={self.provider!r}, nodes={[n.name for n in self.nodes]})"

    @property
    def paths(self) -> EnvPaths:
        return EnvPaths(self.env)

    def netns_for(self, condition: str = "normal") -> str | None:
        """The client namespace of a network condition (None: not a local environment, probes run here)."""
        if not self.client_netns or condition == "normal":
            return self.client_netns
        netns = (self.local.condition_netns if self.local else {}).get(condition)
        if not netns:
            raise OutputsError(f"the outputs of {self.env} name no client namespace for the network condition "
                               f"{condition!r} (written by an older voicestack): re-run 'make up ENV={self.env}'")
        return netns

    @property
    def balancer_ip(self) -> str | None:
        """The load balancer's public address (what the LiveKit name publishes), None without one."""
        record = next((r for r in self.spec.dns_records if r.balancer), None)
        return self.dns[record.name][0] if record is not None and self.dns.get(record.name) else None

    def node(self, name: str) -> NodeOut:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(f"no node {name!r} in the outputs of {self.env}")


class OutputsError(Exception):
    pass


def _checked_node(spec: specmod.EnvSpec, node: NodeOut) -> NodeOut:
    """`node` with its interface address filled in, or OutputsError when its addresses contradict
    the networking model the spec gives it."""
    model = spec.node(node.name).network
    if node.network != model:
        raise OutputsError(f"node {node.name}: the provisioner reports network {node.network!r} but the spec "
                           f"says {model!r}")
    if model == "direct":
        if node.interface_ip not in (None, node.public_ip):
            raise OutputsError(f"node {node.name}: network direct means the public address {node.public_ip} is on "
                               f"the interface, but interface_ip is {node.interface_ip}")
        return dataclasses.replace(node, interface_ip=node.public_ip)
    if not node.interface_ip or node.interface_ip == node.public_ip:
        raise OutputsError(f"node {node.name}: network nat needs the interface address the public address "
                           f"{node.public_ip} is mapped to, got {node.interface_ip!r}")
    return node


def _first_turn_host(spec: specmod.EnvSpec) -> str:
    """The TURN name outputs carry as turn_domain: in a cluster, where every TURN node has its own
    (spec.turn_hosts()), the first node's."""
    return next(iter(spec.turn_hosts().values()), spec.config.turn_host)


def _checked_dns(spec: specmod.EnvSpec, dns: Mapping[str, list[str]]) -> dict[str, list[str]]:
    want = {r.name: r for r in spec.dns_records}
    if sorted(dns) != sorted(want):
        raise OutputsError(f"the provisioner published DNS names {sorted(dns)} but the spec has {sorted(want)}")
    short = [name for name, ips in dns.items() if len(ips) != want[name].address_count]
    if short:
        raise OutputsError(f"DNS names {short} carry another number of addresses than the nodes (or the load "
                           "balancer) that serve them")
    return {name: list(ips) for name, ips in dns.items()}


def assemble(spec: specmod.EnvSpec, nodes: list[NodeOut], *, api_secret: str, turn_secret: str, token_key: str,
             call_password: str, dns: Mapping[str, list[str]] | None = None, deploy: DeployInputs | None = None,
             ca_bundle: str | None = None, dns_server: str | None = None, client_netns: str | None = None,
             local: LocalInfo | None = None, balancer_ip: str | None = None) -> Outputs:
    """The outputs of an environment, the same way for every provisioner.

    dns: what the provisioner published (default: every record at its nodes' public addresses, a
    balanced record at `balancer_ip`)."""
    have = sorted(n.name for n in nodes)
    want = sorted(n.name for n in spec.nodes)
    if have != want:
        raise OutputsError(f"the provisioner reports nodes {have} but the spec has {want}")
    nodes = [_checked_node(spec, n) for n in nodes]
    if dns is None:
        try:
            dns = spec.dns_addresses({n.name: n.public_ip for n in nodes}, balancer_ip)
        except ValueError as e:
            raise OutputsError(str(e)) from None
    missing = [k for k, v in (("api_secret", api_secret), ("turn_secret", turn_secret), ("token_key", token_key),
                              ("call_password", call_password)) if not v]
    if missing:
        raise OutputsError(f"no {', '.join(missing)}: the provisioner must resolve every secret")
    cfg = spec.config
    return Outputs(env=spec.env, provider=cfg.provider, spec=spec, livekit_url=spec.livekit_url,
                   livekit_domain=cfg.livekit_host, turn_domain=_first_turn_host(spec), token_endpoint=spec.token_endpoint,
                   api_key=cfg.api_key, api_secret=api_secret, turn_secret=turn_secret, token_key=token_key,
                   nodes=list(nodes), call_password=call_password, dns=_checked_dns(spec, dns),
                   deploy=deploy or DeployInputs(), ca_bundle=ca_bundle, dns_server=dns_server,
                   client_netns=client_netns, local=local)


def to_json(out: Outputs) -> dict[str, Any]:
    return to_plain(dataclasses.replace(out, spec=specmod.without_secrets(out.spec)))


def from_json(data: dict[str, Any], where: str = "outputs.json") -> Outputs:
    schema = data.get("schema")
    if schema != SCHEMA:
        raise OutputsError(f"{where} has schema {schema or 'none (an older voicestack)'}, this checkout reads "
                           f"schema {SCHEMA}; re-run 'make up ENV={data.get('env', '<env>')}' to rewrite it")
    try:
        return from_plain(Outputs, data, "outputs")
    except (DecodeError, KeyError, TypeError, ValueError) as exc:
        raise OutputsError(f"{where} is not a valid outputs file ({exc}); re-run 'make up ENV={data.get('env')}'") \
            from exc


def path_for(env: str) -> Path:
    return EnvPaths(env).outputs


def write(out: Outputs) -> Path:
    """Write atomically with mode 0600 (secrets inside); the directory is 0700."""
    target = out.paths.outputs
    write_private(target, json.dumps(to_json(out), indent=2, sort_keys=True) + "\n")
    return target


def read(env: str) -> Outputs:
    target = path_for(env)
    if not target.is_file():
        raise OutputsError(f"{target} does not exist; run 'make up ENV={env}' first")
    try:
        data = json.loads(target.read_text())
    except ValueError as exc:
        raise OutputsError(f"{target} is not JSON ({exc}); re-run 'make up ENV={env}'") from exc
    return from_json(data, str(target))


def remove(env: str) -> bool:
    target = path_for(env)
    if target.exists():
        os.unlink(target)
        return True
    return False
