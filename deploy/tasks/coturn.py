"""coturn (Debian 4.6.1): TURN with REST credentials, relaying only to the LiveKit nodes."""
from __future__ import annotations

import io

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.operations import files, systemd
from pyinfra.operations.util import any_changed

from deploy.inventory import DeployInputError, NodeVars
from deploy.tasks import certificates
from deploy.tasks._lifecycle import lifecycle, put_dropin
from deploy.tasks._ops import install_packages, put_rendered, service_current, unmask

CONFIG = "/etc/turnserver.conf"
DROPIN = "/etc/systemd/system/coturn.service.d/voicestack.conf"

# Quotas: a voice stack relays Opus audio only.
USER_QUOTA = 12            # concurrent allocations per username (LiveKit's embedded TURN default)
TOTAL_QUOTA = 400          # allocations per server
MAX_BPS = 32000            # bytes/s per session (~256 kbit/s)
BPS_CAPACITY = 12500000    # bytes/s for all sessions (~100 Mbit/s)

# On coturn 4.6.1 "denied-peer-ip=::" (or ::0) denies EVERY peer, IPv4 included (verified against a
# real coturn: tests/unit/test_turn_probe.py); the full IPv6 range written out does not. CVE-2026-27624 (fixed in 4.9.0) lets
# IPv4-mapped IPv6 peers (::ffff:a.b.c.d) past IPv4 deny rules: the IPv6 range covers them.
DENY_ALL_V4 = "0.0.0.0-255.255.255.255"
DENY_ALL_V6 = "::-ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
FORBIDDEN_LINES = ("denied-peer-ip=::", "denied-peer-ip=::0")
FORBIDDEN_OPTIONS = ("allow-loopback-peers", "no-auth", "server-relay", "lt-cred-mech", "cli-password")
REQUIRED = ("use-auth-secret", "static-auth-secret=", "no-cli", "no-tcp-relay", "no-multicast-peers",
            f"denied-peer-ip={DENY_ALL_V4}", f"denied-peer-ip={DENY_ALL_V6}", "allowed-peer-ip=")


def coturn_vars(vs: NodeVars) -> dict:
    """Template variables of turnserver.conf (pure: used by the task and the tests)."""
    spec, cfg = vs.spec, vs.cfg
    relay = spec.port("turn-relay")
    tls = spec.port("turn-tls")
    # coturn can bind only an address its interface holds (another one makes it retry the bind
    # forever while its unit looks active), and it relays to LiveKit's public node IP, the only
    # address LiveKit advertises: so it listens and relays on the interface address. Behind 1:1
    # NAT, external-ip makes it hand out the public address in XOR-RELAYED-ADDRESS. With several
    # nodes the relay must not sit on the private network: a private source towards another
    # node's public address is dropped by clouds (anti-spoofing).
    low_port = min(spec.port("turn-udp").start, tls.start) < 1024
    return {
        "realm": cfg.turn_host,
        "listening_ip": vs.interface_ip,
        "relay_ip": vs.interface_ip,
        "external_ip": f"{vs.public_ip}/{vs.interface_ip}" if vs.nat else None,
        "listening_port": spec.port("turn-udp").start,
        "tls_port": tls.start,
        "tls": True,
        "cert": certificates.TURN_CERT,
        "pkey": certificates.TURN_KEY,
        "min_port": relay.start,
        "max_port": relay.end,
        "secret": vs.secrets.turn_secret,
        "allowed_peers": list(vs.livekit_peers),
        "deny_v4": DENY_ALL_V4,
        "deny_v6": DENY_ALL_V6,
        "user_quota": USER_QUOTA,
        "total_quota": TOTAL_QUOTA,
        "max_bps": MAX_BPS,
        "bps_capacity": BPS_CAPACITY,
        "bind_capability": low_port,
    }


def lint(text: str) -> list[str]:
    """Problems of a rendered turnserver.conf (coturn 4.6.1 has no config check of its own)."""
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
    problems = [f"contains {line!r}, which denies every peer on coturn 4.6.1" for line in lines
                if line in FORBIDDEN_LINES]
    problems += [f"contains forbidden option {line.split('=')[0]!r}" for line in lines
                 if line.split("=")[0] in FORBIDDEN_OPTIONS]
    problems += [f"lacks required setting {r!r}" for r in REQUIRED if r not in text]
    return problems


def render_config(vs: NodeVars) -> str:
    from deploy.render import render

    text = render("coturn", "turnserver.conf.j2", coturn_vars(vs))
    problems = lint(text)
    if problems:
        raise DeployInputError(f"{vs.node.name}: refusing to deploy {CONFIG}: " + "; ".join(problems))
    return text


@deploy("Install and configure coturn")
def coturn():
    vs: NodeVars = host.data.vs
    v = coturn_vars(vs)
    text = render_config(vs)

    # Never let the package's default (unauthenticated) config run: the unit is masked and
    # starts are blocked while apt installs; it is unmasked once our config is in place.
    install_packages(["coturn"], name="Install coturn", masked=("coturn.service",))
    files.put(name=f"Render {CONFIG}", src=io.StringIO(text), dest=CONFIG, user="root", group="turnserver",
              mode="640")
    dropin = put_rendered(name=f"Render {DROPIN}", service="coturn", template="coturn.service.conf.j2",
                          dest=DROPIN, mode="644", variables=v)
    lc = lifecycle("coturn.service", binds=(v["listening_ip"], v["relay_ip"]))
    lifecycle_dropin = put_dropin(lc)
    units = [dropin, lifecycle_dropin, *certificates.for_coturn(vs)]
    systemd.daemon_reload(name="Reload systemd units", _if=any_changed(*units))
    unmask(name="Unmask coturn", service="coturn.service")
    service_current(name="Restart coturn if its config changed", service="coturn.service",
                    paths=(CONFIG, DROPIN, lc.dropin))
    systemd.service(name="Enable coturn", service="coturn.service", enabled=True)
    certificates.enable_turn_refresh(vs)
