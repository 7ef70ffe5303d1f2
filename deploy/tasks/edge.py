"""TURN/TLS and HTTPS on one TCP port 443: an SNI router (nginx stream + ssl_preread).

Why this design (only when the spec says `sni_split`, i.e. turnTlsPort is 443):
  * Caddy has no layer4 router without a custom build (xcaddy + caddy-l4). Debian's nginx with
    `libnginx-mod-stream` is a packaged, well-known L4 router; `ssl_preread` reads the SNI of
    the ClientHello without terminating TLS.
  * TLS stays end to end: the LiveKit name goes to Caddy's internal HTTPS port (`caddy-https`),
    the TURN name to coturn's TLS port (`turn-tls`). nginx holds no certificate and no key.
  * The client's address travels as a PROXY v1 header (nginx can send only v1). Caddy reads it
    (`listener_wrappers { proxy_protocol }`, Caddy >= 2.7), so the token service's per-client
    limits see real clients instead of 127.0.0.1. coturn 4.6.1 reads PROXY only on a plain-TCP
    `tcp-proxy-port`, never in front of TLS (coturn/coturn#1642), and `proxy_protocol` is one
    switch per nginx server: TURN connections therefore pass through a second, internal server
    on a unix socket that takes the header off. coturn logs the node's own address as the client
    of TURN/TLS (its per-user quotas still apply; fail2ban is only for sshd).
  * nginx connects to coturn on the node's interface address, not on loopback: coturn then sees a
    non-loopback client address, which Firefox needs to accept the TURN/TLS relay (it discards
    candidates whose mapped address is loopback). The port is still closed from outside (its
    scope is loopback in the spec; the firewall only lets it in on `lo`).

Limits (audit M1): `edgeConnsPerAddress` connections per client address (limit_conn, from
accept); 5 s to send the ClientHello (preread_timeout); 10 min idle (proxy_timeout: time without
a byte in either direction, not a session length). 10 min fits both kinds of traffic: an HTTPS
connection idle that long is dead (Caddy closes idle keep-alives after 5 min, LiveKit pings its
WebSocket every few seconds), and a TURN/TLS session that carries a call is never idle for more
than seconds (media, ICE consent checks every ~5 s, allocation refreshes), so hour-long calls are
not cut; only a dead one is. File descriptors: LimitNOFILE in a drop-in, worker_rlimit_nofile
equal to it, worker_connections a quarter of it (a TURN connection holds four descriptors across
the two servers). All three are capped by what the node allows (PID 1's hard limit: a VPS's
systemd has 524288, the local machines 20000), so nginx never asks for more than it can get.
"""
from __future__ import annotations

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.operations import files, systemd
from pyinfra.operations.util import any_changed

from deploy.inventory import NodeVars
from deploy.tasks._facts import OpenFilesHardLimit
from deploy.tasks._lifecycle import lifecycle, put_dropin
from deploy.tasks._ops import install_packages, install_validated, put_rendered, service_current

CONFIG = "/etc/nginx/nginx.conf"
STAGED = "/etc/nginx/nginx.conf.staged"
DROPIN_DIR = "/etc/systemd/system/nginx.service.d"
DROPIN_NAME = "voicestack-limits.conf"
DROPIN = f"{DROPIN_DIR}/{DROPIN_NAME}"
#: The TURN/TLS hop's socket (in /run: gone at reboot; the drop-in removes one left by a kill -9).
TURN_SOCKET = "/run/nginx-voicestack-turn.sock"
PREREAD_TIMEOUT = "5s"
PROXY_TIMEOUT = "10m"
NOFILE = 65536


def balancer_listen(vs: NodeVars) -> dict | None:
    """The load balancer's HTTPS entry on this node (None: no balancer, or not one of its targets).

    The balancer's connections start with a PROXY v2 header; nginx reads it (`listen ...
    proxy_protocol`) and, with the stream realip module (in Debian's libnginx-mod-stream), takes
    the client's address from it for `limit_conn` and for the PROXY v1 header sent on to Caddy,
    but only from the private network (`set_real_ip_from`)."""
    if vs.balancer_address is None:
        return None
    return {"listen": f"{vs.private_ip}:{vs.spec.port('lb-https').start}", "bind": vs.private_ip,
            "trusted": vs.cfg.private_network}


def edge_vars(vs: NodeVars, hard_limit: int | None = None) -> dict:
    """Template variables of the SNI router and its drop-in (pure: used by the task and the tests).

    hard_limit: the node's ceiling for open files (OpenFilesHardLimit; None: no ceiling known)."""
    spec, cfg = vs.spec, vs.cfg
    nofile = min(NOFILE, hard_limit) if hard_limit else NOFILE
    turn_tls = spec.port("turn-tls")
    caddy_https = spec.port("caddy-https")
    return {
        "listen_port": spec.port("https").start,
        "turn_host": vs.turn_host,
        # Non-loopback on purpose (see the module docstring).
        "turn_upstream": f"{vs.interface_ip}:{turn_tls.start}",
        "https_upstream": f"{vs.bind_address(caddy_https.scope)}:{caddy_https.start}",
        "turn_socket": TURN_SOCKET,
        "conns_per_address": cfg.edge_conns_per_address,
        "preread_timeout": PREREAD_TIMEOUT,
        "proxy_timeout": PROXY_TIMEOUT,
        "nofile": nofile,
        "worker_connections": nofile // 4,
        "dropin_name": DROPIN_NAME,
        "balancer": balancer_listen(vs),
        "env": spec.env,
    }


@deploy("Install and configure the SNI router on 443")
def edge():
    vs: NodeVars = host.data.vs
    v = edge_vars(vs, host.get_fact(OpenFilesHardLimit))
    # The package's default site would take port 80 from Caddy: it must never start.
    install_packages(["nginx-light", "libnginx-mod-stream"], name="Install nginx with the stream module",
                     masked=("nginx.service",))
    files.directory(name=f"Create {DROPIN_DIR}", path=DROPIN_DIR, mode="755")
    limits = put_rendered(name=f"Render {DROPIN}", service="edge", template="nginx-limits.conf.j2", dest=DROPIN,
                          mode="644", variables=v)
    # 443 is on every address; the balancer's entry is on the private one, which may come late.
    lc = lifecycle("nginx.service", binds=(v["balancer"]["bind"] if v["balancer"] else "",))
    dropin = put_dropin(lc)
    systemd.daemon_reload(name="Reload systemd units", _if=any_changed(limits, dropin))
    put_rendered(name=f"Render {STAGED}", service="edge", template="nginx.conf.j2", dest=STAGED, mode="644",
                 variables=v)
    install_validated(name=f"Validate (nginx -t) and install {CONFIG}", src=STAGED, dest=CONFIG,
                      check="nginx -t -q -c {path}", mode="644")
    service_current(name="Restart nginx if its config, limits or lifecycle changed", service="nginx.service",
                    paths=(CONFIG, DROPIN, lc.dropin), check=f"nginx -t -q -c {CONFIG}")
    systemd.service(name="Enable nginx", service="nginx.service", enabled=True)
