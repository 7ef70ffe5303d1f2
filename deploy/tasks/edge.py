"""TURN/TLS and HTTPS on one TCP port 443: an SNI router (nginx stream + ssl_preread).

Why this design (only when the spec says `sni_split`, i.e. turnTlsPort is 443):
  * Debian's Caddy 2.6.2 has no layer4 module, and building one with xcaddy would replace the
    distribution package (and its security updates) with a custom binary. Debian's nginx with
    `libnginx-mod-stream` is a packaged, well-known L4 router; `ssl_preread` reads the SNI of
    the ClientHello without terminating TLS.
  * TLS stays end to end: the LiveKit name goes to Caddy's internal HTTPS port (`caddy-https`),
    the TURN name to coturn's TLS port (`turn-tls`). nginx holds no certificate and no key.
  * No PROXY protocol: coturn 4.6.1 does accept it, but only on a plain-TCP `tcp-proxy-port`
    (it cannot terminate TLS there, coturn/coturn#1642) and nginx can only send v1. Using it
    would mean terminating TURN's TLS in nginx with a second copy of the certificate.
    Instead nginx connects to coturn on the node's public address, not on loopback: coturn then
    sees a non-loopback client address, which Firefox needs to accept the TURN/TLS relay (it
    discards candidates whose mapped address is loopback). The port is still closed from
    outside (its scope is loopback in the spec; the firewall only lets it in on `lo`).
  * Cost: coturn and Caddy log the node's own address as the client of TURN/TLS and HTTPS
    connections (per-IP limits in them do not apply; fail2ban is only for sshd).
"""
from __future__ import annotations

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.operations import systemd

from deploy.inventory import NodeVars
from deploy.tasks._lifecycle import lifecycle, put_dropin
from deploy.tasks._ops import install_packages, install_validated, put_rendered, service_current

CONFIG = "/etc/nginx/nginx.conf"
STAGED = "/etc/nginx/nginx.conf.staged"
PROXY_TIMEOUT = "1h"   # idle limit; TURN refreshes its allocation every few minutes


def edge_vars(vs: NodeVars) -> dict:
    """Template variables of the SNI router (pure: used by the task and the tests)."""
    spec, cfg = vs.spec, vs.cfg
    turn_tls = spec.port("turn-tls")
    caddy_https = spec.port("caddy-https")
    return {
        "listen_port": spec.port("https").start,
        "turn_host": cfg.turn_host,
        # Non-loopback on purpose (see the module docstring).
        "turn_upstream": f"{vs.public_ip}:{turn_tls.start}",
        "https_upstream": f"{vs.bind_address(caddy_https.scope)}:{caddy_https.start}",
        "proxy_timeout": PROXY_TIMEOUT,
        "env": spec.env,
    }


@deploy("Install and configure the SNI router on 443")
def edge():
    vs: NodeVars = host.data.vs
    # The package's default site would take port 80 from Caddy: it must never start.
    install_packages(["nginx-light", "libnginx-mod-stream"], name="Install nginx with the stream module",
                     masked=("nginx.service",))
    lc = lifecycle("nginx.service")  # listens on every address: nothing to wait for
    dropin = put_dropin(lc)
    systemd.daemon_reload(name="Reload systemd units", _if=dropin.did_change)
    put_rendered(name=f"Render {STAGED}", service="edge", template="nginx.conf.j2", dest=STAGED, mode="644",
                 variables=edge_vars(vs))
    install_validated(name=f"Validate (nginx -t) and install {CONFIG}", src=STAGED, dest=CONFIG,
                      check="nginx -t -q -c {path}", mode="644")
    service_current(name="Restart nginx if its config changed", service="nginx.service", paths=(CONFIG, lc.dropin))
    systemd.service(name="Enable nginx", service="nginx.service", enabled=True)
