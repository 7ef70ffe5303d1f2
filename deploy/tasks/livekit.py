"""LiveKit server: the pinned binary (sha256-checked), its config from the spec, a sandboxed unit."""
from __future__ import annotations

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.facts.server import Arch
from pyinfra.operations import files, server, systemd

from deploy.artifacts import ARCHES
from deploy.inventory import DeployInputError, NodeVars
from deploy.tasks import redis
from deploy.tasks._lifecycle import lifecycle
from deploy.tasks._ops import extract_once, fetch_verified, install_validated, put_rendered, service_current
from infra.spec import Role, Scope

USER = "livekit"
CONF_DIR = "/etc/livekit"
CONFIG = f"{CONF_DIR}/livekit.yaml"
KEY_FILE = f"{CONF_DIR}/keys.yaml"
TURN_SECRET_FILE = f"{CONF_DIR}/turn-secret"
SECRET_MODE = "600"   # LiveKit refuses key/secret files with any group/other permission bits
BINARY = "/usr/local/bin/livekit-server"
UNIT = "/etc/systemd/system/livekit.service"
STAGING = "/var/cache/voicestack/artifacts"
OPT = "/opt/voicestack"
#: The deploy waits this much longer than the stop budget for a restart before it gives up.
RESTART_MARGIN_SECONDS = 120
TURN_TTL_SECONDS = 14400   # LiveKit's default; coturn rejects expired usernames, keep > longest call


def livekit_vars(vs: NodeVars) -> dict:
    """Template variables of livekit.yaml and its unit (pure: used by the task and the tests)."""
    spec, cfg = vs.spec, vs.cfg
    http = spec.port("livekit-http")
    prom = spec.port("livekit-prometheus")
    if prom.scope is not http.scope:
        # LiveKit binds its Prometheus listener on the same bind_addresses as its API.
        raise DeployInputError(f"livekit-prometheus is {prom.scope.value} but livekit-http is {http.scope.value}; "
                             "LiveKit binds both on the same addresses, so give them the same scope")
    binds = ["127.0.0.1"]
    if http.scope is not Scope.LOOPBACK:
        binds.append(vs.bind_address(http.scope))
    ice = spec.port("livekit-ice-udp")
    return {
        "http_port": http.start,
        "bind_addresses": binds,
        "prometheus_port": prom.start,
        "tcp_port": spec.port("livekit-ice-tcp").start,
        "ice_range": cfg.ice_mode == "range",
        "ice_start": ice.start,
        "ice_end": ice.end,
        # The address LiveKit advertises in every ICE candidate (use_external_ip stays off: it would
        # replace this by a STUN lookup); candidates come only from the interface address, so other
        # interfaces (private network, docker) add no duplicates of it.
        "node_ip": vs.public_ip,
        "ice_ips": [f"{vs.interface_ip}/32"],
        "key_file": KEY_FILE,
        "turn_servers": [{"host": t.host, "port": t.port, "protocol": t.protocol}
                         for t in spec.turn_servers_for(vs.node)],
        "turn_secret_file": TURN_SECRET_FILE,
        "turn_ttl": TURN_TTL_SECONDS,
        "redis": redis_client(vs),
        "webhook_urls": webhook_urls(vs),
        "api_key": vs.secrets.api_key,
        "api_secret": vs.secrets.api_secret,
        "binary": BINARY,
        "config": CONFIG,
        "user": USER,
        # What a restart (deploy, binary upgrade) waits for calls to end before SIGKILL: LiveKit's
        # drain has no limit of its own (it waits until every room is empty, research B3).
        "stop_timeout": cfg.livekit_stop_timeout,
        "lifecycle": lifecycle("livekit.service", binds=tuple(binds),
                               after=("redis-server.service",) if vs.node.has(Role.REDIS) else ()),
        "health_url": f"http://127.0.0.1:{http.start}/",
    }


def redis_client(vs: NodeVars) -> dict | None:
    """LiveKit's redis section with several nodes: it finds the current primary through the
    Sentinels (go-redis's failover client follows +switch-master). The master name is always set:
    several sentinel_addresses without it make go-redis build a Redis *Cluster* client."""
    if not vs.spec.multi_node:
        return None
    return {"master_name": redis.MASTER_NAME, "sentinel_addresses": redis.sentinel_addresses(vs),
            "sentinel_password": vs.secrets.redis_sentinel_password, "password": vs.secrets.redis_password}


def webhook_urls(vs: NodeVars) -> list[str]:
    """LiveKit's webhook.urls: the node's own receiver (agent nodes), then the spec's webhookUrls."""
    urls = []
    if vs.node.has(Role.AGENT) and vs.spec.has_port("webhooks"):
        urls.append(f"http://127.0.0.1:{vs.spec.port('webhooks').start}/webhook")
    return urls + [u for u in vs.cfg.webhook_urls if u not in urls]


def artifact_for(vs: NodeVars, uname_arch: str) -> tuple[str, str]:
    """(url, sha256) of the LiveKit release for a node's `uname -m`; DeployInputError if not pinned."""
    _art, _arch, url, digest = vs.release("livekit", uname_arch)
    return url, digest


@deploy("Install and configure LiveKit")
def livekit():
    vs: NodeVars = host.data.vs
    v = livekit_vars(vs)
    art = vs.artifacts["livekit"]
    uname_arch = host.get_fact(Arch)
    url, sha = artifact_for(vs, uname_arch)
    arch = ARCHES[uname_arch]

    # The artifact first: a missing or corrupted download stops here, before anything changes.
    files.directory(name=f"Create {STAGING}", path=STAGING, mode="755")
    tarball = f"{STAGING}/livekit_{art.version}_linux_{arch}.tar.gz"
    fetch_verified(name=f"Download and verify livekit-server {art.version} ({arch})", url=url, dest=tarball,
                   digest=sha, algorithm=art.algorithm)
    files.directory(name=f"Create {OPT}", path=OPT, mode="755")
    release = f"{OPT}/livekit-{art.version}-{sha[:12]}"
    extract_once(name=f"Extract livekit-server {art.version}", tarball=tarball, dest_dir=release,
                 expect=art.binary)
    install_validated(name=f"Install {BINARY} {art.version}", src=f"{release}/{art.binary}", dest=BINARY,
                      check="{path} --version", mode="755")

    server.group(name="Create the livekit group", group=USER, system=True)
    server.user(name="Create the livekit user", user=USER, group=USER, system=True, home="/var/lib/livekit",
                shell="/usr/sbin/nologin", create_home=False)
    files.directory(name=f"Create {CONF_DIR}", path=CONF_DIR, user="root", group=USER, mode="750")
    put_rendered(name=f"Render {CONFIG}", service="livekit", template="livekit.yaml.j2", dest=CONFIG,
                 user="root", group=USER, mode="640", variables=v)
    put_rendered(name=f"Render {KEY_FILE}", service="livekit", template="keys.yaml.j2", dest=KEY_FILE,
                 user=USER, group=USER, mode=SECRET_MODE, variables=v)
    put_rendered(name=f"Render {TURN_SECRET_FILE}", service="livekit", template="turn-secret.j2",
                 dest=TURN_SECRET_FILE, user=USER, group=USER, mode=SECRET_MODE,
                 variables={"turn_secret": vs.secrets.turn_secret})
    unit = put_rendered(name=f"Render {UNIT}", service="livekit", template="livekit.service.j2", dest=UNIT,
                        mode="644", variables=v)
    systemd.daemon_reload(name="Reload systemd units", _if=unit.did_change)
    # A restart drains first (up to stop_timeout, then SIGKILL): bound the command by that.
    restarted = service_current(name="Restart LiveKit if its binary, config or unit changed",
                                service="livekit.service", paths=(BINARY, CONFIG, KEY_FILE, TURN_SECRET_FILE, UNIT),
                                _timeout=v["stop_timeout"] + RESTART_MARGIN_SECONDS)
    systemd.service(name="Enable LiveKit", service="livekit.service", enabled=True)
    server.shell(name="Wait for LiveKit to answer",
                 commands=[f"for i in $(seq 100); do curl -fsS -o /dev/null {v['health_url']} && exit 0; "
                           f"sleep 0.3; done; echo 'LiveKit did not answer on {v['health_url']}' >&2; "
                           "journalctl -u livekit -n 20 --no-pager >&2; exit 1"],
                 _if=restarted.did_change)
