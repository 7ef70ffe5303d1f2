"""One stack's configuration, read once into a frozen StackConfig and validated as a whole.

Every config read of the project happens here. The raw form is a flat mapping of the
project's keys (``Pulumi.<stack>.yaml`` minus the ``voicestack:`` prefix, or ``pulumi.Config``
values, or the built-in local defaults). Validation collects *every* problem before anything
is created, each naming its key and the fix.
"""
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from infra.providers import PROVIDERS, Provider

PROJECT = "voicestack"
MIN_API_SECRET = 32
MIN_TURN_SECRET = 32
MIN_TOKEN_KEY = 24

_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
_API_KEY = re.compile(r"^[A-Za-z0-9_-]{3,64}$")
_NODE_NAME = re.compile(r"^[a-z][a-z0-9-]{0,30}$")
_SSH_PUBLIC_KEY = re.compile(r"^(ssh-(ed25519|rsa)|ecdsa-sha2-nistp(256|384|521)|sk-ssh-ed25519@openssh\.com) [A-Za-z0-9+/]+=*( .*)?$")


class ConfigError(Exception):
    """Raised with every problem of a stack configuration at once."""

    def __init__(self, problems: list[tuple[str, str]]):
        self.problems = problems
        super().__init__("\n".join(f"{key}: {msg}" for key, msg in problems))


@dataclass(frozen=True)
class SecretValue:
    """A secret from config: plain text (checked), encrypted by Pulumi (opaque), or unset."""

    plain: str | None = None
    encrypted: bool = False

    @property
    def is_set(self) -> bool:
        return self.plain is not None or self.encrypted

    def __repr__(self) -> str:  # never print secrets
        return "SecretValue(<set>)" if self.is_set else "SecretValue(<unset>)"


@dataclass(frozen=True)
class HostEntry:
    """A server the operator brings (provider 'existing' and friends)."""

    name: str
    public_ip: str
    private_ip: str | None = None


@dataclass(frozen=True)
class StackConfig:
    env: str
    provider: str
    region: str
    server_type: str
    node_count: int
    domain: str
    livekit_host: str
    turn_host: str
    admin_cidrs: tuple[str, ...]
    allow_world_ssh: bool
    private_network: str | None
    ice_mode: str  # "range" | "mux"
    ice_port_start: int
    ice_port_end: int
    ice_udp_port: int
    livekit_http_port: int
    livekit_tcp_port: int
    livekit_prometheus_port: int
    turn_udp_port: int
    turn_tls_port: int
    turn_relay_start: int
    turn_relay_end: int
    redis_port: int
    webhook_urls: tuple[str, ...]
    stt_url: str
    llm_url: str
    tts_url: str
    agent_name: str
    agent_workers: int
    acme_ca: str
    acme_email: str
    livekit_version: str
    api_key: str
    api_secret: SecretValue
    turn_secret: SecretValue
    token_key: SecretValue
    ssh_user: str
    ssh_public_key: str
    hosts: tuple[HostEntry, ...] = ()
    warnings: tuple[str, ...] = field(default=(), compare=False)

    @property
    def provider_info(self) -> Provider:
        return PROVIDERS[self.provider]


# key -> (attribute, default). Defaults are the operator-facing ones; Pulumi.yaml mirrors them.
DEFAULTS: dict[str, Any] = {
    "provider": "local",
    "region": "",
    "serverType": "",
    "nodeCount": 1,
    "domain": "voice.test",
    "livekitHost": "",
    "turnHost": "",
    "adminCidrs": [],
    "allowWorldSsh": False,
    "privateNetwork": "10.77.0.0/24",
    "iceMode": "range",
    "icePortStart": 50000,
    "icePortEnd": 60000,
    "iceUdpPort": 7882,
    "livekitHttpPort": 7880,
    "livekitTcpPort": 7881,
    "livekitPrometheusPort": 6789,
    "turnUdpPort": 3478,
    "turnTlsPort": 443,
    "turnRelayStart": 40000,
    "turnRelayEnd": 49999,
    "redisPort": 6379,
    "webhookUrls": [],
    "sttUrl": "",
    "llmUrl": "",
    "ttsUrl": "",
    "agentName": "",
    "agentWorkers": 1,
    "acmeCa": "letsencrypt",
    "acmeEmail": "",
    "livekitVersion": "1.13.5",
    "apiKey": "APIvoicestack",
    "apiSecret": None,
    "turnSecret": None,
    "tokenKey": None,
    "sshUser": "root",
    "sshPublicKey": "",
    "hosts": [],
}

ACME_CAS = {"letsencrypt", "letsencrypt-staging", "local"}
LOCAL_SPEECH_URL = "http://127.0.0.1:8000/v1"


def load_stack_file(path: str | Path) -> tuple[str, dict[str, Any]]:
    """Read ``Pulumi.<stack>.yaml`` into (stack name, raw project keys)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError([("CONFIG", f"{p} does not exist; pass a Pulumi.<stack>.yaml file")])
    try:
        doc = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError([("CONFIG", f"{p} is not valid YAML: {exc}")]) from exc
    stack = p.name.removeprefix("Pulumi.").removesuffix(".yaml").removesuffix(".yml") or "dev"
    raw: dict[str, Any] = {}
    for key, value in (doc.get("config") or {}).items():
        ns, _, name = str(key).partition(":")
        if name and ns == PROJECT:
            raw[name] = value
        elif not name:
            raw[ns] = value
    return stack, raw


def _secret(value: Any) -> SecretValue:
    if value is None or value == "":
        return SecretValue()
    if isinstance(value, Mapping) and "secure" in value:
        return SecretValue(encrypted=True)
    return SecretValue(plain=str(value))


def is_fqdn(name: str) -> bool:
    if not name or len(name) > 253 or "." not in name.rstrip("."):
        return False
    labels = name.rstrip(".").split(".")
    return all(_LABEL.match(label) for label in labels) and not labels[-1].isdigit()


class _Checker:
    """Collects problems; each names its key and says how to fix it."""

    def __init__(self) -> None:
        self.problems: list[tuple[str, str]] = []

    def add(self, key: str, msg: str) -> None:
        self.problems.append((key, msg))

    def int_in(self, raw: Mapping[str, Any], key: str, lo: int, hi: int) -> int:
        value = raw.get(key, DEFAULTS[key])
        try:
            number = int(value)
            if isinstance(value, bool) or str(number) != str(value).strip():
                raise ValueError
        except (TypeError, ValueError):
            self.add(key, f"{value!r} is not an integer; use a number between {lo} and {hi}")
            return int(DEFAULTS[key])
        if not lo <= number <= hi:
            self.add(key, f"{number} is out of range; use a number between {lo} and {hi}")
        return number

    def str_list(self, raw: Mapping[str, Any], key: str) -> tuple[str, ...]:
        value = raw.get(key, DEFAULTS[key]) or []
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            self.add(key, f"{value!r} is not a list of strings; write a YAML list")
            return ()
        return tuple(value)


def parse(raw: Mapping[str, Any], env: str = "local") -> StackConfig:
    """Validate raw project keys into a StackConfig, or raise ConfigError with every problem."""
    c = _Checker()
    warnings: list[str] = []
    unknown = sorted(set(raw) - set(DEFAULTS))
    for key in unknown:
        c.add(key, f"unknown setting; known settings are: {', '.join(sorted(DEFAULTS))}")

    provider_name = str(raw.get("provider", DEFAULTS["provider"])).lower()
    provider = PROVIDERS.get(provider_name)
    if provider is None:
        c.add("provider", f"unknown provider {provider_name!r}; use one of {', '.join(sorted(PROVIDERS))}")
        provider = PROVIDERS["local"]
    elif provider.refused:
        c.add("provider", f"{provider_name} is refused: {provider.refused}")
    if provider.warning:
        warnings.append(provider.warning)

    region = str(raw.get("region") or provider.default_region)
    if provider.regions and region not in provider.regions:
        c.add("region", f"{region!r} is not a {provider.name} region; use one of {', '.join(sorted(provider.regions))}")
    server_type = str(raw.get("serverType") or provider.default_server_type)
    if provider.server_types and server_type not in provider.server_types:
        c.add("serverType", f"{server_type!r} is not a {provider.name} server type; use one of "
              f"{', '.join(sorted(provider.server_types))}")

    node_count = c.int_in(raw, "nodeCount", 1, 20)

    domain = str(raw.get("domain", DEFAULTS["domain"])).lower().rstrip(".")
    if not is_fqdn(domain):
        c.add("domain", f"{domain!r} is not a valid domain name; use e.g. example.com")
    livekit_host = str(raw.get("livekitHost") or f"livekit.{domain}").lower().rstrip(".")
    turn_host = str(raw.get("turnHost") or f"turn.{domain}").lower().rstrip(".")
    for key, host in (("livekitHost", livekit_host), ("turnHost", turn_host)):
        if not is_fqdn(host):
            c.add(key, f"{host!r} is not a valid fully qualified domain name; use e.g. {key[:-4].lower()}.example.com")
    if provider.kind in ("hetzner", "digitalocean"):
        # The Pulumi program manages the zone `domain`; names outside it would never resolve.
        for key, host in (("livekitHost", livekit_host), ("turnHost", turn_host)):
            if is_fqdn(host) and is_fqdn(domain) and not host.endswith("." + domain):
                c.add(key, f"{host!r} is outside the DNS zone {domain!r} that {provider.name} manages; "
                      f"use a name under it, e.g. {key[:-4].lower()}.{domain}")
    ssh_key = str(raw.get("sshPublicKey", "") or "")
    if ssh_key and not _SSH_PUBLIC_KEY.match(ssh_key):
        c.add("sshPublicKey", f"{ssh_key[:20]!r} is not an OpenSSH public key; the servers are created with it — "
              "paste the contents of ~/.ssh/id_ed25519.pub (pulumi config set sshPublicKey \"$(cat ~/.ssh/id_ed25519.pub)\")")
    if livekit_host == turn_host:
        c.add("turnHost", f"equals livekitHost ({turn_host}); TURN needs its own name for its TLS certificate "
              "and the SNI split on 443, e.g. turn." + domain)

    admin_cidrs = c.str_list(raw, "adminCidrs")
    allow_world_ssh = raw.get("allowWorldSsh", False)
    if not isinstance(allow_world_ssh, bool):
        c.add("allowWorldSsh", f"{allow_world_ssh!r} is not true or false")
        allow_world_ssh = False
    for cidr in admin_cidrs:
        try:
            net = ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            c.add("adminCidrs", f"{cidr!r} is not a CIDR; use e.g. 198.51.100.7/32")
            continue
        if net.prefixlen == 0 and not allow_world_ssh:
            c.add("adminCidrs", f"{cidr} opens SSH to the whole internet; list your admin networks, "
                  "or set allowWorldSsh: true to accept that risk")
    if provider.kind in ("hetzner", "digitalocean") and not admin_cidrs and not allow_world_ssh:
        c.add("adminCidrs", "is empty, so nobody could SSH in to deploy; add your admin address, e.g. 198.51.100.7/32")

    private_network = raw.get("privateNetwork", DEFAULTS["privateNetwork"]) or None
    if private_network is not None:
        try:
            net = ipaddress.ip_network(str(private_network))
            if not net.is_private or net.version != 4 or net.num_addresses < 8:
                raise ValueError
        except ValueError:
            c.add("privateNetwork", f"{private_network!r} is not a private IPv4 network of at least 8 addresses; "
                  "use e.g. 10.77.0.0/24")
            private_network = None
    if node_count > 1 and not private_network:
        c.add("privateNetwork", f"nodeCount is {node_count} but no private network is set; several nodes need one "
              "for Redis and node-to-node traffic, e.g. 10.77.0.0/24")

    ice_mode = str(raw.get("iceMode", DEFAULTS["iceMode"]))
    if ice_mode not in ("range", "mux"):
        c.add("iceMode", f"{ice_mode!r} is not 'range' (port range) or 'mux' (one UDP port)")
    ports = {k: c.int_in(raw, k, 1, 65535) for k in (
        "icePortStart", "icePortEnd", "iceUdpPort", "livekitHttpPort", "livekitTcpPort",
        "livekitPrometheusPort", "turnUdpPort", "turnTlsPort", "turnRelayStart", "turnRelayEnd", "redisPort")}
    for lo, hi in (("icePortStart", "icePortEnd"), ("turnRelayStart", "turnRelayEnd")):
        if ports[lo] > ports[hi]:
            c.add(lo, f"{ports[lo]} is above {hi} {ports[hi]}; the range must run upwards")
    for key in ("icePortStart", "iceUdpPort", "livekitTcpPort", "turnRelayStart"):
        if ports[key] < 1024:
            c.add(key, f"{ports[key]} is a privileged port; LiveKit and coturn need 1024 or above here")

    webhook_urls = c.str_list(raw, "webhookUrls")
    for url in webhook_urls:
        if not re.match(r"^https?://[^\s/]+", url):
            c.add("webhookUrls", f"{url!r} is not an http(s) URL")
    backend_urls = {}
    for key in ("sttUrl", "llmUrl", "ttsUrl"):
        url = str(raw.get(key) or LOCAL_SPEECH_URL)
        if not re.match(r"^https?://[^\s/]+", url):
            c.add(key, f"{url!r} is not an http(s) URL of an OpenAI-compatible API, e.g. http://127.0.0.1:8000/v1")
        backend_urls[key] = url

    acme_ca = str(raw.get("acmeCa", DEFAULTS["acmeCa"]))
    if acme_ca not in ACME_CAS and not acme_ca.startswith("https://"):
        c.add("acmeCa", f"{acme_ca!r} is not one of {', '.join(sorted(ACME_CAS))} or an https:// ACME directory URL")

    api_key = str(raw.get("apiKey", DEFAULTS["apiKey"]))
    if not _API_KEY.match(api_key):
        c.add("apiKey", f"{api_key!r} must be 3-64 letters, digits, '-' or '_'")
    secrets = {}
    for key, minimum in (("apiSecret", MIN_API_SECRET), ("turnSecret", MIN_TURN_SECRET), ("tokenKey", MIN_TOKEN_KEY)):
        value = _secret(raw.get(key))
        secrets[key] = value
        if value.plain is not None and len(value.plain) < minimum:
            c.add(key, f"is {len(value.plain)} characters; at least {minimum} are needed — generate one with "
                  f"\"openssl rand -hex 32\" and store it with \"pulumi config set --secret {key} ...\"")

    hosts: list[HostEntry] = []
    raw_hosts = raw.get("hosts", []) or []
    if not isinstance(raw_hosts, list):
        c.add("hosts", "must be a list of {name, publicIp, privateIp?}")
        raw_hosts = []
    for i, entry in enumerate(raw_hosts):
        if not isinstance(entry, Mapping) or "publicIp" not in entry:
            c.add(f"hosts[{i}]", "needs at least publicIp (and name, privateIp when there are several)")
            continue
        name = str(entry.get("name") or f"node-{i + 1}")
        try:
            ipaddress.ip_address(str(entry["publicIp"]))
            if entry.get("privateIp"):
                ipaddress.ip_address(str(entry["privateIp"]))
        except ValueError as exc:
            c.add(f"hosts[{i}]", f"{exc}")
            continue
        if not _NODE_NAME.match(name):
            c.add(f"hosts[{i}].name", f"{name!r} must be lower-case letters, digits and '-'")
        hosts.append(HostEntry(name, str(entry["publicIp"]), entry.get("privateIp")))
    if provider.kind == "existing":
        if not hosts:
            c.add("hosts", f"provider {provider.name} brings its own servers; list them as hosts: "
                  "[{name: node-1, publicIp: 203.0.113.10}]")
        elif len(hosts) != node_count:
            c.add("nodeCount", f"is {node_count} but {len(hosts)} hosts are listed; make them agree")
    elif hosts:
        c.add("hosts", f"is only used with bring-your-own providers, not {provider.name}")

    agent_workers = c.int_in(raw, "agentWorkers", 1, 64)
    agent_name = str(raw.get("agentName", "") or "")
    if agent_name and not re.match(r"^[A-Za-z0-9_-]{1,64}$", agent_name):
        c.add("agentName", f"{agent_name!r} must be letters, digits, '-' or '_'")

    cfg = StackConfig(
        env=env,
        provider=provider.name,
        region=region,
        server_type=server_type,
        node_count=node_count,
        domain=domain,
        livekit_host=livekit_host,
        turn_host=turn_host,
        admin_cidrs=admin_cidrs,
        allow_world_ssh=allow_world_ssh,
        private_network=str(private_network) if private_network else None,
        ice_mode=ice_mode,
        ice_port_start=ports["icePortStart"],
        ice_port_end=ports["icePortEnd"],
        ice_udp_port=ports["iceUdpPort"],
        livekit_http_port=ports["livekitHttpPort"],
        livekit_tcp_port=ports["livekitTcpPort"],
        livekit_prometheus_port=ports["livekitPrometheusPort"],
        turn_udp_port=ports["turnUdpPort"],
        turn_tls_port=ports["turnTlsPort"],
        turn_relay_start=ports["turnRelayStart"],
        turn_relay_end=ports["turnRelayEnd"],
        redis_port=ports["redisPort"],
        webhook_urls=webhook_urls,
        stt_url=backend_urls["sttUrl"],
        llm_url=backend_urls["llmUrl"],
        tts_url=backend_urls["ttsUrl"],
        agent_name=agent_name,
        agent_workers=agent_workers,
        acme_ca=acme_ca,
        acme_email=str(raw.get("acmeEmail", "") or ""),
        livekit_version=str(raw.get("livekitVersion", DEFAULTS["livekitVersion"])),
        api_key=api_key,
        api_secret=secrets["apiSecret"],
        turn_secret=secrets["turnSecret"],
        token_key=secrets["tokenKey"],
        ssh_user=str(raw.get("sshUser", "root")),
        ssh_public_key=str(raw.get("sshPublicKey", "") or ""),
        hosts=tuple(hosts),
        warnings=tuple(warnings),
    )
    from infra.spec import port_problems  # the spec owns the port plan; check it with everything else

    problems = c.problems + port_problems(cfg)
    if problems:
        raise ConfigError(problems)
    return cfg


def local_raw(env: str = "local", node_count: int = 1, admin_cidrs: tuple[str, ...] = (),
              **overrides: Any) -> dict[str, Any]:
    """The raw keys of the embedded default environment (kept in outputs so verify rebuilds the spec)."""
    raw: dict[str, Any] = {"provider": "local", "domain": f"{env}.test", "nodeCount": node_count,
                           "adminCidrs": list(admin_cidrs), "acmeCa": "local"}
    raw.update(overrides)
    return raw


def local_defaults(env: str = "local", node_count: int = 1, admin_cidrs: tuple[str, ...] = (),
                   **overrides: Any) -> StackConfig:
    """The embedded default environment: local machines, a `<env>.test` zone, the local ACME CA.

    `admin_cidrs` is the operator side of the emulated internet (the host), which deploys over SSH.
    """
    return parse(local_raw(env, node_count, admin_cidrs, **overrides), env=env)
