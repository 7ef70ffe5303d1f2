"""One stack's configuration, read once into a frozen StackConfig and validated as a whole.

Every config read of the project happens here. The raw form is a flat mapping of the
project's keys (``Pulumi.<stack>.yaml`` minus the ``voicestack:`` prefix, or ``pulumi.Config``
values, or the built-in local defaults). One table, ``SETTINGS``, names every key with its
kind, default and description; it produces ``DEFAULTS``, drives the type checks and is what
``Pulumi.yaml``'s schema is tested against. Then one small check per concern adds what the
types cannot say. Validation collects *every* problem before anything is created, each naming
its key and the fix. The port plan and the artifact manifest are checked by
``infra.validate.load_spec``, the one entry point that callers use.
"""
from __future__ import annotations

import ipaddress
import re
import unicodedata
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Mapping

import yaml

from infra.providers import PROVIDERS, Provider

PROJECT = "voicestack"
MIN_API_SECRET = 32
MIN_TURN_SECRET = 32
MIN_TOKEN_KEY = 24
MIN_CALL_PASSWORD = 16
SECRET_KEYS = ("apiSecret", "turnSecret", "tokenKey", "callPassword")
LOCAL_SPEECH_URL = "http://127.0.0.1:8000/v1"
ACME_CAS = frozenset({"letsencrypt", "letsencrypt-staging", "local"})
#: How a node's public address reaches it: on its interface, or mapped 1:1 by the cloud (AWS/GCP).
NETWORK_MODELS = ("direct", "nat")
#: Who records what (agent/recording_config.py POLICIES; a unit test holds the two together).
RECORDING_POLICIES = ("off", "agent-calls", "rooms")

_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
_API_KEY = re.compile(r"^[A-Za-z0-9_-]{3,64}$")
_NODE_NAME = re.compile(r"^[a-z][a-z0-9-]{0,30}$")
_URL = re.compile(r"^https?://[^\s/]+")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_VERSION = re.compile(r"^\d+\.\d+\.\d+$")
_SSH_USER = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
_AGENT_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_CALL_USER = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_SSH_PUBLIC_KEY = re.compile(r"^(ssh-(ed25519|rsa)|ecdsa-sha2-nistp(256|384|521)|sk-ssh-ed25519@openssh\.com) "
                             r"[A-Za-z0-9+/]+=*( .*)?$")


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
    #: The address on the host's public-facing interface when the provider maps the public one
    #: to it (1:1 NAT); None: the public address is on the interface.
    interface_ip: str | None = None


@dataclass(frozen=True)
class Setting:
    """One stack key: its kind decides the type check, `lo`/`hi` bound integers."""

    key: str
    kind: str  # str | int | bool | list | secret | hosts
    default: Any
    description: str = ""
    lo: int = 0
    hi: int = 0

    @property
    def attr(self) -> str:
        """The StackConfig field: the camelCase key in snake_case."""
        return re.sub(r"(?<!^)(?=[A-Z])", "_", self.key).lower()


def _port(key: str, default: int, description: str = "") -> Setting:
    return Setting(key, "int", default, description, 1, 65535)


SETTINGS: tuple[Setting, ...] = (
    Setting("provider", "str", "local",
            "hetzner | digitalocean | existing (bring your own hosts) | local (machines on this host)"),
    Setting("region", "str", "", "Hetzner location (nbg1, fsn1, hel1, ash, hil, sin) or DigitalOcean region "
            "(fra1, ams3, ...); empty = provider default"),
    Setting("serverType", "str", "", "cx23, cpx31, ... / s-2vcpu-4gb, ...; empty = provider default"),
    Setting("nodeCount", "int", 1, "LiveKit nodes; more than one adds Redis and the private network", 1, 20),
    Setting("domain", "str", "voice.test", "DNS zone the stack manages (delegate it to the provider's nameservers); "
            "local: <env>.test"),
    Setting("livekitHost", "str", "", "LiveKit name; empty = livekit.<domain>"),
    Setting("turnHost", "str", "", "TURN name; empty = turn.<domain>"),
    Setting("adminCidrs", "list", [], "Networks allowed to SSH in (the only source of port 22)"),
    Setting("allowWorldSsh", "bool", False, "Accept SSH from the whole internet (not recommended)"),
    Setting("privateNetwork", "str", "10.77.0.0/24", "Private IPv4 network between nodes"),
    Setting("network", "str", "direct", "direct (the public address is on the interface: Hetzner, DigitalOcean, bare "
            "metal) | nat (1:1 NAT: the interface holds a private address, e.g. AWS/GCP); provider existing: set "
            "interfaceIp per host instead"),
    Setting("blockUdp", "bool", False, "local only: the emulated cloud drops all UDP from the internet, like a "
            "provider that blocks UDP (media must use TURN/TLS 443 or ICE/TCP)"),
    Setting("iceMode", "str", "range", "range (UDP port range) or mux (one UDP port)"),
    _port("icePortStart", 50000),
    _port("icePortEnd", 60000),
    _port("iceUdpPort", 7882),
    _port("livekitHttpPort", 7880),
    _port("livekitTcpPort", 7881),
    _port("livekitPrometheusPort", 6789),
    _port("turnUdpPort", 3478),
    _port("turnTlsPort", 443),
    _port("turnRelayStart", 40000),
    _port("turnRelayEnd", 49999),
    _port("redisPort", 6379),
    Setting("webhookUrls", "list", [], "Extra receivers of LiveKit's webhooks (the node's own receiver is always on)"),
    Setting("sttUrl", "str", "", "OpenAI-compatible speech-to-text API; empty = the node's offline backend"),
    Setting("llmUrl", "str", "", "OpenAI-compatible chat API; empty = the node's offline responder"),
    Setting("ttsUrl", "str", "", "OpenAI-compatible text-to-speech API; empty = the node's offline backend"),
    Setting("agentName", "str", "", "Explicit agent dispatch name; empty = the agent joins every room"),
    Setting("agentWorkers", "int", 1, "Warm agent job processes per node", 1, 64),
    Setting("recording", "str", "off", "off | agent-calls (each call with the voice agent, and rooms that ask) | "
            "rooms (every room, one file per audio track); recordings, transcripts and summaries stay on the node"),
    Setting("recordingRetentionDays", "int", 30, "Days a recording is kept on the node before it is deleted; "
            "0 = forever", 0, 3650),
    Setting("forwardUrl", "str", "", "Where the webhook receiver forwards LiveKit's events and recording_finished, "
            "signed with forward_secret (e.g. an n8n webhook); empty = nothing is forwarded"),
    Setting("actionUrl", "str", "", "Where the agent sends the device intents it hears (voice actions), signed "
            "with forward_secret like forwarded events (e.g. the n8n voice-action webhook); it speaks the "
            "answer. Empty = the offline responder answers on its own"),
    Setting("acmeCa", "str", "letsencrypt", "letsencrypt | letsencrypt-staging | local | https://<ACME directory>"),
    Setting("acmeEmail", "str", "", "Contact address for the ACME account"),
    Setting("livekitVersion", "str", "1.13.5", "livekit-server release; must be pinned in deploy/artifacts.json"),
    Setting("caddyVersion", "str", "2.11.4", "Caddy release (>= 2.7: the proxy_protocol listener wrapper); "
            "must be pinned in deploy/artifacts.json"),
    Setting("callPublic", "bool", False, "Voice page /call/ in public demo mode: no password, keyless short-lived "
            "tokens for fresh rooms (default: private, behind basic auth)"),
    Setting("callUser", "str", "voicestack", "Basic-auth user of the private voice page /call/"),
    Setting("edgeConnsPerAddress", "int", 100, "TCP connections one client address may hold open on 443 "
            "(nginx limit_conn, with TURN/TLS on 443)", 4, 100000),
    Setting("livekitStopTimeout", "int", 120, "Seconds a LiveKit restart (deploy, upgrade) waits for calls to end "
            "before it kills the server; clients then reconnect", 10, 86400),
    Setting("apiKey", "str", "APIvoicestack", "LiveKit API key name"),
    Setting("apiSecret", "secret", None, "SECRET (set with --secret); empty = generated once, kept in state"),
    Setting("turnSecret", "secret", None, "SECRET (set with --secret); empty = generated once, kept in state"),
    Setting("tokenKey", "secret", None, "SECRET (set with --secret); empty = generated once, kept in state"),
    Setting("callPassword", "secret", None, "SECRET (set with --secret): basic-auth password of the voice page; "
            "empty = generated once, kept in state"),
    Setting("sshUser", "str", "root", "User the deploy logs in as (root: cloud-init installs the key for root)"),
    Setting("sshPublicKey", "str", "", "OpenSSH public key the servers are created with "
            "(required for hetzner/digitalocean)"),
    Setting("hosts", "hosts", [], "provider existing: the hosts you bring, "
            "[{name: node-1, publicIp: 203.0.113.10, privateIp: 10.0.0.2, interfaceIp: 172.31.5.9}] "
            "(interfaceIp only behind 1:1 NAT: the address on the host's interface)"),
    Setting("deployOnUp", "bool", False, "Run the deploy inside `pulumi up` (for operators who run pulumi alone; "
            "make up always deploys as its own step)"),
)
BY_KEY: dict[str, Setting] = {s.key: s for s in SETTINGS}
DEFAULTS: dict[str, Any] = {s.key: s.default for s in SETTINGS}


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
    network: str  # "direct" | "nat" (provider existing: per host, see HostEntry.interface_ip)
    block_udp: bool
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
    caddy_version: str
    call_public: bool
    call_user: str
    edge_conns_per_address: int
    api_key: str
    api_secret: SecretValue
    turn_secret: SecretValue
    token_key: SecretValue
    call_password: SecretValue
    ssh_user: str
    ssh_public_key: str
    hosts: tuple[HostEntry, ...] = ()
    deploy_on_up: bool = False
    livekit_stop_timeout: int = 120
    recording: str = "off"
    recording_retention_days: int = 30
    forward_url: str = ""
    action_url: str = ""
    warnings: tuple[str, ...] = field(default=(), compare=False)

    @property
    def provider_info(self) -> Provider:
        return PROVIDERS[self.provider]


def load_stack_file(path: str | Path) -> tuple[str, dict[str, Any]]:
    """Read ``Pulumi.<stack>.yaml`` into (stack name, raw project keys)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError([("CONFIG", f"{p} does not exist; pass a Pulumi.<stack>.yaml file")])
    try:
        doc = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError([("CONFIG", f"{p} is not valid YAML: {exc}")]) from exc
    if not isinstance(doc, Mapping):
        raise ConfigError([("CONFIG", f"{p} is not a Pulumi stack file (a mapping with a 'config:' section)")])
    stack = p.name.removeprefix("Pulumi.").removesuffix(".yaml").removesuffix(".yml") or "dev"
    raw: dict[str, Any] = {}
    for key, value in (doc.get("config") or {}).items():
        ns, _, name = str(key).partition(":")
        if name and ns == PROJECT:
            raw[name] = value
        elif not name:
            raw[ns] = value
    return stack, raw


def plain_secret_problems(raw: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Secrets written in clear into a stack file (a file the docs tell operators to commit)."""
    return [(key, "is written in plain text in the stack file, which goes into git; remove it and store it "
                  f"encrypted with \"pulumi config set --secret {key} ...\" (or leave it out: it is generated)")
            for key in SECRET_KEYS if raw.get(key) not in (None, "") and not
            (isinstance(raw.get(key), Mapping) and "secure" in raw[key])]


def is_fqdn(name: str) -> bool:
    if not name or len(name) > 253 or "." not in name.rstrip("."):
        return False
    labels = name.rstrip(".").split(".")
    return all(_LABEL.match(label) for label in labels) and not labels[-1].isdigit()


def _control_char(text: str) -> int | None:
    """Index of the first control character (newline, tab, NUL, ...), which would reach rendered configs."""
    return next((i for i, ch in enumerate(text) if unicodedata.category(ch) == "Cc"), None)


class _Checker:
    """Collects problems; each names its key and says how to fix it."""

    def __init__(self) -> None:
        self.problems: list[tuple[str, str]] = []

    def add(self, key: str, msg: str) -> None:
        self.problems.append((key, msg))

    def text(self, key: str, value: Any) -> str:
        if isinstance(value, (Mapping, list, tuple)):
            self.add(key, f"{value!r} is not a single value; write a string")
            return ""
        text = "" if value is None else str(value)
        bad = _control_char(text)
        if bad is not None:
            self.add(key, f"contains a control character ({text[bad]!r} at position {bad}); "
                          "write it on one line without tabs or newlines")
            return text.replace("\n", " ")
        return text


# ---- coercion by kind ------------------------------------------------------------------------

def _coerce(setting: Setting, raw: Mapping[str, Any], c: _Checker) -> Any:
    key, value = setting.key, raw.get(setting.key, setting.default)
    if setting.kind == "str":
        return c.text(key, value)
    if setting.kind == "int":
        try:
            number = int(value)
            if isinstance(value, bool) or str(number) != str(value).strip():
                raise ValueError
        except (TypeError, ValueError):
            c.add(key, f"{value!r} is not an integer; use a number between {setting.lo} and {setting.hi}")
            return int(setting.default)
        if not setting.lo <= number <= setting.hi:
            c.add(key, f"{number} is out of range; use a number between {setting.lo} and {setting.hi}")
        return number
    if setting.kind == "bool":
        if not isinstance(value, bool):
            c.add(key, f"{value!r} is not true or false")
            return bool(setting.default)
        return value
    if setting.kind == "list":
        value = value or []
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            c.add(key, f"{value!r} is not a list of strings; write a YAML list")
            return ()
        return tuple(c.text(key, v) for v in value)
    if setting.kind == "secret":
        if value is None or value == "":
            return SecretValue()
        if isinstance(value, Mapping) and "secure" in value:
            return SecretValue(encrypted=True)
        return SecretValue(plain=c.text(key, value))
    if setting.kind == "hosts":
        return value or []
    raise AssertionError(f"setting {key} has unknown kind {setting.kind}")


# ---- one check per concern -------------------------------------------------------------------
# Each takes the coerced values (by attribute) and may add problems or fill derived values.
V = dict[str, Any]


def _check_provider(v: V, c: _Checker) -> None:
    name = v["provider"].lower()
    provider = PROVIDERS.get(name)
    if provider is None:
        c.add("provider", f"unknown provider {name!r}; use one of {', '.join(sorted(PROVIDERS))}")
        provider = PROVIDERS["local"]
    elif provider.refused:
        c.add("provider", f"{name} is refused: {provider.refused}")
    v["provider"] = provider.name
    if provider.warning:
        v["warnings"].append(provider.warning)
    v["region"] = v["region"] or provider.default_region
    if provider.regions and v["region"] not in provider.regions:
        c.add("region", f"{v['region']!r} is not a {provider.name} region; use one of "
                        f"{', '.join(sorted(provider.regions))}")
    v["server_type"] = v["server_type"] or provider.default_server_type
    if provider.server_types and v["server_type"] not in provider.server_types:
        c.add("serverType", f"{v['server_type']!r} is not a {provider.name} server type; use one of "
                            f"{', '.join(sorted(provider.server_types))}")


def _check_names(v: V, c: _Checker) -> None:
    domain = v["domain"] = v["domain"].lower().rstrip(".")
    if not is_fqdn(domain):
        c.add("domain", f"{domain!r} is not a valid domain name; use e.g. example.com")
    v["livekit_host"] = (v["livekit_host"] or f"livekit.{domain}").lower().rstrip(".")
    v["turn_host"] = (v["turn_host"] or f"turn.{domain}").lower().rstrip(".")
    for key, attr in (("livekitHost", "livekit_host"), ("turnHost", "turn_host")):
        host = v[attr]
        if not is_fqdn(host):
            c.add(key, f"{host!r} is not a valid fully qualified domain name; use e.g. {key[:-4].lower()}.example.com")
        elif PROVIDERS[v["provider"]].kind in ("hetzner", "digitalocean") and is_fqdn(domain) \
                and not host.endswith("." + domain):
            # The Pulumi program manages the zone `domain`; names outside it would never resolve.
            c.add(key, f"{host!r} is outside the DNS zone {domain!r} that {v['provider']} manages; "
                       f"use a name under it, e.g. {key[:-4].lower()}.{domain}")
    if v["livekit_host"] == v["turn_host"]:
        c.add("turnHost", f"equals livekitHost ({v['turn_host']}); TURN needs its own name for its TLS certificate "
                          "and the SNI split on 443, e.g. turn." + domain)


def _covers_world(nets: list[ipaddress.IPv4Network | ipaddress.IPv6Network], version: int) -> bool:
    """True when the networks of one family add up to the whole address space (0.0.0.0/1 + 128.0.0.0/1)."""
    family = [n for n in nets if n.version == version]
    whole = 2 ** (32 if version == 4 else 128)
    return bool(family) and sum(n.num_addresses for n in ipaddress.collapse_addresses(family)) == whole


def _check_ssh(v: V, c: _Checker) -> None:
    nets = []
    for cidr in v["admin_cidrs"]:
        try:
            nets.append(ipaddress.ip_network(cidr, strict=False))
        except ValueError:
            c.add("adminCidrs", f"{cidr!r} is not a CIDR; use e.g. 198.51.100.7/32")
    if not v["allow_world_ssh"]:
        for version, world in ((4, "0.0.0.0/0"), (6, "::/0")):
            if _covers_world(nets, version):
                c.add("adminCidrs", f"{', '.join(str(n) for n in nets if n.version == version)} together are {world}: "
                                    "that opens SSH to the whole internet; list your admin networks, "
                                    "or set allowWorldSsh: true to accept that risk")
    kind = PROVIDERS[v["provider"]].kind
    if kind in ("hetzner", "digitalocean", "existing") and not v["admin_cidrs"] and not v["allow_world_ssh"]:
        c.add("adminCidrs", "is empty, so nobody could SSH in to deploy; add your admin address, e.g. 198.51.100.7/32")
    key = v["ssh_public_key"]
    if key and not _SSH_PUBLIC_KEY.match(key):
        c.add("sshPublicKey", f"{key[:20]!r} is not an OpenSSH public key; the servers are created with it — "
              "paste the contents of ~/.ssh/id_ed25519.pub (pulumi config set sshPublicKey \"$(cat ~/.ssh/id_ed25519.pub)\")")
    user = v["ssh_user"]
    if not _SSH_USER.match(user):
        c.add("sshUser", f"{user!r} is not a valid user name; use root")
    elif user != "root":
        # cloud-init authorises the key for root only, and the deploy runs without sudo.
        c.add("sshUser", f"{user!r} is not supported: the deploy logs in as root (cloud-init installs the key "
                         "for root, and no sudo is configured); use root")


def _check_network(v: V, c: _Checker) -> None:
    private = v["private_network"] or None
    if private is not None:
        try:
            net = ipaddress.ip_network(private)
            if not net.is_private or net.version != 4 or net.num_addresses < 8:
                raise ValueError
        except ValueError:
            c.add("privateNetwork", f"{private!r} is not a private IPv4 network of at least 8 addresses; "
                                    "use e.g. 10.77.0.0/24")
            private = None
    v["private_network"] = str(private) if private else None
    if v["node_count"] > 1 and not private:
        c.add("privateNetwork", f"nodeCount is {v['node_count']} but no private network is set; several nodes need "
                                "one for Redis and node-to-node traffic, e.g. 10.77.0.0/24")


def _check_cluster(v: V, c: _Checker) -> None:
    # Accepted, not refused: two nodes still add capacity and keep a live copy of Redis, and the
    # loss of the replica's node costs nothing; only the primary's node is still a single point.
    if v["node_count"] == 2:
        v["warnings"].append(
            "nodeCount is 2: both nodes run Redis and Sentinel, but a failover needs a majority of the "
            "Sentinels (2 of 2), so if the node with the Redis primary is lost, new calls fail until it is back; "
            "use nodeCount 3 (or more) for a cluster that survives the loss of any one node")


def _check_ports(v: V, c: _Checker) -> None:
    if v["ice_mode"] not in ("range", "mux"):
        c.add("iceMode", f"{v['ice_mode']!r} is not 'range' (port range) or 'mux' (one UDP port)")
    for lo, hi in (("icePortStart", "icePortEnd"), ("turnRelayStart", "turnRelayEnd")):
        if v[BY_KEY[lo].attr] > v[BY_KEY[hi].attr]:
            c.add(lo, f"{v[BY_KEY[lo].attr]} is above {hi} {v[BY_KEY[hi].attr]}; the range must run upwards")
    for key in ("icePortStart", "iceUdpPort", "livekitTcpPort", "turnRelayStart"):
        if v[BY_KEY[key].attr] < 1024:
            c.add(key, f"{v[BY_KEY[key].attr]} is a privileged port; LiveKit and coturn need 1024 or above here")


def _check_urls(v: V, c: _Checker) -> None:
    for url in v["webhook_urls"]:
        if not _URL.match(url):
            c.add("webhookUrls", f"{url!r} is not an http(s) URL")
    for key in ("sttUrl", "llmUrl", "ttsUrl"):
        attr = BY_KEY[key].attr
        v[attr] = v[attr] or LOCAL_SPEECH_URL
        if not _URL.match(v[attr]):
            c.add(key, f"{v[attr]!r} is not an http(s) URL of an OpenAI-compatible API, e.g. http://127.0.0.1:8000/v1")


def _check_acme(v: V, c: _Checker) -> None:
    if v["acme_ca"] not in ACME_CAS and not (v["acme_ca"].startswith("https://") and _URL.match(v["acme_ca"])):
        c.add("acmeCa", f"{v['acme_ca']!r} is not one of {', '.join(sorted(ACME_CAS))} or an https:// ACME "
                        "directory URL")
    if v["acme_email"] and not _EMAIL.match(v["acme_email"]):
        c.add("acmeEmail", f"{v['acme_email']!r} is not an e-mail address; use e.g. ops@example.com")


def _check_secrets(v: V, c: _Checker) -> None:
    if not _API_KEY.match(v["api_key"]):
        c.add("apiKey", f"{v['api_key']!r} must be 3-64 letters, digits, '-' or '_'")
    for key, minimum in (("apiSecret", MIN_API_SECRET), ("turnSecret", MIN_TURN_SECRET), ("tokenKey", MIN_TOKEN_KEY),
                         ("callPassword", MIN_CALL_PASSWORD)):
        value: SecretValue = v[BY_KEY[key].attr]
        if value.plain is not None and len(value.plain) < minimum:
            c.add(key, f"is {len(value.plain)} characters; at least {minimum} are needed — generate one with "
                       f"\"openssl rand -hex 32\" and store it with \"pulumi config set --secret {key} ...\"")


def _check_hosts(v: V, c: _Checker) -> None:
    raw_hosts = v["hosts"]
    if not isinstance(raw_hosts, list):
        c.add("hosts", "must be a list of {name, publicIp, privateIp?}")
        raw_hosts = []
    hosts: list[HostEntry] = []
    for i, entry in enumerate(raw_hosts):
        if not isinstance(entry, Mapping) or "publicIp" not in entry:
            c.add(f"hosts[{i}]", "needs at least publicIp (and name, privateIp when there are several)")
            continue
        name = str(entry.get("name") or f"node-{i + 1}")
        try:
            for key in ("publicIp", "privateIp", "interfaceIp"):
                if entry.get(key):
                    ipaddress.IPv4Address(str(entry[key]))
        except ValueError as exc:
            c.add(f"hosts[{i}]", f"{exc}; write IPv4 addresses")
            continue
        if not _NODE_NAME.match(name):
            c.add(f"hosts[{i}].name", f"{name!r} must be lower-case letters, digits and '-'")
        interface = str(entry["interfaceIp"]) if entry.get("interfaceIp") else None
        if interface == str(entry["publicIp"]):
            c.add(f"hosts[{i}].interfaceIp", f"equals publicIp {interface}; leave interfaceIp out for a host whose "
                                             "public address is on its interface")
            interface = None
        hosts.append(HostEntry(name, str(entry["publicIp"]), entry.get("privateIp"), interface))
    kind = PROVIDERS[v["provider"]].kind
    if kind == "existing":
        if not hosts:
            c.add("hosts", f"provider {v['provider']} brings its own servers; list them as hosts: "
                           "[{name: node-1, publicIp: 203.0.113.10}]")
        elif len(hosts) != v["node_count"]:
            c.add("nodeCount", f"is {v['node_count']} but {len(hosts)} hosts are listed; make them agree")
    elif hosts:
        c.add("hosts", f"is only used with bring-your-own providers, not {v['provider']}")
    v["hosts"] = tuple(hosts)


_DIRECT_ONLY = {
    "hetzner": "a Hetzner server's primary IP is on its interface",
    "digitalocean": "a droplet's own public IP is on eth0 and carries media, TURN and SSH; the reserved IP only "
                    "serves the LiveKit name (README, \"DigitalOcean networking\")",
}


def _check_network_model(v: V, c: _Checker) -> None:
    """The networking model: what LiveKit's node IP and coturn's addresses are derived from."""
    model = v["network"] = v["network"].lower()
    kind = PROVIDERS[v["provider"]].kind
    if model not in NETWORK_MODELS:
        c.add("network", f"{model!r} is not direct (public address on the interface) or nat (1:1 NAT)")
    elif model == "nat" and kind in _DIRECT_ONLY:
        c.add("network", f"is nat, but {_DIRECT_ONLY[kind]}: that is the direct model; remove network (or set direct)")
    elif model == "nat" and kind == "existing":
        for i, h in enumerate(v["hosts"]):
            if h.interface_ip is None:
                c.add(f"hosts[{i}].interfaceIp", f"network is nat but {h.name} has no interfaceIp; add the address "
                                                 "on its interface (ip -4 addr on the host), the one its public "
                                                 f"address {h.public_ip} is mapped to")
    if v["block_udp"] and kind != "local":
        c.add("blockUdp", f"only the local cloud emulates a provider that blocks UDP, not {v['provider']}; remove it "
                          "(real providers known to block UDP are refused, and make preflight measures yours)")


def _check_agent(v: V, c: _Checker) -> None:
    if v["agent_name"] and not _AGENT_NAME.match(v["agent_name"]):
        c.add("agentName", f"{v['agent_name']!r} must be letters, digits, '-' or '_'")


_SHELL_SAFE_URL = re.compile(r"^[^\s\"'\\$`]*$")


def _check_recording(v: V, c: _Checker) -> None:
    policy = v["recording"].lower()
    if policy == "false":
        policy = "off"  # YAML 1.1 reads a bare `off` as false
    v["recording"] = policy
    if policy not in RECORDING_POLICIES:
        c.add("recording", f"{policy!r} is not a recording policy; use one of {', '.join(RECORDING_POLICIES)}")


def _check_outgoing_urls(v: V, c: _Checker) -> None:
    """forwardUrl and actionUrl: where the node posts (signed) to an orchestrator such as n8n."""
    for key, attr, example in (("forwardUrl", "forward_url", "livekit-events"),
                               ("actionUrl", "action_url", "voice-action")):
        url = v[attr]
        if url and not (_URL.match(url) and _SHELL_SAFE_URL.match(url)):
            # It reaches agent.env, which systemd reads back verbatim only without quotes, '$' or '\\'.
            c.add(key, f"{url!r} is not an http(s) URL without spaces, quotes, '$' or '\\'; "
                       f"use e.g. https://n8n.example.com/webhook/{example}")


def _check_versions(v: V, c: _Checker) -> None:
    if not _VERSION.match(v["livekit_version"]):
        c.add("livekitVersion", f"{v['livekit_version']!r} is not a release number; use e.g. 1.13.5")
    if not _VERSION.match(v["caddy_version"]):
        c.add("caddyVersion", f"{v['caddy_version']!r} is not a release number; use e.g. 2.11.4")


def _check_call(v: V, c: _Checker) -> None:
    if not _CALL_USER.match(v["call_user"]):
        # Basic auth splits user and password at the first ':'; keep the name plain.
        c.add("callUser", f"{v['call_user']!r} must be 1-64 letters, digits, '.', '-' or '_'")
    password: SecretValue = v["call_password"]
    if password.plain is not None and len(password.plain.encode()) > 72:
        # Caddy keeps a bcrypt hash of it, and bcrypt reads at most 72 bytes.
        c.add("callPassword", f"is {len(password.plain.encode())} bytes; bcrypt takes at most 72 — use 16 to 72")


CHECKS: tuple[Callable[[V, _Checker], None], ...] = (
    _check_provider, _check_names, _check_ssh, _check_network, _check_cluster, _check_ports, _check_urls,
    _check_acme, _check_secrets, _check_hosts, _check_network_model, _check_agent, _check_recording,
    _check_outgoing_urls, _check_versions,
    _check_call)


def check(raw: Mapping[str, Any], env: str = "local") -> tuple[StackConfig, list[tuple[str, str]]]:
    """(config, problems): the settings checked on their own. The config is built even when there
    are problems (bad values fall back to their defaults), so later checks (the port plan) can
    still run and every problem is reported at once."""
    c = _Checker()
    for key in sorted(set(raw) - set(BY_KEY)):
        c.add(key, f"unknown setting; known settings are: {', '.join(sorted(BY_KEY))}")
    v: V = {s.attr: _coerce(s, raw, c) for s in SETTINGS}
    v["warnings"] = []
    for one in CHECKS:
        one(v, c)
    v["warnings"] = tuple(v["warnings"])
    known = {f.name for f in fields(StackConfig)}
    return StackConfig(env=env, **{k: val for k, val in v.items() if k in known}), c.problems


def parse(raw: Mapping[str, Any], env: str = "local") -> StackConfig:
    """Validate raw project keys into a StackConfig, or raise ConfigError with every problem.

    The settings only: `infra.validate.load` adds the port plan and the artifact manifest and is
    what the pipeline uses.
    """
    cfg, problems = check(raw, env)
    if problems:
        raise ConfigError(problems)
    return cfg
