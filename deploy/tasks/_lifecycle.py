"""How every service the deploy runs restarts and boots: one table, one drop-in template.

Every unit restarts by itself and never gives up: `StartLimitIntervalSec=0` turns off systemd's
default start limit (5 starts in 10 s), which otherwise leaves a unit dead for good after a few
fast failures (LiveKit started before Redis answered, a bind to a private address that is not
there yet, a crash loop that a later fix would have healed). A unit in a real crash loop costs
one start per RestartSec, which is why the Python services that load models wait longer.

Boot order: everything after network-online.target; a unit that binds a non-loopback address
first waits (ExecStartPre, with full privileges so that Debian's sandboxes do not stop it) until
that address is on an interface, since a cloud's private NIC may come up after
network-online.target; LiveKit after Redis on the node that runs Redis.

Debian's own units (caddy, nginx, coturn, redis-server) get a drop-in,
/etc/systemd/system/<unit>.d/voicestack-lifecycle.conf; the project's units include the same
lines from their templates (templates/_common/lifecycle-*.j2).
"""
from __future__ import annotations

from dataclasses import dataclass

from deploy.tasks._ops import put_rendered

#: Installed by the base task on every node (templates/base/wait-address.sh.j2).
WAIT_ADDRESS = "/usr/local/sbin/voicestack-wait-address"
#: How long a unit waits for its addresses before it fails (and is restarted after RestartSec).
#: Below systemd's default TimeoutStartSec of 90 s.
WAIT_ADDRESS_SECONDS = 60
DROPIN_NAME = "voicestack-lifecycle.conf"
NETWORK_ONLINE = "network-online.target"


@dataclass(frozen=True)
class Policy:
    restart: str       # Restart=: always | on-failure
    restart_sec: int   # RestartSec= (seconds)
    why: str           # the operator's reason, for the drop-in's comment and the docs


#: Restart policy per unit, with the reason an operator would give.
POLICIES: dict[str, Policy] = {
    "caddy.service": Policy("always", 2, "the front door (HTTPS signalling, the token endpoint, ACME renewals); "
                                         "it starts in well under a second"),
    "nginx.service": Policy("always", 2, "the SNI router on 443 (HTTPS and TURN/TLS); starts in milliseconds"),
    "coturn.service": Policy("always", 2, "TURN for clients behind UDP-blocking firewalls; starts in milliseconds"),
    "livekit.service": Policy("always", 2, "the SFU itself; a restarted LiveKit lets clients reconnect at once"),
    # Redis keeps nothing on disk (save "", appendonly no): a master that comes back empty before
    # Sentinel has noticed it is gone would make its replicas copy the empty data set (Redis
    # replication docs, "Safety of replication when master has persistence turned off"). 5 s leaves
    # room for a failover with down-after-milliseconds 2000 (measured 2.9-3.7 s, research F); the
    # Sentinel issue must keep down-after-milliseconds + failover below it.
    "redis-server.service": Policy("always", 5, "LiveKit's cluster state; RestartSec above Sentinel's failover time "
                                                "so that an empty restarted master cannot wipe its replicas"),
    "redis-sentinel.service": Policy("always", 2, "picks a new Redis primary when one is lost; it keeps no data, "
                                                  "a fresh start rejoins at once"),
    "voicestack-speech.service": Policy("always", 5, "STT/TTS/LLM backends; a start loads Whisper and piper "
                                                     "(seconds of CPU), so a crash loop must not starve LiveKit"),
    "voicestack-agent.service": Policy("always", 5, "the agent worker; a start loads the VAD and warms job "
                                                    "processes (seconds of CPU)"),
    "voicestack-token.service": Policy("always", 2, "the token endpoint; a small aiohttp service"),
    "voicestack-webhooks.service": Policy("always", 2, "the webhook receiver; a small aiohttp service"),
    # A recorder that dies mid-meeting leaves a partial recording (the recordings service reports
    # it); the next start takes new rooms. It loads livekit-agents (seconds of CPU), like the worker.
    "voicestack-recorder.service": Policy("always", 5, "the meeting recorder (recording != off); a start loads "
                                                       "livekit-agents and warms a job process"),
    "voicestack-recordings.service": Policy("always", 5, "transcripts, summaries and downloads of recordings; "
                                                         "its queue is the recordings directory, so a restart "
                                                         "resumes where it stopped"),
    # Type=oneshot allows only on-failure. The timer runs it hourly anyway; a failure (Caddy has no
    # certificate yet) is tried again a minute later instead of waiting an hour.
    "voicestack-turn-cert.service": Policy("on-failure", 60, "copies Caddy's renewed TURN certificate to "
                                                             "coturn; retried a minute after a failure"),
}


@dataclass(frozen=True)
class Lifecycle:
    """Restart policy and boot order of one unit on one node (template variable `lifecycle`)."""

    unit: str
    restart: str
    restart_sec: int
    why: str
    after: tuple[str, ...]
    wants: tuple[str, ...]
    wait_addresses: tuple[str, ...]
    wait_tool: str = WAIT_ADDRESS
    wait_seconds: int = WAIT_ADDRESS_SECONDS

    @property
    def dropin(self) -> str:
        return f"/etc/systemd/system/{self.unit}.d/{DROPIN_NAME}"


def lifecycle(unit: str, *, after: tuple[str, ...] = (), binds: tuple[str, ...] = ()) -> Lifecycle:
    """The lifecycle of `unit`: its policy, ordered after network-online and `after` (also wanted),
    waiting for every non-loopback address in `binds`."""
    policy = POLICIES[unit]
    order = tuple(dict.fromkeys((NETWORK_ONLINE, *after)))
    waits = tuple(dict.fromkeys(a for a in binds if a and not _loopback(a) and a not in ("0.0.0.0", "::")))
    return Lifecycle(unit=unit, restart=policy.restart, restart_sec=policy.restart_sec, why=policy.why,
                     after=order, wants=order, wait_addresses=waits)


def _loopback(addr: str) -> bool:
    import ipaddress

    try:
        return ipaddress.ip_address(addr).is_loopback
    except ValueError:
        return False


def render_dropin(lc: Lifecycle) -> str:
    from deploy.render import render

    return render("_common", "lifecycle.conf.j2", {"lifecycle": lc})


def put_dropin(lc: Lifecycle):
    """Upload the drop-in of a Debian unit; returns the operation (reload systemd when it changed)."""
    return put_rendered(name=f"Render {lc.dropin}", service="_common", template="lifecycle.conf.j2",
                        dest=lc.dropin, mode="644", variables={"lifecycle": lc})
