"""Caddy (Debian 2.6.2): TLS for the LiveKit name and the token endpoint; obtains the TURN certificate."""
from __future__ import annotations

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.operations import systemd

from deploy.inventory import NodeVars
from deploy.tasks import certificates
from deploy.tasks._lifecycle import lifecycle, put_dropin
from deploy.tasks._ops import install_packages, install_validated, put_rendered, service_current
from infra.spec import TOKEN_PATH, Scope

CADDYFILE = "/etc/caddy/Caddyfile"
STAGED = "/etc/caddy/Caddyfile.staged"


def caddy_vars(vs: NodeVars) -> dict:
    """Template variables of the Caddyfile (pure: used by the task and the tests)."""
    spec, cfg = vs.spec, vs.cfg
    https = spec.port("caddy-https") if spec.sni_split else spec.port("https")
    http = spec.port("livekit-http")
    return {
        "acme_directory": vs.acme_directory,
        "acme_email": cfg.acme_email,
        "http_port": spec.port("http").start,
        "https_port": https.start,
        "livekit_host": cfg.livekit_host,
        "livekit_upstream": f"{vs.bind_address(http.scope)}:{http.start}",
        # Behind the SNI router Caddy's HTTPS is internal: bind it per its scope (port 80 stays public).
        "https_bind": vs.bind_address(https.scope) if https.scope is not Scope.PUBLIC else None,
        "token_path": TOKEN_PATH,
        "token_upstream": f"127.0.0.1:{spec.port('token').start}",
        "turn_host": cfg.turn_host if vs.serves_turn_name else None,
        "livekit_tls": ({"cert": certificates.LIVEKIT_CERT, "key": certificates.LIVEKIT_KEY}
                        if vs.certificate_relay else None),
        "acme_relay": vs.certificate_relay,
        "env": spec.env,
    }


def caddy_lifecycle(vs: NodeVars):
    """Restart policy and boot order of caddy.service (waits for its internal HTTPS address)."""
    return lifecycle("caddy.service", binds=(caddy_vars(vs)["https_bind"] or "",))


@deploy("Install and configure Caddy")
def caddy():
    vs: NodeVars = host.data.vs
    install_packages(["caddy"], name="Install caddy")
    lc = caddy_lifecycle(vs)
    dropin = put_dropin(lc)
    systemd.daemon_reload(name="Reload systemd units", _if=dropin.did_change)
    put_rendered(name=f"Render {STAGED}", service="caddy", template="Caddyfile.j2", dest=STAGED, mode="644",
                 variables=caddy_vars(vs))
    certificates.for_caddy(vs)
    install_validated(name=f"Validate (caddy validate) and install {CADDYFILE}", src=STAGED, dest=CADDYFILE,
                      check="caddy validate --adapter caddyfile --config {path}", mode="644")
    # `admin off` disables `caddy reload`; a restart keeps certificates (they live in storage).
    service_current(name="Restart Caddy if its Caddyfile changed", service="caddy.service",
                    paths=(CADDYFILE, certificates.LIVEKIT_CERT, certificates.LIVEKIT_KEY, lc.dropin))
    systemd.service(name="Enable Caddy", service="caddy.service", enabled=True)
