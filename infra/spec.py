"""The environment spec: everything derived from one StackConfig, computed once.

Ports are the single source of truth. Service configs (LiveKit, coturn, Caddy, Redis), the
cloud firewall, the host firewall and the verification expectations are all read from
``EnvSpec.ports``; nothing downstream writes a port number of its own.
"""
from __future__ import annotations

import dataclasses
import ipaddress
from dataclasses import dataclass
from enum import Enum
from typing import Any, Mapping

from infra.codec import from_plain, to_plain
from infra.config import SecretValue, StackConfig

WORLD = ("0.0.0.0/0", "::/0")
#: Where Caddy serves the token endpoint (behind HTTPS on the LiveKit name).
TOKEN_PATH = "/api/token"
#: Where Caddy serves the recordings download API (agent/recordings_api.py) on the LiveKit name.
RECORDINGS_PATH = "/api/recordings"
#: Where Caddy serves the voice page (web/) on the LiveKit name; its token route is CALL_PATH + "token".
CALL_PATH = "/call/"
#: Redis Sentinel's port on every node of a cluster (Sentinel's well-known default, fixed like
#: the agent's ports: nothing outside the private network uses it).
SENTINEL_PORT = 26379

# ---- the cluster's load balancer (clusters on a cloud, the local cloud included) -------------
#: Node-side ports the balancer forwards to, on each LiveKit node's private address. Separate from
#: 80/443 because the balancer prepends a PROXY v2 header (the client's address) that a direct
#: client does not send; a listener is either PROXY or plain, never both.
LB_HTTPS_PORT = 8843
LB_HTTP_PORT = 8880
#: The health check: Caddy answers it on the private address, 200 while LiveKit answers and the
#: node is not draining, 503 while the drain flag exists (deploy/tasks/caddy.py).
LB_HEALTH_PORT = 8882
LB_HEALTH_PATH = "/lb-health"
#: While this file exists on a node the health check fails, so the balancer sends no new
#: connections there (the rolling deploy sets it before touching a node).
DRAIN_FLAG = "/run/voicestack/draining"


def drain_flag_command(on: bool) -> str:
    """The shell command on a node that sets (or removes) its drain flag."""
    return f"mkdir -p {DRAIN_FLAG.rsplit('/', 1)[0]} && touch {DRAIN_FLAG}" if on else f"rm -f {DRAIN_FLAG}"

#: Check every 3 s, 3 s to answer, out after 2 failures: a lost node stops receiving new calls
#: within about 6-9 s. The smallest values DigitalOcean accepts (check interval and response
#: timeout 3-300 s, thresholds 2-10); Hetzner takes them too.
HEALTH_INTERVAL_S = 3
HEALTH_TIMEOUT_S = 3
HEALTH_RETRIES = 2


class Scope(str, Enum):
    PUBLIC = "public"    # anyone on the internet: cloud + host firewall open it
    ADMIN = "admin"      # only the admin CIDRs (SSH)
    PRIVATE = "private"  # the private network between nodes only
    LOOPBACK = "loopback"  # the node itself


class Role(str, Enum):
    LIVEKIT = "livekit"
    TURN = "turn"
    REDIS = "redis"
    AGENT = "agent"


@dataclass(frozen=True)
class Port:
    name: str          # stable id, e.g. "livekit-ice-udp"
    service: str       # owning service: livekit, coturn, caddy, edge, redis, agent, sshd
    protocol: str      # "tcp" | "udp"
    start: int
    end: int
    scope: Scope
    purpose: str
    role: Role | None = None  # nodes with this role listen on it (None: every node)

    @property
    def label(self) -> str:
        return f"{self.start}/{self.protocol}" if self.start == self.end else f"{self.start}-{self.end}/{self.protocol}"

    def overlaps(self, other: "Port") -> bool:
        return self.protocol == other.protocol and self.start <= other.end and other.start <= self.end


@dataclass(frozen=True)
class FirewallRule:
    """One inbound allow rule. Providers translate these one-to-one; nothing else is opened."""

    protocol: str
    start: int
    end: int
    sources: tuple[str, ...]
    description: str

    @property
    def port_range(self) -> str:
        return str(self.start) if self.start == self.end else f"{self.start}-{self.end}"

    @property
    def key(self) -> tuple[str, str, tuple[str, ...]]:
        """Provider-neutral (protocol, port range, sources): what a cloud rule must equal, nothing else."""
        return (self.protocol, self.port_range, tuple(self.sources))


@dataclass(frozen=True)
class Node:
    name: str
    index: int
    roles: frozenset[Role]
    private_ip: str | None
    #: How the node's public address reaches it: "direct" (it is on the interface) or "nat" (the
    #: cloud maps it 1:1 to the interface's private address). The provisioner reports both addresses.
    network: str = "direct"

    def has(self, role: Role) -> bool:
        return role in self.roles


@dataclass(frozen=True)
class DnsRecord:
    name: str                 # fully qualified
    type: str                 # "A"
    nodes: tuple[str, ...]    # node names whose public IPv4 the record points at
    #: The record points at the balancer's one address instead (its targets are `nodes`).
    balancer: bool = False

    @property
    def address_count(self) -> int:
        """How many addresses the published record holds."""
        return 1 if self.balancer else len(self.nodes)

    def relative_to(self, zone: str) -> str:
        return "@" if self.name == zone else self.name.removesuffix("." + zone)


@dataclass(frozen=True)
class BalancerService:
    """One TCP forward: the balancer's `listen_port` to `target_port` on every target's private
    address, with a PROXY v2 header. TCP, not HTTP: TLS passes through to each node's Caddy/SNI
    router, so certificates stay on the nodes and TURN/TLS on 443 keeps working."""

    name: str
    listen_port: int
    target_port: int


@dataclass(frozen=True)
class HealthCheck:
    """HTTP GET `path` on `port` of each target; `retries` failures in a row take it out."""

    port: int
    path: str
    interval_s: int
    timeout_s: int
    retries: int


@dataclass(frozen=True)
class Balancer:
    """The health-checked entry for signalling/HTTPS: the LiveKit name points at it."""

    name: str
    services: tuple[BalancerService, ...]
    health: HealthCheck
    targets: tuple[str, ...]          # node names, reached on their private addresses
    #: Its address on the private network where the cloud lets us choose it (Hetzner, local).
    private_ip: str | None = None


@dataclass(frozen=True)
class TurnServer:
    """One entry of LiveKit's rtc.turn_servers (REST credentials via secret_file)."""

    host: str
    port: int
    protocol: str
    #: The node whose coturn answers at `host`.
    node: str


@dataclass(frozen=True)
class EnvSpec:
    config: StackConfig
    nodes: tuple[Node, ...]
    ports: tuple[Port, ...]
    cloud_firewall: tuple[FirewallRule, ...]
    host_firewall: tuple[FirewallRule, ...]
    dns_records: tuple[DnsRecord, ...]
    turn_servers: tuple[TurnServer, ...]
    #: Flows between the environment's own nodes (sources: the nodes themselves), for a cloud
    #: firewall that also filters traffic between its servers (DigitalOcean, VPC included).
    node_firewall: tuple[FirewallRule, ...] = ()
    #: The load balancer in front of the LiveKit name (clusters on a cloud); None: DNS lists nodes.
    balancer: Balancer | None = None

    # ---- convenience views --------------------------------------------------------------
    @property
    def env(self) -> str:
        return self.config.env

    @property
    def multi_node(self) -> bool:
        return len(self.nodes) > 1

    def port(self, name: str) -> Port:
        for p in self.ports:
            if p.name == name:
                return p
        raise KeyError(f"no port named {name!r}; known: {', '.join(p.name for p in self.ports)}")

    def has_port(self, name: str) -> bool:
        return any(p.name == name for p in self.ports)

    def ports_for(self, node: Node) -> tuple[Port, ...]:
        return tuple(p for p in self.ports if p.role is None or node.has(p.role))

    def public_ports(self) -> tuple[Port, ...]:
        return tuple(p for p in self.ports if p.scope is Scope.PUBLIC)

    def closed_ports(self) -> tuple[Port, ...]:
        """Ports that listen somewhere but must be unreachable from the internet."""
        return tuple(p for p in self.ports if p.scope in (Scope.PRIVATE, Scope.LOOPBACK))

    def nodes_with(self, role: Role) -> tuple[Node, ...]:
        return tuple(n for n in self.nodes if n.has(role))

    @property
    def redis_nodes(self) -> tuple[Node, ...]:
        """Nodes that run redis-server and redis-sentinel (every node of a cluster, none alone)."""
        return self.nodes_with(Role.REDIS)

    @property
    def redis_seed_node(self) -> Node | None:
        """The node whose Redis starts as the primary when the cluster is first deployed. Only a
        bootstrap choice: after a failover the Sentinels know the current primary, and the deploy
        asks them (deploy/tasks/redis.py) rather than assuming this node."""
        found = self.redis_nodes
        return found[0] if found else None

    @property
    def redis_quorum(self) -> int:
        """Sentinels that must agree the primary is down: a majority, which is also what a failover
        needs to elect a leader. With 2 nodes that is both, so losing either stops failovers."""
        return len(self.redis_nodes) // 2 + 1

    @property
    def livekit_url(self) -> str:
        return f"wss://{self.config.livekit_host}"

    @property
    def token_endpoint(self) -> str:
        return f"https://{self.config.livekit_host}{TOKEN_PATH}"

    @property
    def recording(self) -> bool:
        """Recording is on (any policy but off): the recorder and recordings services run."""
        return self.config.recording != "off"

    @property
    def recordings_url(self) -> str:
        return f"https://{self.config.livekit_host}{RECORDINGS_PATH}"

    @property
    def call_url(self) -> str:
        """The voice page."""
        return f"https://{self.config.livekit_host}{CALL_PATH}"

    def dns_zone_records(self) -> tuple[tuple[str, DnsRecord], ...]:
        """(name relative to the zone `domain`, record) for every record a cloud DNS zone holds."""
        return tuple((r.relative_to(self.config.domain), r) for r in self.dns_records)

    @property
    def sni_split(self) -> bool:
        """TURN/TLS shares 443 with HTTPS: an SNI router on 443 sends the TURN name to coturn."""
        return self.config.turn_tls_port == 443

    @property
    def udp_blocked(self) -> bool:
        """The (emulated) provider drops UDP from the internet: media must use ICE/TCP or TURN over TCP/TLS."""
        return self.config.block_udp

    def dns_addresses(self, ip_of: Mapping[str, str], balancer_ip: str | None = None) -> dict[str, list[str]]:
        """Each record's name -> the addresses it publishes (`ip_of`: node name -> address; a
        balanced record publishes `balancer_ip`)."""
        if self.balancer is not None and balancer_ip is None:
            raise ValueError(f"{self.env} has a load balancer: its address is needed for the LiveKit name")
        return {r.name: [balancer_ip] if r.balancer else [ip_of[n] for n in r.nodes]  # type: ignore[list-item]
                for r in self.dns_records}

    @property
    def cloud_firewall_managed(self) -> bool:
        """False for bring-your-own hosts: their security group is the operator's job."""
        return self.config.provider_info.kind != "existing"

    # ---- topology: decided once here, so deploy and verify agree ---------------------------
    @property
    def certificate_node(self) -> Node | None:
        """The node that obtains the LiveKit certificate. The LiveKit name points at every LiveKit
        node, but an ACME HTTP-01 validation reaches only one of them: the others relay the
        challenges to this node and receive the certificate from the deploy."""
        found = self.nodes_with(Role.LIVEKIT)
        return found[0] if found else None

    def turn_name_nodes(self) -> tuple[Node, ...]:
        """Nodes that serve a TURN name (each obtains its own name's certificate)."""
        return self.nodes_with(Role.TURN)

    def turn_hosts(self) -> dict[str, str]:
        """Node name -> the TURN name it answers at, for every TURN node (turn_names() decided them
        once, into turn_servers: read back from there, not derived a second time)."""
        return {t.node: t.host for t in self.turn_servers}

    def turn_host_of(self, node: Node) -> str | None:
        """The TURN name `node` answers at (None: it runs no coturn)."""
        return self.turn_hosts().get(node.name)

    def turn_servers_for(self, node: Node) -> tuple[TurnServer, ...]:
        """What LiveKit on `node` hands its clients: the node's own TURN name, which lives exactly
        as long as the rooms it hosts (a client of a room on a node that is gone has no call to
        relay), so a lost node takes no other node's TURN with it. A LiveKit node without coturn
        hands out every TURN node's."""
        own = tuple(t for t in self.turn_servers if t.node == node.name)
        return own or self.turn_servers   # (no TURN role here: none of the nodes' servers is its own)

    def node(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(f"no node named {name!r}; the spec has {', '.join(n.name for n in self.nodes)}")


def _network(cfg: StackConfig, i: int) -> str:
    """A node's networking model: bring-your-own hosts say it per host (interfaceIp), the local
    cloud emulates the configured one, Hetzner and DigitalOcean are direct (validated)."""
    if cfg.hosts:
        return "nat" if cfg.hosts[i].interface_ip else "direct"
    return cfg.network


def _nodes(cfg: StackConfig) -> tuple[Node, ...]:
    names = [h.name for h in cfg.hosts] if cfg.hosts else [f"node-{i + 1}" for i in range(cfg.node_count)]
    net = ipaddress.ip_network(cfg.private_network) if cfg.private_network else None
    nodes = []
    for i, name in enumerate(names):
        roles = {Role.LIVEKIT, Role.TURN, Role.AGENT}
        if cfg.node_count > 1:
            # Redis on every node (one primary, the rest replicas) with a Sentinel beside each:
            # no node is special, and losing any one leaves a majority of Sentinels to fail over.
            roles.add(Role.REDIS)
        private_ip = None
        if cfg.hosts and cfg.hosts[i].private_ip:
            private_ip = cfg.hosts[i].private_ip
        elif net is not None and cfg.node_count > 1:
            private_ip = str(net.network_address + 10 + i)  # .1 is the cloud gateway on Hetzner
        nodes.append(Node(name=name, index=i, roles=frozenset(roles), private_ip=private_ip,
                          network=_network(cfg, i)))
    return tuple(nodes)


def _ports(cfg: StackConfig, multi: bool) -> tuple[Port, ...]:
    P, S, R = Port, Scope, Role
    internal = S.PRIVATE if multi else S.LOOPBACK
    ports = [
        P("ssh", "sshd", "tcp", 22, 22, S.ADMIN, "SSH for deploys, admin CIDRs only"),
        P("http", "caddy", "tcp", 80, 80, S.PUBLIC, "ACME HTTP-01 and redirect to HTTPS", R.LIVEKIT),
        P("https", "edge" if cfg.turn_tls_port == 443 else "caddy", "tcp", 443, 443, S.PUBLIC,
          "HTTPS: LiveKit signalling, token endpoint" + (", TURN/TLS by SNI" if cfg.turn_tls_port == 443 else ""),
          R.LIVEKIT),
        P("livekit-http", "livekit", "tcp", cfg.livekit_http_port, cfg.livekit_http_port, internal,
          "LiveKit API/WebSocket behind Caddy", R.LIVEKIT),
        P("livekit-ice-tcp", "livekit", "tcp", cfg.livekit_tcp_port, cfg.livekit_tcp_port, S.PUBLIC,
          "WebRTC ICE over TCP", R.LIVEKIT),
        P("livekit-prometheus", "livekit", "tcp", cfg.livekit_prometheus_port, cfg.livekit_prometheus_port,
          internal, "Prometheus metrics", R.LIVEKIT),
        P("turn-udp", "coturn", "udp", cfg.turn_udp_port, cfg.turn_udp_port, S.PUBLIC, "TURN/STUN over UDP", R.TURN),
        P("turn-tcp", "coturn", "tcp", cfg.turn_udp_port, cfg.turn_udp_port, S.PUBLIC, "TURN over TCP", R.TURN),
        # coturn relays from the node's own interface address to LiveKit's public node IP (the only
        # address LiveKit advertises); LiveKit's answers come back to it as replies of that flow.
        P("turn-relay", "coturn", "udp", cfg.turn_relay_start, cfg.turn_relay_end, internal,
          "TURN relay addresses (LiveKit nodes answer relayed media here)", R.TURN),
        P("agent-health", "agent", "tcp", 8081, 8081, S.LOOPBACK, "agent worker health", R.AGENT),
        P("agent-metrics", "agent", "tcp", 8082, 8082, S.LOOPBACK,
          "agent per-turn latency metrics (Prometheus)", R.AGENT),
        P("speech", "agent", "tcp", 8000, 8000, S.LOOPBACK, "offline speech backends (OpenAI-compatible)", R.AGENT),
        P("token", "agent", "tcp", 8090, 8090, S.LOOPBACK, "token endpoint behind Caddy", R.AGENT),
        P("webhooks", "agent", "tcp", 8091, 8091, S.LOOPBACK, "LiveKit webhook receiver", R.AGENT),
    ]
    if cfg.recording != "off":
        ports += [
            P("recordings", "agent", "tcp", 8092, 8092, S.LOOPBACK,
              "recordings download API behind Caddy (/api/recordings)", R.AGENT),
            P("recorder-health", "agent", "tcp", 8093, 8093, S.LOOPBACK, "meeting recorder worker health", R.AGENT),
        ]
    if cfg.ice_mode == "range":
        ports.append(P("livekit-ice-udp", "livekit", "udp", cfg.ice_port_start, cfg.ice_port_end, S.PUBLIC,
                       "WebRTC media over UDP", R.LIVEKIT))
    else:
        ports.append(P("livekit-ice-udp", "livekit", "udp", cfg.ice_udp_port, cfg.ice_udp_port, S.PUBLIC,
                       "WebRTC media over UDP (mux)", R.LIVEKIT))
    if cfg.turn_tls_port == 443:
        # Behind the SNI router; bound on a non-loopback address (see deploy/tasks/edge.py for why).
        ports += [
            P("turn-tls", "coturn", "tcp", 5349, 5349, S.LOOPBACK, "TURN/TLS upstream of the SNI router", R.TURN),
            P("caddy-https", "caddy", "tcp", 8443, 8443, S.LOOPBACK, "HTTPS upstream of the SNI router", R.LIVEKIT),
        ]
    else:
        ports.append(P("turn-tls", "coturn", "tcp", cfg.turn_tls_port, cfg.turn_tls_port, S.PUBLIC,
                       "TURN over TLS", R.TURN))
    if multi and _balanced(cfg):
        # The balancer's forwards and health check, on each LiveKit node's private address.
        ports += [
            P("lb-http", "caddy", "tcp", LB_HTTP_PORT, LB_HTTP_PORT, S.PRIVATE,
              "HTTP from the load balancer (PROXY v2): ACME HTTP-01 and redirect", R.LIVEKIT),
            P("lb-https", "edge" if cfg.turn_tls_port == 443 else "caddy", "tcp", LB_HTTPS_PORT, LB_HTTPS_PORT,
              S.PRIVATE, "HTTPS from the load balancer (PROXY v2)", R.LIVEKIT),
            P("lb-health", "caddy", "tcp", LB_HEALTH_PORT, LB_HEALTH_PORT, S.PRIVATE,
              "load balancer health check (503 while draining)", R.LIVEKIT),
        ]
    if multi:
        ports += [
            P("redis", "redis", "tcp", cfg.redis_port, cfg.redis_port, S.PRIVATE,
              "Redis (primary or replica) for LiveKit nodes", R.REDIS),
            P("redis-sentinel", "redis", "tcp", SENTINEL_PORT, SENTINEL_PORT, S.PRIVATE,
              "Redis Sentinel: LiveKit finds the current primary here; Sentinels fail over", R.REDIS),
        ]
    return tuple(ports)


def _balanced(cfg: StackConfig) -> bool:
    """Clusters the project provisions get a load balancer; bring-your-own hosts keep DNS listing
    every node (their entry, if any, is the operator's)."""
    return cfg.node_count > 1 and cfg.provider_info.kind != "existing"


def _balancer(cfg: StackConfig, nodes: tuple[Node, ...]) -> Balancer | None:
    if not _balanced(cfg):
        return None
    net = ipaddress.ip_network(cfg.private_network) if cfg.private_network else None
    return Balancer(
        name="livekit",
        services=(BalancerService("https", 443, LB_HTTPS_PORT), BalancerService("http", 80, LB_HTTP_PORT)),
        health=HealthCheck(LB_HEALTH_PORT, LB_HEALTH_PATH, HEALTH_INTERVAL_S, HEALTH_TIMEOUT_S, HEALTH_RETRIES),
        targets=tuple(n.name for n in nodes if n.has(Role.LIVEKIT)),
        # .5: below the nodes (.10 on), above Hetzner's gateway (.1).
        private_ip=str(net.network_address + 5) if net is not None else None,
    )


def _check_ports(ports: tuple[Port, ...]) -> list[tuple[str, str]]:
    problems = []
    for i, a in enumerate(ports):
        for b in ports[i + 1:]:
            if a.overlaps(b):
                problems.append((_config_key(a), f"{a.name} ({a.label}) overlaps {b.name} ({b.label}); "
                                 f"move one of them so every port is used once"))
    return problems


_KEY_OF_PORT = {
    "livekit-ice-udp": "icePortStart/icePortEnd (or iceUdpPort)", "turn-relay": "turnRelayStart/turnRelayEnd",
    "livekit-http": "livekitHttpPort", "livekit-ice-tcp": "livekitTcpPort", "livekit-prometheus": "livekitPrometheusPort",
    "turn-udp": "turnUdpPort", "turn-tcp": "turnUdpPort", "turn-tls": "turnTlsPort", "redis": "redisPort",
}


def port_problems(cfg: StackConfig) -> list[tuple[str, str]]:
    """Every port collision of a config (used by validation, before anything is created)."""
    return _check_ports(_ports(cfg, cfg.node_count > 1))


def _config_key(port: Port) -> str:
    return _KEY_OF_PORT.get(port.name, f"port {port.name} (fixed)")


def _firewalls(cfg: StackConfig, ports: tuple[Port, ...]) -> tuple[tuple[FirewallRule, ...], tuple[FirewallRule, ...]]:
    admin = cfg.admin_cidrs or (WORLD if cfg.allow_world_ssh else ())
    cloud: list[FirewallRule] = []
    host: list[FirewallRule] = []
    for p in ports:
        if p.scope is Scope.PUBLIC:
            rule = FirewallRule(p.protocol, p.start, p.end, WORLD, f"{p.name}: {p.purpose}")
            cloud.append(rule)
            host.append(rule)
        elif p.scope is Scope.ADMIN and admin:
            rule = FirewallRule(p.protocol, p.start, p.end, tuple(admin), f"{p.name}: {p.purpose}")
            cloud.append(rule)
            host.append(rule)
        elif p.scope is Scope.PRIVATE and cfg.private_network:
            # Hetzner's cloud firewall does not filter private networks (Hetzner Firewalls FAQ), so
            # only the host firewall needs these; DigitalOcean's filters VPC traffic too: see
            # _node_firewall.
            host.append(FirewallRule(p.protocol, p.start, p.end, (cfg.private_network,), f"{p.name}: {p.purpose}"))
    return tuple(cloud), tuple(host)


#: Public ports that other nodes use as well: coturn relays media to LiveKit's ICE ports of any node.
_NODE_TO_NODE_PUBLIC = ("livekit-ice-udp",)


def _node_firewall(ports: tuple[Port, ...], multi: bool) -> tuple[FirewallRule, ...]:
    """Inbound flows from the environment's own nodes: every private-network port (Redis, LiveKit's
    API and metrics, the TURN relay range) and LiveKit's ICE ports (coturn on one node relays to
    LiveKit on another, to its public node IP).

    Needed where the cloud firewall filters traffic between the provider's own servers, VPC
    included (DigitalOcean: "Firewalls affect both public and VPC network traffic"); Hetzner's does
    not filter private networks, and the relayed flows to public ICE ports are world-open there.
    Sources are the nodes themselves: a provider names them its own way (DigitalOcean: the env tag).
    """
    if not multi:
        return ()
    return tuple(FirewallRule(p.protocol, p.start, p.end, (), f"{p.name} between nodes: {p.purpose}")
                 for p in ports if p.scope is Scope.PRIVATE or p.name in _NODE_TO_NODE_PUBLIC)


def turn_names(cfg: StackConfig, nodes: tuple[Node, ...]) -> dict[str, str]:
    """Node name -> the TURN name it answers at. One TURN node: the configured turnHost. More: each
    its own `<node>.<turnHost>`, pointing at that node alone, so no node holds the others' TURN (a
    shared name on one node dies with it; one name on every node would need one certificate
    obtained through every node). Each node obtains its own name's certificate by HTTP-01: the
    name points at that node only."""
    turn = [n.name for n in nodes if n.has(Role.TURN)]
    if len(turn) == 1:
        return {turn[0]: cfg.turn_host}
    return {name: f"{name}.{cfg.turn_host}" for name in turn}


def _turn_servers(cfg: StackConfig, nodes: tuple[Node, ...]) -> tuple[TurnServer, ...]:
    return tuple(server for node, host in turn_names(cfg, nodes).items()
                 for server in (TurnServer(host, cfg.turn_tls_port, "tls", node),
                                TurnServer(host, cfg.turn_udp_port, "udp", node)))


def _dns(cfg: StackConfig, nodes: tuple[Node, ...]) -> tuple[DnsRecord, ...]:
    livekit_nodes = tuple(n.name for n in nodes if n.has(Role.LIVEKIT))
    records = [DnsRecord(cfg.livekit_host, "A", livekit_nodes, balancer=_balanced(cfg))]
    records += [DnsRecord(host, "A", (node,)) for node, host in turn_names(cfg, nodes).items()]
    if len(nodes) > 1:
        records += [DnsRecord(f"{n.name}.{cfg.domain}", "A", (n.name,)) for n in nodes]
    return tuple(records)


def derive(cfg: StackConfig) -> EnvSpec:
    """Compute the spec of a validated config (parse() has already refused port collisions)."""
    nodes = _nodes(cfg)
    ports = _ports(cfg, len(nodes) > 1)
    cloud, host = _firewalls(cfg, ports)
    return EnvSpec(
        config=cfg,
        nodes=nodes,
        ports=ports,
        cloud_firewall=cloud,
        host_firewall=host,
        dns_records=_dns(cfg, nodes),
        turn_servers=_turn_servers(cfg, nodes),
        node_firewall=_node_firewall(ports, len(nodes) > 1),
        balancer=_balancer(cfg, nodes),
    )


_NO_SECRET = SecretValue()


def without_secrets(spec: EnvSpec) -> EnvSpec:
    """The spec with the config's secret values dropped: the outputs carry the resolved secrets
    next to it, and the Pulumi program exports the spec in clear."""
    cfg = dataclasses.replace(spec.config, api_secret=_NO_SECRET, turn_secret=_NO_SECRET, token_key=_NO_SECRET,
                              call_password=_NO_SECRET)
    return dataclasses.replace(spec, config=cfg)


def to_json(spec: EnvSpec) -> dict[str, Any]:
    """The derived spec as JSON, secrets left out."""
    return to_plain(without_secrets(spec))


def from_json(data: Any) -> EnvSpec:
    """The inverse of to_json (raises infra.codec.DecodeError naming the bad field)."""
    return from_plain(EnvSpec, data, "spec")
