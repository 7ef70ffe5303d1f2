"""What every Pulumi provider component shares: its Args, secrets, stack outputs and the opt-in deploy.

The provider modules (hetzner, digitalocean, existing) only translate the spec into their
cloud's resources and report, per node, where it can be reached (`NodeAddresses`). Everything
else is computed once here, the same for every provider. The stack outputs are the raw
material of outputs.json: `infra.cloud.stack_outputs` turns them into it with the same
assembler the local environment uses.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import sys
from dataclasses import dataclass
from typing import Any, Mapping

import pulumi
import pulumi_command as command
import pulumi_random as random

from infra import spec as specmod
from infra.config import ConfigError, StackConfig
from infra.outputs import ROOT
from infra.spec import DnsRecord, EnvSpec, Node

#: Length of generated secrets (letters and digits only: they go into YAML, URLs and env files).
SECRET_LENGTH = 48
#: The deploy helper's entry point, run once the servers exist (deployOnUp only).
DEPLOY_MODULE = "deploy"
#: Environment variable that hands the resolved stack outputs to `python -m infra.cloud.stack_outputs --from-env`.
OUTPUTS_ENV = "VOICESTACK_OUTPUTS"
#: Set by `make up`, which runs the deploy as its own step: the program then never chains one.
SKIP_CHAINED_DEPLOY_ENV = "VOICESTACK_SKIP_CHAINED_DEPLOY"


@dataclass(frozen=True)
class ProgramArgs:
    """Inputs of every provider component (HetznerStack, DigitalOceanStack, ExistingHosts)."""

    spec: EnvSpec
    """The validated environment spec (infra.validate.load): nodes, cloud firewall, DNS records."""


@dataclass(frozen=True)
class NodeAddresses:
    """Where one node of the spec can be reached, as a provider built it."""

    node: Node
    public_ip: pulumi.Input[str]
    private_ip: pulumi.Input[str] | None
    server_id: pulumi.Output[str] | None = None  # None: the operator's own host (no cloud server)
    #: The address on the node's public-facing interface; None: public_ip itself (network direct).
    interface_ip: pulumi.Input[str] | None = None


class ProviderComponent(pulumi.ComponentResource):
    """Base of the provider components: the same attributes whatever the cloud."""

    nodes: list[NodeAddresses]
    #: Informational stack outputs for the operator (e.g. the zone's nameservers); the pipeline reads none.
    info: dict[str, Any]

    #: Addresses a provider publishes for a name instead of its nodes' public ones (DigitalOcean:
    #: the reserved IPs for the LiveKit name; a cluster: its balancer's); every other record points
    #: at the nodes.
    dns_overrides: dict[str, list[pulumi.Input[str]]]

    def __init__(self, kind: str, name: str, args: ProgramArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__(f"voicestack:cloud:{kind}", name, None, opts)
        self.spec = args.spec
        self.nodes = []
        self.info = {"provider": args.spec.config.provider}
        self.dns_overrides = {}

    def _child(self, **kwargs: Any) -> pulumi.ResourceOptions:
        return pulumi.ResourceOptions(parent=self, **kwargs)

    def _publish_balancer(self, address: pulumi.Input[str]) -> None:
        """Point every balanced record of the spec (the LiveKit name) at the balancer's one public
        address: which names those are is the spec's decision, not the provider's."""
        for rec in self.spec.dns_records:
            if rec.balancer:
                self.dns_overrides[rec.name] = [address]

    def _finish(self) -> None:
        self.register_outputs({"nodes": [{"name": n.node.name, "public_ip": n.public_ip} for n in self.nodes]})


@dataclass(frozen=True)
class StackSecrets:
    api_secret: pulumi.Output[str]
    turn_secret: pulumi.Output[str]
    token_key: pulumi.Output[str]
    call_password: pulumi.Output[str]

    def __repr__(self) -> str:
        return "StackSecrets(<hidden>)"


def check_provisionable(cfg: StackConfig) -> None:
    """What a Pulumi stack needs beyond a valid config; raises before any resource is declared."""
    problems = []
    if cfg.provider_info.kind == "local":
        problems.append(("provider", "local is not a Pulumi stack; run \"make up ENV=<env>\" (it provisions local "
                         "machines itself), or set provider to hetzner, digitalocean or existing for this stack"))
    if cfg.provider_info.kind in ("hetzner", "digitalocean") and not cfg.ssh_public_key:
        problems.append(("sshPublicKey", "is empty; the servers are created with this key — "
                         "pulumi config set sshPublicKey \"$(cat ~/.ssh/id_ed25519.pub)\""))
    if problems:
        raise ConfigError(problems)


def stack_secrets(name: str, given: Mapping[str, pulumi.Output[str]]) -> StackSecrets:
    """The config's secrets, or ones generated once: RandomPassword results live in state, so a
    rebuild of the same stack (even `pulumi up --replace` of every server) keeps them."""

    def one(key: str, suffix: str) -> pulumi.Output[str]:
        if key in given:
            return pulumi.Output.secret(given[key])
        generated = random.RandomPassword(f"{name}-{suffix}", length=SECRET_LENGTH, special=False)
        return pulumi.Output.secret(generated.result)

    return StackSecrets(api_secret=one("apiSecret", "api-secret"), turn_secret=one("turnSecret", "turn-secret"),
                        token_key=one("tokenKey", "token-key"), call_password=one("callPassword", "call-password"))


def cloud_name(spec: EnvSpec, node: Node | None = None) -> str:
    """A name valid as hostname, Hetzner label value and DigitalOcean tag: `<env>-<node>`."""
    base = f"{spec.env}-{node.name}" if node else f"voicestack-{spec.env}"
    return re.sub(r"[^a-z0-9-]+", "-", base.lower()).strip("-")[:63]


def dns_slug(relative_name: str) -> str:
    return "apex" if relative_name == "@" else re.sub(r"[^a-z0-9-]+", "-", relative_name.lower())


def dns_targets(spec: EnvSpec, nodes: list[NodeAddresses],
                overrides: Mapping[str, list[pulumi.Input[str]]] | None = None,
                ) -> list[tuple[str, DnsRecord, list[pulumi.Input[str]]]]:
    """(name relative to the zone, record, addresses it points at) for each spec.dns_records entry:
    its nodes' public IPs, unless `overrides` (fully qualified name -> addresses) says otherwise."""
    by_name = {n.node.name: n for n in nodes}
    overrides = overrides or {}
    # A balanced record has no node addresses to fall back to: without the balancer's it would
    # silently list the nodes, which only the outputs check after `pulumi up` would notice.
    unpublished = [rec.name for _rel, rec in spec.dns_zone_records() if rec.balancer and not overrides.get(rec.name)]
    if unpublished:
        raise ValueError(f"{', '.join(unpublished)} must point at the load balancer, but the provider "
                         "published no balancer address for it")
    return [(rel, rec, list(overrides.get(rec.name) or [by_name[name].public_ip for name in rec.nodes]))
            for rel, rec in spec.dns_zone_records()]


def published_dns(spec: EnvSpec, nodes: list[NodeAddresses],
                  overrides: Mapping[str, list[pulumi.Input[str]]] | None = None) -> dict[str, list[pulumi.Input[str]]]:
    """The stack output `dns`: fully qualified name -> the addresses the records publish."""
    return {rec.name: ips for _rel, rec, ips in dns_targets(spec, nodes, overrides)}


def stack_outputs(spec: EnvSpec, nodes: list[NodeAddresses], secrets: StackSecrets,
                  info: Mapping[str, Any], dns: Mapping[str, list[pulumi.Input[str]]] | None = None) -> dict[str, Any]:
    """The stack outputs: the derived spec, each node's addresses and networking model, the
    published DNS, the secrets (secret outputs) and, with a load balancer, its public address.

    `infra.cloud.stack_outputs` assembles outputs.json from exactly these, plus the operator's
    private key path, which belongs to the machine that deploys, not to the state."""
    cfg = spec.config
    published = dict(dns) if dns is not None else published_dns(spec, nodes)
    # Only clusters get the key: a single node's outputs stay what they were.
    balancer = {"balancer_ip": balancer_address(spec, published)} if spec.balancer is not None else {}
    return {
        "spec": specmod.to_json(spec),
        "nodes": [{
            "name": n.node.name,
            "public_ip": n.public_ip,
            "private_ip": n.private_ip,
            "ssh_user": cfg.ssh_user,
            "roles": sorted(r.value for r in n.node.roles),
            "ssh_port": 22,
            "network": n.node.network,
            "interface_ip": n.interface_ip if n.interface_ip is not None else n.public_ip,
        } for n in nodes],
        "dns": published,
        **balancer,
        "api_secret": secrets.api_secret,
        "turn_secret": secrets.turn_secret,
        "token_key": secrets.token_key,
        "call_password": secrets.call_password,
        "info": dict(info),
    }


def balancer_address(spec: EnvSpec, dns: Mapping[str, list[pulumi.Input[str]]]) -> pulumi.Input[str]:
    """The balancer's public address: the one address its balanced record publishes."""
    record = next(r for r in spec.dns_records if r.balancer)
    (address,) = dns[record.name]
    return address


def export(outputs: Mapping[str, Any]) -> None:
    for key, value in outputs.items():
        pulumi.export(key, value)


def deploy_digest(spec: EnvSpec, deploy_dir: str = DEPLOY_MODULE) -> str:
    """sha256 of what the deploy reads besides the outputs: the spec and the deploy/ tree."""
    h = hashlib.sha256(json.dumps(specmod.to_json(spec), sort_keys=True).encode())
    root = ROOT / deploy_dir
    for path in sorted(root.rglob("*")) if root.is_dir() else []:
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
            h.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def _python() -> str:
    exe = os.path.abspath(sys.executable)
    # Relative to the checkout when it is the project's venv, so state does not pin one machine's path.
    return shlex.quote(os.path.relpath(exe, ROOT) if exe.startswith(str(ROOT) + os.sep) else exe)


def wants_chained_deploy(cfg: StackConfig) -> bool:
    """deployOnUp is for operators who run `pulumi up` alone. `make up` deploys as its own step
    and sets VOICESTACK_SKIP_CHAINED_DEPLOY, so the deploy never runs twice."""
    return cfg.deploy_on_up and not os.environ.get(SKIP_CHAINED_DEPLOY_ENV)


def chain_deploy(name: str, spec: EnvSpec, component: ProviderComponent,
                 outputs: Mapping[str, Any]) -> command.local.Command:
    """Run the deploy once the servers exist: write .stack/<env>/outputs.json, then `python -m deploy`.

    Re-runs when a server is replaced, when the spec or the deploy code changes, or when any
    output (an address, a secret) changes; `make deploy ENV=<stack>` runs it by hand any time.
    """
    py = _python()
    triggers: list[pulumi.Input[str]] = [n.server_id if n.server_id is not None else n.public_ip
                                         for n in component.nodes]
    triggers.append(deploy_digest(spec))
    return command.local.Command(
        f"{name}-deploy",
        create=f"{py} -m infra.cloud.stack_outputs --from-env && {py} -m {DEPLOY_MODULE} --env {shlex.quote(spec.env)}",
        dir=str(ROOT),
        environment={OUTPUTS_ENV: pulumi.Output.secret(pulumi.Output.json_dumps(dict(outputs)))},
        triggers=triggers,
        opts=pulumi.ResourceOptions(depends_on=[component], additional_secret_outputs=["stdout", "stderr"]),
    )
