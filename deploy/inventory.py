"""The deploy's inventory, built from `.stack/<env>/outputs.json` and nothing else.

The outputs name the hosts and hold the secrets; the settings come from the spec, rebuilt the
way the provisioner built it (`config_file`, or the built-in local defaults when it is "").
Everything a task needs for one node is gathered into one frozen `NodeVars` (host data key
`vs`), so tasks and templates never read outputs or config themselves.

Keys read from `outputs.extra` (all optional unless noted):
  admin_cidrs       list of CIDRs; the operator side, passed to local_defaults (local envs);
                    without it, operator_ip/32
  known_hosts       SSH known_hosts file for the nodes (default .stack/<env>/known_hosts)
  config_overrides  raw project keys merged into the local defaults (local envs only)
  acme_directory    ACME directory URL; required when acmeCa is "local"
  acme_ca_root      path on this machine of a PEM the nodes must trust for the ACME server
  artifacts         {"livekit": {"version", "url", "sha256"}}: overrides the manifest
  apt_proxy         http://host:port written as the nodes' apt proxy
  ssh_strict_host_key_checking   "accept-new" (default) | "no" | "yes"
  pip_index         a Python package index URL the nodes install the agent's wheels from
                    (local: the host's wheelhouse); without it pip uses its default index
"""
from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from infra import config as configmod
from infra import outputs as outputsmod
from infra.spec import EnvSpec, Node, Role, Scope, derive

DEPLOY_DIR = Path(__file__).resolve().parent
MANIFEST = DEPLOY_DIR / "artifacts.json"

ACME_DIRECTORIES = {
    "letsencrypt": "https://acme-v02.api.letsencrypt.org/directory",
    "letsencrypt-staging": "https://acme-staging-v02.api.letsencrypt.org/directory",
}
ARCHES = {"x86_64": "amd64", "aarch64": "arm64"}


class InventoryError(Exception):
    """The outputs or manifest cannot drive a deploy; the message says what to fix."""


@dataclass(frozen=True)
class Artifact:
    name: str
    version: str
    binary: str
    urls: dict[str, str]                 # arch (amd64|arm64) -> URL
    sha256: dict[str, str | None]        # arch -> sha256 (None: not pinned)

    def for_arch(self, arch: str) -> tuple[str, str]:
        """(url, sha256) for a Debian arch, or InventoryError when it is not pinned."""
        if arch not in self.urls:
            raise InventoryError(f"artifact {self.name} {self.version} has no build for {arch}; "
                                 f"known: {', '.join(sorted(self.urls))}")
        sha = self.sha256.get(arch)
        if not sha:
            raise InventoryError(
                f"artifact {self.name} {self.version} ({arch}) has no sha256 in {MANIFEST.name}; refusing to "
                f"install an unverified binary — download {self.urls[arch]}, check it against the release's "
                "checksums and record its sha256 in the manifest")
        return self.urls[arch], sha


@dataclass(frozen=True)
class Secrets:
    api_key: str
    api_secret: str
    turn_secret: str
    redis_password: str
    token_key: str = ""       # the bearer key of the token endpoint (agent nodes)

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
    livekit_peers: tuple[str, ...]       # every address a LiveKit node relays from (coturn allow-list)
    redis_address: str | None            # host:port of the cluster's Redis (several nodes)
    acme_directory: str
    acme_ca_root: str | None             # PEM text the node's Caddy trusts for the ACME server
    artifacts: dict[str, Artifact]
    apt_proxy: str | None
    pip_index: str | None = None         # index URL for the agent's venv (None: pip's default)
    # The LiveKit name points at every LiveKit node, but ACME HTTP-01 reaches only one of them
    # per validation: the first LiveKit node obtains the certificate, the others relay its
    # challenges to it (private network) and receive the certificate from the deploy.
    certificate_node: str = ""
    certificate_relay: str | None = None   # host:port of the certificate node's HTTP (followers)

    @property
    def is_certificate_node(self) -> bool:
        return self.node.name == self.certificate_node

    @property
    def cfg(self) -> configmod.StackConfig:
        return self.spec.config

    def bind_address(self, scope: Scope) -> str:
        """The address a listener of this scope binds on this node."""
        if scope is Scope.LOOPBACK:
            return "127.0.0.1"
        if scope is Scope.PRIVATE:
            if not self.private_ip:
                raise InventoryError(f"{self.node.name} has no private IP but a private port must bind on it")
            return self.private_ip
        return self.public_ip

    @property
    def serves_turn_name(self) -> bool:
        """This node answers for the TURN name (DNS points at it), so it holds the TURN certificate."""
        record = next(r for r in self.spec.dns_records if r.name == self.cfg.turn_host)
        return self.node.name in record.nodes


def spec_from_outputs(out: outputsmod.Outputs) -> EnvSpec:
    """Rebuild the spec the provisioner used: its stack file, or the built-in local defaults."""
    extra = out.extra or {}
    if out.config_file:
        _stack, raw = configmod.load_stack_file(out.config_file)
        cfg = configmod.parse(raw, env=out.env)
    else:
        admin = extra.get("admin_cidrs") or ([f"{extra['operator_ip']}/32"] if extra.get("operator_ip") else [])
        cfg = configmod.local_defaults(out.env, node_count=len(out.nodes), admin_cidrs=tuple(admin),
                                       **dict(extra.get("config_overrides") or {}))
    return derive(cfg)


def load_manifest(path: Path = MANIFEST) -> dict[str, Artifact]:
    doc = json.loads(path.read_text())
    arts = {}
    for name, entry in doc.items():
        if name.startswith("_"):
            continue
        version = entry["version"]
        urls = {arch: entry["url"].format(version=version, arch=arch) for arch in entry["sha256"]}
        arts[name] = Artifact(name, version, entry.get("binary", name), urls, dict(entry["sha256"]))
    return arts


def _artifacts(cfg: configmod.StackConfig, extra: dict[str, Any]) -> dict[str, Artifact]:
    arts = load_manifest()
    for name, override in (extra.get("artifacts") or {}).items():
        base = arts.get(name)
        version = str(override.get("version") or (base.version if base else ""))
        binary = base.binary if base else name
        # A local environment builds one architecture; its URL and sha256 stand for every arch.
        arts[name] = Artifact(name, version, binary, {a: override["url"] for a in ARCHES.values()},
                              {a: override.get("sha256") for a in ARCHES.values()})
    lk = arts.get("livekit")
    if lk is None or lk.version != cfg.livekit_version:
        have = lk.version if lk else "none"
        raise InventoryError(f"livekitVersion is {cfg.livekit_version} but the artifact manifest pins {have}; "
                             f"add version {cfg.livekit_version} (URL and sha256) to {MANIFEST}")
    return arts


def _acme_directory(cfg: configmod.StackConfig, extra: dict[str, Any]) -> str:
    if cfg.acme_ca in ACME_DIRECTORIES:
        return ACME_DIRECTORIES[cfg.acme_ca]
    if cfg.acme_ca.startswith("https://"):
        return cfg.acme_ca
    directory = extra.get("acme_directory")
    if not directory:
        raise InventoryError(f"acmeCa is {cfg.acme_ca!r} but the outputs have no extra.acme_directory; "
                             "re-run the local environment's 'up' so it records its ACME server")
    return str(directory)


def redis_password(api_secret: str) -> str:
    """Redis' requirepass, derived from the API secret (HMAC), so no extra secret must be stored.

    It rotates with the API secret; nothing outside the deploy needs to know it.
    """
    return hmac.new(api_secret.encode(), b"voicestack/redis/requirepass", hashlib.sha256).hexdigest()


def node_vars(out: outputsmod.Outputs, spec: EnvSpec | None = None) -> dict[str, NodeVars]:
    """NodeVars for every node of the outputs, keyed by node name."""
    spec = spec or spec_from_outputs(out)
    extra = out.extra or {}
    by_name = {n.name: n for n in out.nodes}
    missing = [n.name for n in spec.nodes if n.name not in by_name]
    if missing or len(by_name) != len(spec.nodes):
        raise InventoryError(f"the outputs list nodes {sorted(by_name)} but the spec has "
                             f"{[n.name for n in spec.nodes]}; re-run the provisioner so they agree")
    for n in out.nodes:
        try:
            ipaddress.ip_address(n.public_ip)
        except ValueError as exc:
            raise InventoryError(f"node {n.name}: public_ip {n.public_ip!r} is not an IP address") from exc
    if not out.turn_secret:
        raise InventoryError("the outputs have no turn_secret; coturn and LiveKit need the shared TURN secret")
    secrets = Secrets(out.api_key, out.api_secret, out.turn_secret, redis_password(out.api_secret),
                      token_key=out.token_key)
    lk_nodes = spec.nodes_with(Role.LIVEKIT)
    peers: list[str] = []
    for n in lk_nodes:
        o = by_name[n.name]
        peers += [o.public_ip] + ([o.private_ip] if o.private_ip else [])
    redis_node = spec.redis_node
    redis_address = None
    if redis_node is not None:
        rip = by_name[redis_node.name].private_ip or redis_node.private_ip
        redis_address = f"{rip}:{spec.port('redis').start}"
    ca_root = None
    if extra.get("acme_ca_root"):
        p = Path(extra["acme_ca_root"])
        if not p.is_file():
            raise InventoryError(f"extra.acme_ca_root {p} does not exist")
        ca_root = p.read_text()
    acme = _acme_directory(spec.config, extra)
    arts = _artifacts(spec.config, extra)
    leader = lk_nodes[0] if lk_nodes else None
    relay = None
    if leader is not None and spec.multi_node:
        lip = by_name[leader.name].private_ip or leader.private_ip
        relay = f"{lip}:{spec.port('http').start}"
    result = {}
    for node in spec.nodes:
        o = by_name[node.name]
        result[node.name] = NodeVars(
            spec=spec, node=node, public_ip=o.public_ip, private_ip=o.private_ip or node.private_ip,
            secrets=secrets, livekit_peers=tuple(dict.fromkeys(peers)), redis_address=redis_address,
            acme_directory=acme, acme_ca_root=ca_root, artifacts=arts, apt_proxy=extra.get("apt_proxy"),
            pip_index=extra.get("pip_index") or None,
            certificate_node=leader.name if leader else "",
            certificate_relay=relay if leader is not None and node.name != leader.name else None)
    return result


def known_hosts_file(env: str) -> Path:
    return outputsmod.STACK_DIR / env / "known_hosts"


def build(env: str, connect_timeout: int = 5):
    """(outputs, spec, pyinfra Inventory) for an environment; InventoryError when it cannot deploy."""
    from pyinfra.api import Inventory

    try:
        out = outputsmod.read(env)
    except outputsmod.OutputsError as exc:
        raise InventoryError(str(exc)) from exc
    try:
        spec = spec_from_outputs(out)
    except configmod.ConfigError as exc:
        raise InventoryError(f"the environment's configuration is invalid:\n{exc}") from exc
    nv = node_vars(out, spec)
    extra = out.extra or {}
    kh = Path(extra["known_hosts"]) if extra.get("known_hosts") else known_hosts_file(env)
    kh.parent.mkdir(parents=True, exist_ok=True)
    kh.touch(mode=0o600, exist_ok=True)
    hosts = []
    for n in out.nodes:
        key = Path(n.ssh_key).expanduser()
        if not key.is_file():
            raise InventoryError(f"node {n.name}: SSH key {key} does not exist")
        hosts.append((n.name, {
            "ssh_hostname": n.public_ip,
            "ssh_port": n.ssh_port,
            "ssh_user": n.ssh_user,
            "ssh_key": str(key),
            "ssh_known_hosts_file": str(kh),
            "ssh_strict_host_key_checking": extra.get("ssh_strict_host_key_checking", "accept-new"),
            "ssh_paramiko_connect_kwargs": {"banner_timeout": connect_timeout, "auth_timeout": connect_timeout},
            "vs": nv[n.name],
        }))
    return out, spec, Inventory((hosts, {}))
