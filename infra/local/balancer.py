"""The local cloud's load balancer: HAProxy in a namespace of its own, like a cloud LB appliance.

    internet ══ host (cloud firewall) ══ public bridge ── lb netns (eth0: public /24 .5)
                                                             │ haproxy, TCP mode
    machines ══════════════ private bridge ───────────────── (eth1: the private network's .5)

It does what the spec's `Balancer` says and what Hetzner's and DigitalOcean's balancers do:
plain TCP forwards (TLS passes through to each node's SNI router or Caddy), a PROXY v2 header
in front of every connection to a target (the client's address), targets reached on their
private addresses, and an HTTP health check that takes a target out after `retries` failures
and puts it back after as many successes. The cloud firewall in front of it is the env's own
(the forward chain filters every address of the public /24 the same way).

HAProxy runs as a host daemon (`ip netns exec`, foreground, config in the env's run dir), so
`down` stops it with every other host service and deletes its namespace with the others.
"""
from __future__ import annotations

import ipaddress
from pathlib import Path

from infra.local import host, network
from infra.local.names import EnvNames
from infra.spec import Balancer, EnvSpec

DAEMON = "haproxy"
#: Address of the balancer on the public /24 (below the machines, which start at .10).
PUBLIC_OFFSET = 5
#: Idle time before HAProxy closes a forwarded connection: the same 10 min as the nodes' SNI
#: router (deploy/tasks/edge.py), so a call's TURN/TLS or WebSocket is never cut by the balancer first.
IDLE_TIMEOUT = "10m"
#: Connections at once. HAProxy asks for about two descriptors a connection and refuses to start
#: when the host's limit is lower (this host's hard limit: 20000), so 5000 keeps it well inside.
MAXCONN = 5000


def netns(names: EnvNames) -> str:
    return f"{names.netns_prefix}lb"


def public_ip(names: EnvNames) -> str:
    return str(names.public_net.network_address + PUBLIC_OFFSET)


def links(names: EnvNames) -> tuple[str, str]:
    """Host ends of the balancer's veths (public bridge, private bridge); `down` sweeps the prefix."""
    return f"{names.link_prefix}lb", f"{names.link_prefix}lbv"


def stats_socket(names: EnvNames) -> Path:
    return names.run_dir / "haproxy.sock"


def target_states(names: EnvNames) -> dict[str, dict[str, str]]:
    """Backend (service name) -> target -> HAProxy's status of it ("UP", "DOWN", "MAINT", ...)."""
    import socket

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(str(stats_socket(names)))
        sock.sendall(b"show stat\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    lines = data.decode().splitlines()
    header = lines[0].lstrip("# ").split(",")
    states: dict[str, dict[str, str]] = {}
    for line in lines[1:]:
        row = dict(zip(header, line.split(",")))
        if row.get("svname") not in (None, "", "FRONTEND", "BACKEND"):
            states.setdefault(row["pxname"], {})[row["svname"]] = row["status"]
    return states


def wait_for(names: EnvNames, node: str, up: bool, deadline_s: float) -> float:
    """Seconds until every service of the balancer reports `node` UP (or DOWN); LocalEnvError
    after `deadline_s`."""
    want = "UP" if up else "DOWN"
    return host.wait_until(f"the balancer to report {node} {want}",
                           lambda: all(s.get(node) == want for s in target_states(names).values()), deadline_s,
                           interval=0.5)


def config_path(names: EnvNames) -> Path:
    return names.run_dir / "haproxy.cfg"


def render(names: EnvNames, spec: EnvSpec) -> str:
    """haproxy.cfg for the spec's balancer (pure: the unit tests check it with `haproxy -c`)."""
    lb = _balancer(spec)
    hc = lb.health
    targets = [(n, spec.node(n).private_ip) for n in lb.targets]
    lines = [
        f"# voicestack env {names.env}: the cloud load balancer (generated from the spec; do not edit)",
        "global",
        f"    maxconn {MAXCONN}",
        # Which targets are up (`show stat`), for the operator and the tests; root only.
        f"    stats socket {stats_socket(names)} mode 600 level admin",
        "defaults",
        "    mode tcp",
        "    timeout connect 5s",
        f"    timeout client {IDLE_TIMEOUT}",
        f"    timeout server {IDLE_TIMEOUT}",
        f"    timeout check {hc.timeout_s}s",
    ]
    for svc in lb.services:
        lines += [
            "",
            f"frontend {svc.name}",
            f"    bind {public_ip(names)}:{svc.listen_port}",
            f"    default_backend {svc.name}",
            f"backend {svc.name}",
            # Long-lived WebSockets: the target with the fewest connections gets the next one.
            "    balance leastconn",
            "    option httpchk",
            f"    http-check send meth GET uri {hc.path}",
            "    http-check expect status 200",
            # check-send-proxy: the checks carry the PROXY header too, as DigitalOcean's do (HAProxy
            # leaves it off checks that name their own port), so the nodes' health listener is
            # proven to read one.
            f"    default-server check port {hc.port} inter {hc.interval_s}s fall {hc.retries} rise {hc.retries} "
            "send-proxy-v2 check-send-proxy",
            *(f"    server {name} {ip}:{svc.target_port}" for name, ip in targets),
        ]
    return "\n".join(lines) + "\n"


def _balancer(spec: EnvSpec) -> Balancer:
    if spec.balancer is None:
        raise host.LocalEnvError(f"env {spec.env} has no load balancer in its spec")
    if not spec.balancer.private_ip or any(not spec.node(n).private_ip for n in spec.balancer.targets):
        raise host.LocalEnvError("the load balancer and its targets need addresses on the private network "
                                 "(privateNetwork)")
    return spec.balancer


def ensure(names: EnvNames, spec: EnvSpec, log: Path) -> str:
    """The balancer's namespace, links and HAProxy, in line with the spec (idempotent): a running
    HAProxy whose config is unchanged is kept, so connections through it survive a re-run of up."""
    lb = _balancer(spec)
    ns = netns(names)
    pub, prv = links(names)
    network.ensure_namespace_on(ns, pub, names.public_bridge, "eth0",
                                f"{public_ip(names)}/{names.public_net.prefixlen}", gateway=names.gateway)
    prefix = ipaddress.ip_network(spec.config.private_network).prefixlen
    network.ensure_namespace_on(ns, prv, names.private_bridge, "eth1", f"{lb.private_ip}/{prefix}")
    text = render(names, spec)
    path = config_path(names)
    staged = path.with_suffix(".staged")
    names.run_dir.mkdir(parents=True, exist_ok=True)
    staged.write_text(text)
    check = host.run([_haproxy(), "-c", "-q", "-f", str(staged)], check=False)
    if check.returncode != 0:
        raise host.LocalEnvError(f"haproxy refused the balancer's config {staged}: {check.stderr.strip()[-800:]}")
    pid = host.running(DAEMON, names.run_dir)
    if pid and host.pid_alive(pid) and path.exists() and path.read_text() == text:
        return f"haproxy ({pid}) already serves {public_ip(names)}"
    if pid:
        host.stop_pids([pid], grace_s=5)
    staged.replace(path)
    # -db: stay in the foreground (start_daemon holds the pid); -W would fork a master.
    pid = host.start_daemon(DAEMON, ["ip", "netns", "exec", ns, _haproxy(), "-db", "-f", str(path)],
                            names.run_dir, log)
    host.wait_until(f"haproxy listening on {public_ip(names)} (log: {log})",
                    lambda: _listening(ns, [s.listen_port for s in lb.services]), 10)
    return f"haproxy ({pid}) on {public_ip(names)}: " + ", ".join(
        f"{s.listen_port} -> {s.target_port}" for s in lb.services) + f" of {', '.join(lb.targets)}"


def _haproxy() -> str:
    return host.which("haproxy") or "/usr/sbin/haproxy"


def _listening(ns: str, ports: list[int]) -> bool:
    out = host.run(["ip", "netns", "exec", ns, "ss", "-Hltn"], check=False).stdout
    have = {line.split()[3].rsplit(":", 1)[-1] for line in out.splitlines() if len(line.split()) > 3}
    return all(str(p) in have for p in ports)
