"""Redis for a LiveKit cluster: on the private network only, password required."""
from __future__ import annotations

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.operations import systemd

from deploy.inventory import NodeVars
from deploy.tasks._lifecycle import lifecycle, put_dropin
from deploy.tasks._ops import install_packages, put_rendered, service_current

CONFIG = "/etc/redis/redis.conf"


def redis_vars(vs: NodeVars) -> dict:
    """Template variables of redis.conf (pure: used by the task and the tests)."""
    port = vs.spec.port("redis")
    return {
        "bind": ["127.0.0.1", vs.bind_address(port.scope)],
        "port": port.start,
        "password": vs.secrets.redis_password,
    }


@deploy("Install and configure Redis")
def redis():
    vs: NodeVars = host.data.vs
    install_packages(["redis-server"], name="Install redis-server")
    put_rendered(name=f"Render {CONFIG}", service="redis", template="redis.conf.j2", dest=CONFIG,
                 user="redis", group="redis", mode="640", variables=redis_vars(vs))
    lc = lifecycle("redis-server.service", binds=tuple(redis_vars(vs)["bind"]))
    dropin = put_dropin(lc)
    systemd.daemon_reload(name="Reload systemd units", _if=dropin.did_change)
    service_current(name="Restart Redis if its config changed", service="redis-server.service",
                    paths=(CONFIG, lc.dropin))
    systemd.service(name="Enable Redis", service="redis-server.service", enabled=True)
