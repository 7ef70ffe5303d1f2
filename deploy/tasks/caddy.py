"""Caddy: TLS for the LiveKit name, the token endpoint and the voice page; obtains the TURN certificate.

The pinned release (deploy/artifacts.json, sha512-checked like every artifact) runs from its own
sandboxed unit as the `caddy` user, not Debian's package: Debian's 2.6.2 has no `proxy_protocol`
listener wrapper, which the SNI router on 443 needs to hand Caddy the client's address (it
arrived in Caddy 2.7). A node that still has Debian's package gets it removed (`apt-get remove`:
the `caddy` user, /etc/caddy and the storage under /var/lib/caddy stay, so obtained certificates
survive; the project's unit file is written first, so the package's postrm does not mask it).

Layout on a LiveKit node:
  /usr/local/bin/caddy                  the pinned release
  /etc/systemd/system/caddy.service     User=caddy, CAP_NET_BIND_SERVICE only, ProtectSystem=strict
  /etc/caddy/Caddyfile                  0644, no secrets: they are {env.*} placeholders
  /etc/caddy/caddy.env                  0600 root (EnvironmentFile=): the token key Caddy adds for the
                                        page's token route, the page's basic-auth user and bcrypt hash
  /var/lib/caddy/.local/share/caddy     certificates and ACME account (deploy/tasks/certificates.py)
  /srv/voicestack/web/current           the voice page (deploy/tasks/web.py)
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress

import bcrypt
from pyinfra import host
from pyinfra.api import deploy
from pyinfra.facts.deb import DebPackages
from pyinfra.facts.files import Link
from pyinfra.facts.server import Arch
from pyinfra.operations import apt, files, server, systemd

from deploy.inventory import DeployInputError, NodeVars
from deploy.tasks import certificates, web
from deploy.tasks._lifecycle import lifecycle
from deploy.tasks._ops import extract_once, fetch_verified, install_validated, put_rendered, service_current, unmask
from infra.spec import CALL_PATH, DRAIN_FLAG, RECORDINGS_PATH, TOKEN_PATH, Role, Scope

USER = "caddy"
HOME = "/var/lib/caddy"          # Debian's caddy user has this home; certificates.STORAGE lives under it
CONF_DIR = "/etc/caddy"
CADDYFILE = f"{CONF_DIR}/Caddyfile"
STAGED = f"{CONF_DIR}/Caddyfile.staged"
ENV_FILE = f"{CONF_DIR}/caddy.env"
ENV_MODE = "600"                 # secrets inside; systemd reads EnvironmentFile= as root
BINARY = "/usr/local/bin/caddy"
UNIT = "/etc/systemd/system/caddy.service"
WANTS_LINK = "/etc/systemd/system/multi-user.target.wants/caddy.service"
STAGING = "/var/cache/voicestack/artifacts"
OPT = "/opt/voicestack"
NOFILE = 65536
#: The token endpoint's bearer key, added by Caddy to the private page's token requests.
ENV_TOKEN_KEY = "VOICESTACK_TOKEN_KEY"
ENV_CALL_USER = "VOICESTACK_CALL_USER"
ENV_CALL_HASH = "VOICESTACK_CALL_HASH"
#: bcrypt cost of the page password. The password is >= 16 (generated: 24) random characters, so
#: the cost is not what stops guessing; 10 keeps Caddy's first check of a login at ~0.1 s on a small node.
BCRYPT_COST = 10
_STD_B64 = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_BCRYPT_B64 = b"./ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
#: PROXY headers are read within this time of a connection from nginx (research D; Caddy's default).
PROXY_PROTOCOL_TIMEOUT = "5s"


def content_security_policy(livekit_host: str) -> str:
    """The page loads only its own files and talks only to its own origin and LiveKit's WebSocket (web/README)."""
    return ("default-src 'self'; "
            f"connect-src 'self' wss://{livekit_host}; "
            "media-src 'self' blob:; img-src 'self' data:; "
            "frame-ancestors 'none'; base-uri 'none'; form-action 'none'")


def password_hash(password: str, env: str) -> str:
    """bcrypt of the page password, as Caddy's basic_auth takes it ($2b$...).

    The salt is derived from the password and the env (HMAC), so an unchanged password gives an
    unchanged env file and no restart on a re-deploy. A random salt protects weak passwords in a
    leaked hash table; these are random strings (generated, or >= 16 characters by validation).
    """
    if len(password.encode()) > 72:
        raise DeployInputError("callPassword is longer than 72 bytes, which bcrypt cannot hash; use a shorter one")
    raw = hmac.new(password.encode(), f"voicestack/{env}/call-basic-auth-salt".encode(), hashlib.sha256).digest()
    salt = base64.b64encode(raw[:16]).rstrip(b"=").translate(bytes.maketrans(_STD_B64, _BCRYPT_B64))
    return bcrypt.hashpw(password.encode(), f"$2b${BCRYPT_COST:02d}$".encode() + salt).decode()


def proxy_protocol_sources(vs: NodeVars) -> list[str]:
    """Who may put a client address in front of a connection to Caddy: nginx on this node only."""
    addrs = ["127.0.0.1", "::1", vs.public_ip] + ([vs.private_ip] if vs.private_ip else [])
    return [str(ipaddress.ip_network(a)) for a in dict.fromkeys(addrs)]


def balancer_vars(vs: NodeVars) -> dict | None:
    """The load balancer's side of Caddy (None: no balancer, or a node it does not target).

    The balancer connects from the private network with a PROXY header (the client's address) to
    ports of their own, bound to the node's private address: port 80's twin (ACME HTTP-01 and the
    redirect), without the SNI router also 443's, and the health check, which is 503 while the
    drain flag exists and otherwise LiveKit's own answer (a 502 when LiveKit is down).

    The health port reads PROXY too: DigitalOcean's checks carry the header (v1) whenever the
    balancer has PROXY protocol on, the local HAProxy's carry v2 like its traffic, and a check
    without one is still answered (Caddy's wrapper takes the header as optional from allowed
    sources), so one listener serves every provider's checks."""
    lb = vs.spec.balancer
    if vs.balancer_address is None or lb is None:
        return None
    spec = vs.spec
    http, health = spec.port("lb-http"), spec.port("lb-health")
    https = spec.port("lb-https")
    drain_dir, drain_file = DRAIN_FLAG.rsplit("/", 1)
    # Without the SNI router the LiveKit site also takes the balancer's HTTPS; like its 443, on
    # every address (the host firewall lets only the private network in).
    https_port = None if spec.sni_split else https.start
    listeners = [{"address": f"{vs.private_ip}:{http.start}", "tls": False},
                 {"address": f"{vs.private_ip}:{health.start}", "tls": False}]
    if https_port:
        listeners.append({"address": f":{https_port}", "tls": True})
    return {
        "bind": vs.private_ip,
        "listeners": listeners,
        "http_port": http.start,
        "https_port": https_port,
        "health_port": health.start,
        "health_path": lb.health.path,
        "allow": [spec.config.private_network],
        "drain_dir": drain_dir,
        "drain_file": "/" + drain_file,
        "timeout": PROXY_PROTOCOL_TIMEOUT,
    }


def caddy_vars(vs: NodeVars) -> dict:
    """Template variables of the Caddyfile (pure: used by the task and the tests)."""
    spec, cfg = vs.spec, vs.cfg
    https = spec.port("caddy-https") if spec.sni_split else spec.port("https")
    http = spec.port("livekit-http")
    https_bind = vs.bind_address(https.scope) if https.scope is not Scope.PUBLIC else None
    return {
        "acme_directory": vs.acme_directory,
        "acme_email": cfg.acme_email,
        "http_port": spec.port("http").start,
        "https_port": https.start,
        "livekit_host": cfg.livekit_host,
        "livekit_upstream": f"{vs.bind_address(http.scope)}:{http.start}",
        # Behind the SNI router Caddy's HTTPS is internal: bind it per its scope (port 80 stays public).
        "https_bind": https_bind,
        # Behind the SNI router every connection starts with nginx's PROXY header (the client's
        # address); without it clients reach Caddy directly and need none.
        "proxy_protocol": ({"listener": f"{https_bind}:{https.start}", "allow": proxy_protocol_sources(vs),
                            "timeout": PROXY_PROTOCOL_TIMEOUT} if spec.sni_split else None),
        "token_path": TOKEN_PATH,
        "token_upstream": f"127.0.0.1:{spec.port('token').start}",
        # The recordings API checks the bearer key itself (agent/recordings_api.py).
        "recordings": ({"path": RECORDINGS_PATH, "upstream": f"127.0.0.1:{spec.port('recordings').start}"}
                       if spec.recording and vs.node.has(Role.AGENT) else None),
        "call": ({"path": CALL_PATH, "bare": CALL_PATH.rstrip("/"), "public": cfg.call_public, "root": web.CURRENT,
                  "csp": content_security_policy(cfg.livekit_host), "env_token_key": ENV_TOKEN_KEY,
                  "env_user": ENV_CALL_USER, "env_hash": ENV_CALL_HASH} if vs.node.has(Role.AGENT) else None),
        "turn_host": vs.turn_host,
        "livekit_tls": ({"cert": certificates.LIVEKIT_CERT, "key": certificates.LIVEKIT_KEY}
                        if vs.certificate_relay else None),
        "acme_relay": vs.certificate_relay,
        "balancer": balancer_vars(vs),
        "env": spec.env,
    }


def caddy_env(vs: NodeVars) -> dict[str, str]:
    """Every variable of /etc/caddy/caddy.env (pure). Public mode needs no secret at all."""
    if not vs.node.has(Role.AGENT) or vs.cfg.call_public:
        return {}
    if not vs.secrets.token_key or not vs.secrets.call_password:
        raise DeployInputError("the outputs have no token_key or call_password, which the private voice page needs; "
                               "re-run the provisioner (make up) so it records them")
    # Values are letters, digits, '-', '_', '.', '/' and '$' only: systemd's EnvironmentFile= and
    # `caddy validate --envfile` read them back verbatim (neither expands '$').
    return {ENV_TOKEN_KEY: vs.secrets.token_key, ENV_CALL_USER: vs.cfg.call_user,
            ENV_CALL_HASH: password_hash(vs.secrets.call_password, vs.spec.env)}


def unit_vars(vs: NodeVars, version: str) -> dict:
    return {"binary": BINARY, "caddyfile": CADDYFILE, "env_file": ENV_FILE, "user": USER, "home": HOME,
            "nofile": NOFILE, "version": version, "lifecycle": caddy_lifecycle(vs)}


def validate_command(path: str) -> str:
    """`caddy validate` of a Caddyfile with the env file its placeholders need (runs as root, before restarts)."""
    return f"{BINARY} validate --adapter caddyfile --config {path} --envfile {ENV_FILE}"


def _remove_debian_package() -> None:
    """Debian's caddy (2.6.2) on a node deployed before the pinned release: the unit file of the
    project is in place already, so the package's postrm leaves caddy.service unmasked."""
    if "caddy" in host.get_fact(DebPackages):
        # `remove`, not `purge`: purge would delete /etc/caddy's conffiles. The package's postrm
        # masks its caddy-api.service.
        apt.packages(name="Remove Debian's caddy package (user, /etc/caddy and storage stay)", packages=["caddy"],
                     present=False)
    # The package enabled its own unit file; the link outlives the package (also after an
    # interrupted run), so it is checked on its own.
    wants = host.get_fact(Link, path=WANTS_LINK)
    if wants and wants.get("link_target") != UNIT:
        server.shell(name="Enable the project's caddy.service in place of the package's",
                     commands=["systemctl daemon-reload && systemctl reenable caddy.service"])


def _install_binary(vs: NodeVars):
    art, arch, url, digest = vs.release("caddy", host.get_fact(Arch))
    files.directory(name=f"Create {STAGING}", path=STAGING, mode="755")
    tarball = f"{STAGING}/caddy_{art.version}_linux_{arch}.tar.gz"
    # The artifact first: a missing or corrupted download stops here, before anything changes.
    fetch_verified(name=f"Download and verify caddy {art.version} ({arch}, {art.algorithm})", url=url, dest=tarball,
                   digest=digest, algorithm=art.algorithm)
    files.directory(name=f"Create {OPT}", path=OPT, mode="755")
    release = f"{OPT}/caddy-{art.version}-{digest[:12]}"
    extract_once(name=f"Extract caddy {art.version}", tarball=tarball, dest_dir=release, expect=art.binary)
    install_validated(name=f"Install {BINARY} {art.version}", src=f"{release}/{art.binary}", dest=BINARY,
                      check="{path} version", mode="755")
    return art


def caddy_lifecycle(vs: NodeVars):
    """Restart policy and boot order of caddy.service (waits for its internal HTTPS address)."""
    v = caddy_vars(vs)
    return lifecycle("caddy.service", binds=(v["https_bind"] or "", v["balancer"]["bind"] if v["balancer"] else ""))


@deploy("Install and configure Caddy")
def caddy():
    vs: NodeVars = host.data.vs
    v = caddy_vars(vs)
    art = _install_binary(vs)

    server.group(name="Create the caddy group", group=USER, system=True)
    server.user(name="Create the caddy user", user=USER, group=USER, system=True, home=HOME,
                shell="/usr/sbin/nologin", create_home=False)
    files.directory(name=f"Create {HOME}", path=HOME, user=USER, group=USER, mode="750")
    files.directory(name=f"Create {CONF_DIR}", path=CONF_DIR, user="root", group=USER, mode="755")

    unmask(name="Unmask caddy.service (a removed Debian package masks it)", service="caddy.service")
    unit = put_rendered(name=f"Render {UNIT}", service="caddy", template="caddy.service.j2", dest=UNIT, mode="644",
                        variables=unit_vars(vs, art.version))
    _remove_debian_package()
    systemd.daemon_reload(name="Reload systemd units", _if=unit.did_change)

    put_rendered(name=f"Render {ENV_FILE}", service="caddy", template="caddy.env.j2", dest=ENV_FILE,
                 user="root", group="root", mode=ENV_MODE, variables={"env": caddy_env(vs), "env_name": vs.spec.env})
    if v["call"] is not None:
        web.voice_page()
    put_rendered(name=f"Render {STAGED}", service="caddy", template="Caddyfile.j2", dest=STAGED, mode="644",
                 variables=v)
    certificates.for_caddy(vs)
    install_validated(name=f"Validate (caddy validate) and install {CADDYFILE}", src=STAGED, dest=CADDYFILE,
                      check=validate_command("{path}"), mode="644")
    # `admin off` disables `caddy reload`; a restart keeps certificates (they live in storage).
    service_current(name="Restart Caddy if its binary, Caddyfile, secrets or unit changed", service="caddy.service",
                    paths=(BINARY, CADDYFILE, ENV_FILE, UNIT, certificates.LIVEKIT_CERT, certificates.LIVEKIT_KEY),
                    check=validate_command(CADDYFILE))
    systemd.service(name="Enable Caddy", service="caddy.service", enabled=True)
