"""Caddy (Debian 2.6.2): TLS for the LiveKit name and the token endpoint; obtains the TURN certificate."""
from __future__ import annotations

import io
import shlex

from pyinfra import host
from pyinfra.api import deploy, operation
from pyinfra.operations import files, systemd

from deploy.inventory import NodeVars
from infra.spec import Role, Scope
from deploy.tasks._ops import put_rendered, install_packages, install_validated, service_current

CADDYFILE = "/etc/caddy/Caddyfile"
STAGED = "/etc/caddy/Caddyfile.staged"
CA_ROOT = "/etc/caddy/acme-ca-root.pem"
TLS_DIR = "/etc/caddy/tls"
SHARED_CERT = f"{TLS_DIR}/livekit.crt"   # followers: the certificate node's LiveKit certificate
SHARED_KEY = f"{TLS_DIR}/livekit.key"
# Where Debian's caddy (User=caddy, HOME=/var/lib/caddy) keeps certificates.
STORAGE = "/var/lib/caddy/.local/share/caddy"


def caddy_vars(vs: NodeVars) -> dict:
    """Template variables of the Caddyfile (pure: used by the task and the tests)."""
    spec, cfg = vs.spec, vs.cfg
    https = spec.port("caddy-https") if spec.sni_split else spec.port("https")
    http = spec.port("livekit-http")
    return {
        "acme_directory": vs.acme_directory,
        "acme_ca_root": CA_ROOT if vs.acme_ca_root else None,
        "acme_email": cfg.acme_email,
        "http_port": spec.port("http").start,
        "https_port": https.start,
        "livekit_host": cfg.livekit_host,
        "livekit_upstream": f"{vs.bind_address(http.scope)}:{http.start}",
        # Behind the SNI router Caddy's HTTPS is internal: bind it per its scope (port 80 stays public).
        "https_bind": vs.bind_address(https.scope) if https.scope is not Scope.PUBLIC else None,
        "token_upstream": f"127.0.0.1:{spec.port('token').start}",
        "turn_host": cfg.turn_host if vs.serves_turn_name else None,
        "livekit_tls": {"cert": SHARED_CERT, "key": SHARED_KEY} if vs.certificate_relay else None,
        "acme_relay": vs.certificate_relay,
        "env": spec.env,
    }


def certificate_glob(domain: str) -> str:
    """Where Caddy keeps the certificate it obtained for a name (any ACME issuer)."""
    return f"{STORAGE}/certificates/*/{domain}/{domain}.crt"


@operation()
def placeholder_certificate(cert: str, key: str, domain: str, group: str = "caddy"):
    """
    A short-lived self-signed certificate until the deploy brings the real one (followers).

    + cert, key: file paths, e.g. "/etc/caddy/tls/livekit.crt"
    + domain: the name on it
    + group: the group that reads it, e.g. "caddy" or "turnserver"
    """
    from pyinfra.facts.files import File

    if host.get_fact(File, path=cert) and host.get_fact(File, path=key):
        return
    q = shlex.quote
    yield (f"openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 "
           f"-subj /CN={q(domain)} -addext subjectAltName=DNS:{q(domain)} -keyout {q(key)} -out {q(cert)} "
           f"2>/dev/null && chgrp {q(group)} {q(cert)} {q(key)} && chmod 640 {q(cert)} {q(key)}")


@deploy("Install and configure Caddy")
def caddy():
    vs: NodeVars = host.data.vs
    install_packages(["caddy"], name="Install caddy")
    if vs.acme_ca_root:
        files.put(name=f"Install {CA_ROOT} (the ACME server's CA)", src=io.StringIO(vs.acme_ca_root),
                  dest=CA_ROOT, mode="644")
    put_rendered(name=f"Render {STAGED}", service="caddy", template="Caddyfile.j2", dest=STAGED, mode="644",
                 variables=caddy_vars(vs))
    if vs.certificate_relay:
        files.directory(name=f"Create {TLS_DIR}", path=TLS_DIR, user="root", group="caddy", mode="750")
        placeholder_certificate(name="Create a placeholder LiveKit certificate (replaced at the end)",
                                cert=SHARED_CERT, key=SHARED_KEY, domain=vs.cfg.livekit_host)
    install_validated(name=f"Validate (caddy validate) and install {CADDYFILE}", src=STAGED, dest=CADDYFILE,
                      check="caddy validate --adapter caddyfile --config {path}", mode="644")
    # `admin off` disables `caddy reload`; a restart keeps certificates (they live in storage).
    service_current(name="Restart Caddy if its Caddyfile changed", service="caddy.service",
                    paths=(CADDYFILE, CA_ROOT, SHARED_CERT, SHARED_KEY))
    systemd.service(name="Enable Caddy", service="caddy.service", enabled=True)


@deploy("Share the certificates")
def share_certificates(livekit_pem: tuple[str, str], turn_pem: tuple[str, str] | None):
    """Second pass on the other nodes: install the certificate node's LiveKit and TURN certificates.

    Renewals reach these nodes with the next deploy; Caddy renews 30 days before expiry, so a
    deploy at least monthly keeps them current.
    """
    from deploy.tasks import coturn

    vs: NodeVars = host.data.vs
    if vs.certificate_relay:
        for (pem, dest) in zip(livekit_pem, (SHARED_CERT, SHARED_KEY)):
            files.put(name=f"Install {dest}", src=io.StringIO(pem), dest=dest, user="root", group="caddy",
                      mode="640")
        service_current(name="Restart Caddy if its certificate changed", service="caddy.service",
                        paths=(CADDYFILE, SHARED_CERT, SHARED_KEY))
    if vs.node.has(Role.TURN) and not vs.serves_turn_name and turn_pem:
        for (pem, dest) in zip(turn_pem, (coturn.CERT, coturn.KEY)):
            files.put(name=f"Install {dest}", src=io.StringIO(pem), dest=dest, user="root", group="turnserver",
                      mode="640")
        service_current(name="Restart coturn if its certificate changed", service="coturn.service",
                        paths=(coturn.CONFIG, coturn.DROPIN, coturn.CERT, coturn.KEY))
