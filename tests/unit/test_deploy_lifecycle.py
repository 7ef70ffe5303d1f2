"""Every service restarts by itself, never gives up, and boots in order (deploy/tasks/_lifecycle.py).

The rendered unit files and drop-ins are checked line by line; `systemd-analyze verify` (when the
host has it) checks that systemd itself accepts them; the address-wait script runs for real.
"""
from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import pytest

from deploy.inventory import node_vars
from deploy.render import render
from deploy.tasks import _lifecycle, agent, caddy, certificates, coturn, livekit, redis
from infra.config import ConfigError, parse
from tests.conftest import require
from tests.unit.support import outputs_for, spec_of

DEBIAN_UNITS = ("nginx.service", "coturn.service", "redis-server.service", "redis-sentinel.service")


def unit_files(nodes: int = 1, node: str = "node-1", **changes) -> dict[str, str]:
    """unit name -> the text systemd reads for it on `node` (own unit file, or our drop-in)."""
    spec = spec_of(nodes, **changes)
    vs = node_vars(outputs_for(spec))[node]
    lk = livekit.livekit_vars(vs)
    files = {"livekit.service": render("livekit", "livekit.service.j2", lk),
             "caddy.service": render("caddy", "caddy.service.j2", caddy.unit_vars(vs, "2.11.4")),
             "nginx.service": _lifecycle.render_dropin(_lifecycle.lifecycle("nginx.service")),
             "voicestack-turn-cert.service": render("coturn", "voicestack-turn-cert.service.j2",
                                                    certificates.turn_refresh_vars())}
    cv = coturn.coturn_vars(vs)
    files["coturn.service"] = _lifecycle.render_dropin(
        _lifecycle.lifecycle("coturn.service", binds=(cv["listening_ip"], cv["relay_ip"])))
    if node in {n.name for n in spec.redis_nodes}:
        files["redis-server.service"] = _lifecycle.render_dropin(
            _lifecycle.lifecycle("redis-server.service", binds=tuple(redis.redis_vars(vs)["bind"])))
        files["redis-sentinel.service"] = _lifecycle.render_dropin(
            _lifecycle.lifecycle("redis-sentinel.service", binds=tuple(redis.sentinel_vars(vs)["bind"])))
    v = agent.agent_vars(vs)
    for name in v["services"]:
        files[f"{name}.service"] = render("agent", agent.unit_template(name), agent.unit_vars(v, name))
    return files


def directive(text: str, key: str) -> list[str]:
    return re.findall(rf"^{key}=(.*)$", text, re.M)


ALL_UNITS = sorted(_lifecycle.POLICIES)


@pytest.mark.parametrize("unit", ALL_UNITS)
def test_every_unit_restarts_by_itself_and_never_gives_up(unit: str) -> None:
    text = unit_files(3, recording="rooms")[unit]
    policy = _lifecycle.POLICIES[unit]
    assert directive(text, "Restart") == [policy.restart]
    assert directive(text, "RestartSec") == [str(policy.restart_sec)]
    # systemd's default start limit (5 starts in 10 s) would leave the unit failed for good.
    assert directive(text, "StartLimitIntervalSec") == ["0"]
    assert "network-online.target" in directive(text, "After")[0].split()
    assert "network-online.target" in directive(text, "Wants")[0].split()
    unit_section = text.split("[Service]")[0]
    assert "StartLimitIntervalSec=0" in unit_section  # a [Unit] setting: ignored under [Service]


def test_the_policy_table_covers_every_service_the_deploy_runs() -> None:
    deployed = set(unit_files(3, recording="rooms"))
    assert deployed == set(ALL_UNITS), deployed ^ set(ALL_UNITS)


def test_oneshot_refresh_restarts_only_on_failure() -> None:
    # systemd refuses Restart=always for Type=oneshot units.
    text = unit_files()["voicestack-turn-cert.service"]
    assert "Type=oneshot" in text and directive(text, "Restart") == ["on-failure"]
    assert "caddy.service" in directive(text, "After")[0].split()


def test_redis_restarts_slower_than_a_sentinel_failover() -> None:
    # A master without persistence that returns empty before Sentinel noticed wipes its replicas
    # (Redis replication docs); measured failovers with down-after 2000 ms took 2.9-3.7 s.
    assert _lifecycle.POLICIES["redis-server.service"].restart_sec >= 5
    assert _lifecycle.POLICIES["redis-server.service"].restart_sec > max(
        p.restart_sec for u, p in _lifecycle.POLICIES.items() if u.startswith(("caddy", "nginx", "livekit")))


def test_livekit_waits_for_redis_on_every_node_that_runs_it() -> None:
    for node in ("node-1", "node-2", "node-3"):  # every cluster node runs Redis + Sentinel
        text = unit_files(3, node)["livekit.service"]
        assert "redis-server.service" in directive(text, "After")[0].split()
        assert "redis-server.service" in directive(text, "Wants")[0].split()
    assert "redis-server" not in unit_files()["livekit.service"]  # one node: no Redis


def test_units_that_bind_the_private_address_wait_for_it() -> None:
    spec = spec_of(3)
    private = spec.nodes[0].private_ip
    files = unit_files(3)
    for unit in ("livekit.service", "redis-server.service", "redis-sentinel.service"):
        (pre,) = directive(files[unit], "ExecStartPre")
        assert pre.startswith(f"+{_lifecycle.WAIT_ADDRESS} {_lifecycle.WAIT_ADDRESS_SECONDS} ")
        assert private in pre.split(), (unit, pre)
    # Loopback and wildcard listeners need no wait; one node binds nothing private.
    single = unit_files()
    for unit in ("livekit.service", "nginx.service", "caddy.service", "voicestack-speech.service"):
        assert not directive(single[unit], "ExecStartPre"), unit


def test_the_worker_starts_after_its_speech_server_and_livekit() -> None:
    text = unit_files()["voicestack-agent.service"]
    after = directive(text, "After")[0].split()
    assert after.index("network-online.target") == 0
    assert {"voicestack-speech.service", "livekit.service"} <= set(after)


@pytest.mark.parametrize("value,ok", [(10, True), (120, True), (86400, True), (5, False), (0, False)],
                         ids=["10", "120", "86400", "5", "0"])
def test_livekit_stop_timeout_is_a_bounded_setting(value: int, ok: bool) -> None:
    raw = {"provider": "local", "domain": "x.test", "acmeCa": "local", "livekitStopTimeout": value}
    if ok:
        assert parse(raw).livekit_stop_timeout == value
    else:
        with pytest.raises(ConfigError, match="livekitStopTimeout"):
            parse(raw)
    assert parse({"provider": "local", "domain": "x.test", "acmeCa": "local"}).livekit_stop_timeout == 120


def test_the_deploy_bounds_a_livekit_restart_by_the_stop_budget() -> None:
    vs = node_vars(outputs_for(spec_of(livekitStopTimeout=300)))["node-1"]
    assert livekit.livekit_vars(vs)["stop_timeout"] == 300
    assert livekit.RESTART_MARGIN_SECONDS > 0


def test_systemd_accepts_the_rendered_units(tmp_path: Path) -> None:
    """systemd's own parser reads each file (a misspelt key or a key in the wrong section is an error)."""
    require("systemd-analyze")
    problems = []
    for unit, text in unit_files(3, recording="rooms").items():
        if unit in DEBIAN_UNITS:
            # A drop-in is not a unit of its own: give it a minimal unit to attach to.
            text = "[Unit]\nDescription=x\n[Service]\nExecStart=/bin/true\n" + text.replace(
                "[Unit]", "[Unit]", 1)
        path = tmp_path / unit
        path.write_text(text)
        out = subprocess.run(["systemd-analyze", "verify", "--man=no", "--recursive-errors=no", str(path)],
                             capture_output=True, text=True)
        bad = [line for line in out.stderr.splitlines()
               if ("Unknown key" in line or "Unknown section" in line or "Failed to parse" in line
                   or "Invalid" in line)]
        if bad:
            problems.append(f"{unit}: {bad}")
    assert not problems, problems


# ---- the address wait (templates/base/wait-address.sh.j2), run for real ----------------------

@pytest.fixture(scope="module")
def wait_script(tmp_path_factory) -> Path:
    require("ip")
    path = tmp_path_factory.mktemp("wait") / "voicestack-wait-address"
    path.write_text(render("base", "wait-address.sh.j2", {}))
    path.chmod(0o755)
    return path


def test_wait_address_returns_at_once_for_a_configured_address(wait_script: Path) -> None:
    t0 = time.monotonic()
    proc = subprocess.run([str(wait_script), "5", "127.0.0.1"], capture_output=True, text=True, timeout=20)
    assert proc.returncode == 0, proc.stderr
    assert time.monotonic() - t0 < 3


def test_wait_address_fails_after_its_deadline_naming_the_address(wait_script: Path) -> None:
    t0 = time.monotonic()
    # 192.0.2.0/24 (TEST-NET-1) is on no interface of this host.
    proc = subprocess.run([str(wait_script), "1", "127.0.0.1", "192.0.2.213"], capture_output=True, text=True,
                          timeout=20)
    assert proc.returncode == 1
    assert "192.0.2.213 is on no interface after 1s" in proc.stderr
    assert 1 <= time.monotonic() - t0 < 10
