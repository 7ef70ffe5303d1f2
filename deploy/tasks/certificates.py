"""TLS certificates: obtained by Caddy, shared between the nodes, copied to coturn.

One lifecycle, owned here:
  * Caddy obtains the LiveKit name's certificate on the spec's certificate node (ACME HTTP-01
    validations reach one node; the others relay the challenges to it). Nodes that serve the
    name without obtaining it start with a short-lived self-signed placeholder; the deploy's last
    phase ("share certificates") reads the real certificate on the certificate node and installs
    it on the others. Renewals reach them with the next deploy; Caddy renews 30 days before
    expiry, so a deploy at least monthly keeps them current.
  * Every TURN node's Caddy obtains the certificate of its own TURN name (infra.spec.turn_names:
    the name points at that node alone, so HTTP-01 reaches it) and renews it by itself; coturn
    reads it from /etc/coturn/tls, where an hourly timer copies Caddy's renewed certificate and
    makes coturn reload it (SIGUSR2). No TURN certificate travels between nodes.
"""
from __future__ import annotations

import io
import shlex
import time
from typing import Any

from pyinfra import host
from pyinfra.api import deploy, operation
from pyinfra.facts.files import File, FileContents, Sha256File
from pyinfra.operations import files, systemd

from deploy.inventory import NodeVars
from deploy.tasks._facts import NewestFile
from deploy.tasks._lifecycle import lifecycle
from deploy.tasks._ops import put_rendered, service_current

#: Where Debian's caddy (User=caddy, HOME=/var/lib/caddy) keeps what it obtains.
STORAGE = "/var/lib/caddy/.local/share/caddy"
#: How long the deploy waits for Caddy's first certificate (ACME on a fresh node takes seconds).
CERT_WAIT_SECONDS = 180

CADDY_TLS_DIR = "/etc/caddy/tls"
LIVEKIT_CERT = f"{CADDY_TLS_DIR}/livekit.crt"   # nodes other than the certificate node
LIVEKIT_KEY = f"{CADDY_TLS_DIR}/livekit.key"
COTURN_TLS_DIR = "/etc/coturn/tls"
TURN_CERT = f"{COTURN_TLS_DIR}/fullchain.pem"
TURN_KEY = f"{COTURN_TLS_DIR}/privkey.pem"
TURN_SYNC = "/usr/local/sbin/voicestack-turn-cert"
TURN_REFRESH_UNITS = ("voicestack-turn-cert.service", "voicestack-turn-cert.timer")


def certificate_glob(domain: str) -> str:
    """Where Caddy keeps the certificate it obtained for a name (any ACME issuer)."""
    return f"{STORAGE}/certificates/*/{domain}/{domain}.crt"


@operation()
def placeholder_certificate(cert: str, key: str, domain: str, group: str = "caddy"):
    """
    A short-lived self-signed certificate until the deploy brings the real one.

    + cert: certificate file, e.g. "/etc/caddy/tls/livekit.crt"
    + key: private key file, e.g. "/etc/caddy/tls/livekit.key"
    + domain: the name on it, e.g. "livekit.example.com"
    + group: the group that reads both, e.g. "caddy" or "turnserver"
    """
    if host.get_fact(File, path=cert) and host.get_fact(File, path=key):
        return
    q = shlex.quote
    yield (f"openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 "
           f"-subj /CN={q(domain)} -addext subjectAltName=DNS:{q(domain)} -keyout {q(key)} -out {q(cert)} "
           f"2>/dev/null && chgrp {q(group)} {q(cert)} {q(key)} && chmod 640 {q(cert)} {q(key)}")


@operation()
def sync_turn_certificate(domain: str, wait_seconds: int = CERT_WAIT_SECONDS):
    """
    Copy the certificate Caddy obtained for `domain` into coturn's TLS directory (waits for Caddy).

    + domain: the TURN host name, e.g. "turn.example.com"
    + wait_seconds: how long to wait for Caddy's first certificate, e.g. 180
    """
    src = host.get_fact(NewestFile, pattern=certificate_glob(domain))
    if src and host.get_fact(Sha256File, path=src) == host.get_fact(Sha256File, path=TURN_CERT):
        key = src[:-4] + ".key"
        if host.get_fact(Sha256File, path=key) == host.get_fact(Sha256File, path=TURN_KEY):
            return
    yield f"{TURN_SYNC} --wait {int(wait_seconds)}"


def turn_refresh_vars() -> dict[str, Any]:
    """Template variables of the TURN certificate refresh units (pure: the task and the tests)."""
    return {"sync": TURN_SYNC, "lifecycle": lifecycle("voicestack-turn-cert.service", after=("caddy.service",))}


def for_caddy(vs: NodeVars) -> None:
    """On nodes that serve the LiveKit name without obtaining it: a placeholder until the share phase."""
    if vs.certificate_relay:
        files.directory(name=f"Create {CADDY_TLS_DIR}", path=CADDY_TLS_DIR, user="root", group="caddy", mode="750")
        placeholder_certificate(name="Create a placeholder LiveKit certificate (replaced at the end)",
                                cert=LIVEKIT_CERT, key=LIVEKIT_KEY, domain=vs.cfg.livekit_host)


def turn_sync_vars(turn_host: str) -> dict[str, Any]:
    """Template variables of the TURN certificate copy script (pure: the task and the tests)."""
    return {"turn_host": turn_host, "glob": certificate_glob("\"$name\""), "storage": STORAGE, "cert": TURN_CERT,
            "key": TURN_KEY}


def for_coturn(vs: NodeVars) -> list[Any]:
    """coturn's TLS files on a TURN node: its own TURN name's certificate, copied from Caddy's storage.

    Returns the unit-file operations (the caller reloads systemd when one changed)."""
    turn_host = vs.turn_host
    if turn_host is None:   # coturn runs only where the spec gives the node a TURN name
        raise ValueError(f"{vs.node.name} has no TURN name: coturn's certificate belongs to TURN nodes")
    files.directory(name=f"Create {COTURN_TLS_DIR}", path=COTURN_TLS_DIR, user="root", group="turnserver",
                    mode="750")
    put_rendered(name=f"Install {TURN_SYNC}", service="coturn", template="turn-cert.sh.j2", dest=TURN_SYNC, mode="755",
                 variables=turn_sync_vars(turn_host))
    units = [put_rendered(name=f"Render /etc/systemd/system/{unit}", service="coturn", template=f"{unit}.j2",
                          dest=f"/etc/systemd/system/{unit}", mode="644", variables=turn_refresh_vars())
             for unit in TURN_REFRESH_UNITS]
    sync_turn_certificate(name=f"Copy the certificate of {turn_host} from Caddy's storage", domain=turn_host)
    return units


def enable_turn_refresh(vs: NodeVars) -> None:
    systemd.service(name="Enable the TURN certificate refresh timer", service="voicestack-turn-cert.timer",
                    running=True, enabled=True)


# ---- the share phase -------------------------------------------------------------------------

def receivers(hosts: list[Any]) -> list[Any]:
    """Hosts that serve the LiveKit name without obtaining its certificate."""
    return [h for h in hosts if h.data.vs.certificate_relay]


def read_certificate(node_host: Any, domain: str, wait_seconds: int = CERT_WAIT_SECONDS) -> tuple[str, str] | None:
    """(certificate chain, key) PEM that Caddy on `node_host` obtained for `domain`, waiting for it."""
    deadline = time.monotonic() + wait_seconds
    while True:
        path = node_host.get_fact(NewestFile, pattern=certificate_glob(domain))
        if path:
            return ("\n".join(node_host.get_fact(FileContents, path=path)) + "\n",
                    "\n".join(node_host.get_fact(FileContents, path=path[:-4] + ".key")) + "\n")
        if time.monotonic() > deadline:
            return None
        time.sleep(2)  # poll interval of the deadline loop above


class CertificateMissing(Exception):
    """A node that should have obtained a certificate has none after the wait."""


def collect(hosts: list[Any]) -> dict[str, Any]:
    """The share phase's arguments: the LiveKit PEMs, read on the certificate node (raises CertificateMissing)."""
    leader = next((h for h in hosts if h.data.vs.is_certificate_node), None)
    if leader is None:
        return {"livekit_pem": None}
    domain = leader.data.vs.cfg.livekit_host
    pem = read_certificate(leader, domain)
    if pem is None:
        raise CertificateMissing(f"Caddy on {leader.name} has no certificate for {domain} after "
                                 f"{CERT_WAIT_SECONDS}s; see 'journalctl -u caddy' there")
    return {"livekit_pem": pem}


@deploy("Share the certificates")
def share(livekit_pem: tuple[str, str] | None):
    """Install the certificate node's LiveKit certificate on the other nodes; Caddy restarts when
    its certificate is newer than its start (so an interrupted run still restarts)."""
    vs: NodeVars = host.data.vs
    if vs.certificate_relay and livekit_pem:
        for pem, dest in zip(livekit_pem, (LIVEKIT_CERT, LIVEKIT_KEY)):
            files.put(name=f"Install {dest}", src=io.StringIO(pem), dest=dest, user="root", group="caddy", mode="640")
        service_current(name="Restart Caddy if its certificate changed", service="caddy.service",
                        paths=(LIVEKIT_CERT, LIVEKIT_KEY))
