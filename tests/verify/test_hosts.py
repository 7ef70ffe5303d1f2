"""On the hosts (testinfra over SSH): services, socket bindings, secret files, versions, journal, clock."""
from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Iterator

import paramiko
import pytest
import testinfra

from infra.outputs import NodeOut, Outputs
from infra.spec import EnvSpec, Role, Scope

# Unit per role; `None` = every node.
SERVICES: dict[str, Role | None] = {
    "ssh.service": None, "nftables.service": None, "fail2ban.service": None,
    "unattended-upgrades.service": None,  # timesyncd: see test_host_06 (containers skip it by design)
    "livekit.service": Role.LIVEKIT, "caddy.service": Role.LIVEKIT, "coturn.service": Role.TURN,
    "redis-server.service": Role.REDIS, "redis-sentinel.service": Role.REDIS,
    "voicestack-speech.service": Role.AGENT, "voicestack-agent.service": Role.AGENT,
    "voicestack-token.service": Role.AGENT, "voicestack-webhooks.service": Role.AGENT,
}
SECRET_FILES = [  # path, owner, group, allowed modes
    ("/etc/livekit/keys.yaml", "livekit", "livekit", {0o600}),
    ("/etc/livekit/turn-secret", "livekit", "livekit", {0o600}),
    ("/etc/turnserver.conf", "root", "turnserver", {0o640, 0o600}),
    ("/etc/voicestack/agent.env", "root", "root", {0o600}),
    ("/etc/caddy/caddy.env", "root", "root", {0o600}),
]
#: With recording on (infra/spec.py EnvSpec.recording), on agent nodes.
RECORDING_SERVICES = ("voicestack-recorder.service", "voicestack-recordings.service")
WILDCARD = {"0.0.0.0", "::", "*", "[::]"}


def _services(spec: EnvSpec) -> dict[str, Role | None]:
    """The units the deploy runs in this environment, with the role that runs them."""
    return {**SERVICES, **({u: Role.AGENT for u in RECORDING_SERVICES} if spec.recording else {})}


def _pinned_client(outputs: Outputs, node: NodeOut) -> paramiko.SSHClient:
    """An SSH client that accepts only the host key the deploy recorded (testinfra's own paramiko
    backend warns and goes on for an unknown key, and ignores UserKnownHostsFile)."""
    known = Path(outputs.deploy.known_hosts or outputs.paths.known_hosts)
    client = paramiko.SSHClient()
    if known.is_file():
        client.load_host_keys(str(known))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    try:
        client.connect(node.public_ip, port=node.ssh_port, username=node.ssh_user, key_filename=node.ssh_key,
                       timeout=10, allow_agent=False, look_for_keys=False)
    except paramiko.SSHException as exc:
        pytest.fail(f"SSH to {node.name} ({node.public_ip}) with the host key in {known} failed: {exc}; "
                    "if the server was rebuilt, remove its old key (ssh-keygen -R) and run make deploy")
    return client


@pytest.fixture(scope="module")
def hosts(outputs: Outputs) -> Iterator[dict[str, tuple[NodeOut, object]]]:
    found = {}
    for node in outputs.nodes:
        host = testinfra.get_host(f"paramiko://{node.ssh_user}@{node.public_ip}:{node.ssh_port}")
        # testinfra's backend builds its client lazily (a cached property): hand it the pinned one.
        host.backend.__dict__["client"] = _pinned_client(outputs, node)
        found[node.name] = (node, host)
    yield found
    for _node, host in found.values():
        host.backend.client.close()


def _roles(node: NodeOut) -> set[str]:
    return set(node.roles)


def test_host_01_services_active_and_enabled(hosts, spec: EnvSpec) -> None:
    units = _services(spec)
    if spec.sni_split:
        units["nginx.service"] = Role.LIVEKIT  # the SNI router on 443
    problems = []
    for node, host in hosts.values():
        for unit, role in units.items():
            if role is not None and role.value not in _roles(node):
                continue
            svc = host.service(unit)
            if not (svc.is_running and svc.is_enabled):
                problems.append(f"{unit} on {node.name} (running={svc.is_running}, enabled={svc.is_enabled})")
    assert not problems, ("not active+enabled: " + "; ".join(problems) +
                          " — journalctl -u <unit> on the node, then make deploy")


def _listeners(host) -> list[tuple[str, str, int]]:
    out = host.check_output("ss -Hlntu")
    found = []
    for line in out.splitlines():
        parts = line.split()
        proto, local = parts[0], parts[4]
        addr, _, port = local.rpartition(":")
        addr = addr.strip("[]").split("%")[0]
        found.append((proto, addr, int(port)))
    return found


def test_host_02_sockets_bound_as_the_spec_says(hosts, spec: EnvSpec) -> None:
    problems = []
    deployed = {"livekit", "coturn", "caddy", "edge", "redis", "sshd", "agent"}
    for node, host in hosts.values():
        listeners = _listeners(host)
        for port in spec.ports_for(next(n for n in spec.nodes if n.name == node.name)):
            if port.service not in deployed or port.start != port.end:
                continue  # ranges (ICE, relay) are bound per session
            bound = {a for proto, a, p in listeners if p == port.start and proto == port.protocol}
            if not bound:
                problems.append(f"{port.name} {port.label}: nothing listens on {node.name}")
            elif port.scope in (Scope.LOOPBACK, Scope.PRIVATE) and bound & WILDCARD:
                problems.append(f"{port.name} {port.label} ({port.scope.value}) listens on all addresses on "
                                f"{node.name}: bind it to {'127.0.0.1' if port.scope is Scope.LOOPBACK else 'the private IP'}")
            elif port.scope is Scope.PRIVATE:
                public = [a for a in bound if a not in WILDCARD and not ipaddress.ip_address(a).is_private
                          and not ipaddress.ip_address(a).is_loopback]
                if public:
                    problems.append(f"{port.name} listens on public {public} on {node.name}")
    assert not problems, "; ".join(problems)


def test_host_03_secret_files_private(hosts) -> None:
    problems = []
    for node, host in hosts.values():
        for path, owner, group, modes in SECRET_FILES:
            f = host.file(path)
            if not f.exists:
                if "livekit" in _roles(node):
                    problems.append(f"{path} missing on {node.name}")
                continue
            if f.mode not in modes or f.user != owner or f.group != group:
                problems.append(f"{path} on {node.name} is {oct(f.mode)} {f.user}:{f.group}, "
                                f"want {'/'.join(oct(m) for m in modes)} {owner}:{group}")
    assert not problems, "; ".join(problems)


def test_host_04_livekit_version_matches_the_spec(hosts, spec: EnvSpec) -> None:
    want = spec.config.livekit_version
    for node, host in hosts.values():
        if "livekit" not in _roles(node):
            continue
        got = host.check_output("/usr/local/bin/livekit-server --version")
        assert got.strip().endswith(want), f"{node.name} runs '{got}', the spec pins {want}: make deploy"


def test_host_05_no_udp_buffer_warning(hosts) -> None:
    for node, host in hosts.values():
        if "livekit" not in _roles(node):
            continue
        log = host.run("journalctl -u livekit.service -b --no-pager -o cat").stdout
        assert "UDP receive buffer is too small" not in log, (
            f"LiveKit on {node.name} warns about UDP buffers: raise net.core.rmem_max/wmem_max (deploy base task)")


def test_host_06_clock_synchronised(hosts) -> None:
    """TURN credentials and tokens expire by the clock: it must be kept in sync."""
    for node, host in hosts.values():
        timesyncd = host.service("systemd-timesyncd.service")
        assert timesyncd.is_enabled, f"systemd-timesyncd is not enabled on {node.name}: make deploy"
        container = host.run("systemd-detect-virt --container").rc == 0
        if container:
            continue  # a container shares the host's kernel clock; timesyncd skips itself by design
        synced = host.check_output("timedatectl show -p NTPSynchronized --value").strip()
        assert timesyncd.is_running and synced == "yes", (
            f"clock of {node.name} is not synchronised (timesyncd running={timesyncd.is_running}, "
            f"NTPSynchronized={synced}): check outbound UDP 123")


def _lifecycle_units(spec: EnvSpec, node: NodeOut) -> list[str]:
    """The units whose restart policy the deploy sets on `node` (deploy/tasks/_lifecycle.py)."""
    snode = next(n for n in spec.nodes if n.name == node.name)
    units = [u for u, role in _services(spec).items() if role is not None and snode.has(role)]
    if spec.sni_split and snode.has(Role.LIVEKIT):
        units.append("nginx.service")
    if spec.turn_host_of(snode):
        units.append("voicestack-turn-cert.service")
    return units


def _show(host, unit: str, props: tuple[str, ...]) -> dict[str, str]:
    out = host.check_output(f"systemctl show -p {','.join(props)} {unit}")
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def _usec(text: str) -> float:
    """Seconds of a systemd time span as `systemctl show` prints it ("2s", "2min 30s", "100ms", "0")."""
    units = {"us": 1e-6, "ms": 1e-3, "s": 1, "min": 60, "h": 3600, "d": 86400}
    if text in ("0", ""):
        return 0.0
    return sum(float(n) * units[u] for n, u in re.findall(r"([\d.]+)\s*(us|ms|min|s|h|d)", text))


def test_host_07_services_restart_by_themselves_and_never_give_up(hosts, spec: EnvSpec) -> None:
    """kill -9, a crash or an OOM kill: systemd starts each service again, however often it fails."""
    from deploy.tasks._lifecycle import POLICIES

    problems = []
    for node, host in hosts.values():
        for unit in _lifecycle_units(spec, node):
            want = POLICIES[unit]
            got = _show(host, unit, ("Restart", "RestartUSec", "StartLimitIntervalUSec", "After"))
            if got.get("Restart") != want.restart or _usec(got.get("RestartUSec", "")) != want.restart_sec:
                problems.append(f"{unit} on {node.name}: Restart={got.get('Restart')} RestartUSec="
                                f"{got.get('RestartUSec')}, want {want.restart} after {want.restart_sec}s")
            if got.get("StartLimitIntervalUSec") != "0":
                problems.append(f"{unit} on {node.name}: StartLimitIntervalUSec={got.get('StartLimitIntervalUSec')} "
                                "(systemd gives up after 5 fast failures), want 0")
            if "network-online.target" not in got.get("After", "").split():
                problems.append(f"{unit} on {node.name} is not ordered after network-online.target")
    assert not problems, "; ".join(problems) + " — make deploy renders the unit or its drop-in"


def test_host_08_livekit_stop_budget_and_boot_order(hosts, spec: EnvSpec) -> None:
    """A LiveKit restart waits livekitStopTimeout for calls to end (not 30 min); on the Redis node it
    starts after Redis."""
    for node, host in hosts.values():
        snode = next(n for n in spec.nodes if n.name == node.name)
        if not snode.has(Role.LIVEKIT):
            continue
        got = _show(host, "livekit.service", ("TimeoutStopUSec", "After"))
        assert _usec(got["TimeoutStopUSec"]) == spec.config.livekit_stop_timeout, (
            f"livekit on {node.name} has TimeoutStopUSec={got['TimeoutStopUSec']}, the spec says "
            f"livekitStopTimeout={spec.config.livekit_stop_timeout}: make deploy")
        if snode.has(Role.REDIS):
            assert "redis-server.service" in got["After"].split(), f"livekit on {node.name} is not after Redis"
