"""A bad day on one node: every service is killed, the node reboots and loses power, and a deploy
runs during a live call. Each time the stack heals by itself and a caller can talk to the agent.

Runs as root on a host with the packages of `python -m infra.local packages`. Its own env
`e2echaos` (one node), one `up` + one deploy for the whole module (the live-call test then
deploys twice more, on purpose), removed at the end. Recovery figures are printed, never
asserted: bench/bench_recovery.py reports them too.
"""
from __future__ import annotations

import json
import os
import stat
import subprocess
import time
from pathlib import Path

import pytest

from infra import outputs
from infra import verify as infra_verify
from infra.local import chaos, host, hostsettings, machines
from infra.local.names import RUN, STATE
from infra.probes import run as run_probe
from infra.probes.roundtrip import CallSession
from tests.e2e import envs, heal

ENV = "e2echaos"
ROOT = Path(__file__).resolve().parents[2]
#: livekitStopTimeout of this env: long enough to see the drain keep the call, short for CI.
STOP_S = 30
UNITS = ["caddy.service", "nginx.service", "livekit.service", "coturn.service", "voicestack-agent.service",
         "voicestack-speech.service", "voicestack-token.service", "voicestack-webhooks.service"]
FIGURES: dict[str, dict] = {}

pytestmark = pytest.mark.e2e


def deploy() -> tuple[subprocess.CompletedProcess, dict, float]:
    return envs.timed_deploy(ENV)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    started = time.monotonic()
    config = envs.write_config(tmp_path_factory.mktemp("chaos") / f"Pulumi.{ENV}.yaml", {"livekitStopTimeout": STOP_S})
    ctx = envs.fresh(ENV, 1, config=config)
    result, _summary, seconds = deploy()
    assert result.returncode == 0, result.stderr
    ctx.config_path = config
    print(f"\n{ENV}: up + first deploy {time.monotonic() - started:.0f}s (deploy {seconds:.0f}s)")
    yield ctx
    envs.down(ENV)
    FIGURES["module wall time s"] = round(time.monotonic() - started)
    text = json.dumps(FIGURES, indent=1, default=str)
    outputs.EnvPaths(ENV).dir.mkdir(parents=True, exist_ok=True)
    (outputs.EnvPaths(ENV).dir / "chaos-figures.json").write_text(text + "\n")
    print(f"\n{ENV} figures (also in .stack/{ENV}/chaos-figures.json):\n{text}")


@pytest.fixture(scope="module")
def out(env) -> outputs.Outputs:
    return outputs.read(ENV)


@pytest.fixture(scope="module")
def session(out):
    with CallSession(out) as s:
        yield s


def node_of(env):
    return env.spec.nodes[0]


ssh = heal.ssh


def reconfigure(env, **settings) -> None:
    """An operator's edit of the stack file, then `make up` (it rewrites the outputs)."""
    base = {"livekitStopTimeout": STOP_S, **settings}
    envs.up(ENV, 1, config=envs.write_config(env.config_path, base))


# ---- the operator's own machine ------------------------------------------------------------------

def test_the_host_runs_no_packaged_turn_or_apt_cache_service(env):
    """Debian's coturn config has no authentication: enabled on the host, it is an open relay at boot."""
    for unit in hostsettings.PACKAGED_DAEMONS:
        proc = subprocess.run(["systemctl", "is-enabled", unit], capture_output=True, text=True)
        state = proc.stdout.strip()
        assert state in ("disabled", "masked") or (proc.returncode != 0 and state in ("", "not-found")), (
            f"{unit} is {state!r} on this host: scripts/install_host_deps.sh and `up` disable it")


def test_machine_state_is_root_only(env):
    """Other users of the host cannot read the machines' roots, TLS keys or secrets."""
    for d in (STATE, RUN, env.names.state_dir, env.names.run_dir):
        st = d.stat()
        assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o700), f"{d} is {oct(stat.S_IMODE(st.st_mode))}"
    secret = machines.rootfs(env.names, node_of(env)) / "etc" / "turnserver.conf"
    assert secret.is_file()
    proc = subprocess.run(["cat", str(secret)], capture_output=True, text=True, user=65534, group=65534,
                          extra_groups=[])
    assert proc.returncode != 0 and "Permission denied" in proc.stderr, "an unprivileged user read coturn's secret"


# ---- kill -9, one service at a time ---------------------------------------------------------------

def _extra_check(out, env, unit: str, result: dict, trip: dict) -> None:
    """What the user of that service gets back, beyond the round trip."""
    if unit == "voicestack-token.service":
        got = run_probe(out, "http_post", url=out.token_endpoint, body={"identity": "chaos-user", "name": "C"},
                        cafile=out.ca_bundle, bearer=out.token_key)
        assert got["status"] == 200, f"the token endpoint answered {got} after its restart"
    if unit == "voicestack-webhooks.service":
        # LiveKit told the new receiver about the round trip's room.
        log = ssh(env, f"journalctl -u voicestack-webhooks _PID={result['new_pid']} --no-pager -o cat").stdout
        assert f"webhook room_started room={trip['room']}" in log, log[-1500:]


@pytest.mark.parametrize("unit", UNITS, ids=[u.removesuffix(".service") for u in UNITS])
def test_kill_9_heals_and_a_spoken_round_trip_passes(env, out, session, unit: str):
    assert {t.unit for t in chaos.targets(env.spec, node_of(env))} == set(UNITS)
    FIGURES[unit], result, trip = heal.kill_9(env, out, unit, session)
    _extra_check(out, env, unit, result, trip)


def test_kill_9_of_redis_server_waits_for_sentinel_then_heals(env):
    """No cluster env exists in CI, so the node gets a Redis of its own with the deploy's drop-in:
    the real redis-server under the real systemd, killed like the others."""
    from deploy.tasks import _lifecycle

    lc = _lifecycle.lifecycle("redis-server.service", binds=("127.0.0.1",))
    script = ("DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server >/dev/null && "
              f"mkdir -p {os.path.dirname(lc.dropin)} && cat > {lc.dropin} && systemctl daemon-reload && "
              "systemctl restart redis-server && redis-cli ping")
    install = host.run(machines.ssh_command(env.names, env.names.node_public_ip(0), script),
                       input=_lifecycle.render_dropin(lc), check=False, timeout=300)
    assert install.returncode == 0 and "PONG" in install.stdout, install.stderr
    try:
        shown = ssh(env, "systemctl show -p Restart,RestartUSec,StartLimitIntervalUSec redis-server").stdout
        assert "Restart=always" in shown and "StartLimitIntervalUSec=0" in shown, shown
        result = chaos.kill_and_wait(env.names, node_of(env),
                                     chaos.Target("redis-server.service", "redis-cli ping | grep -q PONG", "cluster"))
        FIGURES["redis-server.service"] = {"active_s": result["active_s"], "answers_s": result["answers_s"]}
        print(f"\nredis-server.service: {FIGURES['redis-server.service']}")
        assert result["new_pid"] != result["old_pid"]
        # The configured delay is the behaviour under test: an empty master must not be back
        # before Sentinel could fail over (research F).
        assert result["active_s"] >= lc.restart_sec, result
    finally:
        ssh(env, "systemctl disable --now redis-server >/dev/null 2>&1; "
                 "DEBIAN_FRONTEND=noninteractive apt-get purge -y -qq redis-server redis-tools >/dev/null; "
                 f"rm -f {lc.dropin}; systemctl daemon-reload", timeout=300)


# ---- reboot and power -----------------------------------------------------------------------------

def test_reboot_inside_the_node_then_the_verify_suite_passes(env):
    t0 = time.monotonic()
    FIGURES["reboot"] = heal.reboot(env)
    verify = infra_verify.run(ENV, timeout=1800)
    FIGURES["reboot"]["verified_s"] = round(time.monotonic() - t0, 1)
    print(f"\nreboot: {FIGURES['reboot']}\n{verify.stdout[-1500:]}")
    assert verify.returncode == 0, verify.stdout[-5000:]


def test_power_cut_leaves_the_node_off_and_power_on_brings_it_back(env, out, session):
    FIGURES["power cycle"] = heal.power_cut(env, out, session)


# ---- a deploy while a call is live ----------------------------------------------------------------

def _events_since(session: CallSession, t: float) -> list[dict]:
    return [e for e in session.drain_events() if e["t"] >= t]


def _await_event(session: CallSession, names: set[str], since: float, deadline_s: float) -> list[dict]:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        events = _events_since(session, since)
        if names & {e["name"] for e in events}:
            return events
        time.sleep(0.2)  # poll interval of the deadline loop
    return _events_since(session, since)


@pytest.fixture(scope="module")
def live_call(env, session):
    call = session.call(timeout=120)
    assert call["ok"], f"the long call did not start: {call}"
    yield call
    if session.proc.poll() is None:
        session.hangup()


def test_a_deploy_that_restarts_caddy_keeps_the_live_call(env, session, live_call):
    """Caddy (the signalling path) restarts: the SDK resumes its session; media never left LiveKit."""
    reconfigure(env, acmeEmail="ops@e2echaos.test")
    t0 = time.time()
    result, summary, seconds = deploy()
    assert result.returncode == 0, result.stderr
    changed = summary["changed"]["node-1"]
    assert any(c.startswith("caddy:") for c in changed) and not any(c.startswith("livekit:") for c in changed)
    answer = session.speak(timeout=90)
    events = _events_since(session, t0)
    names = [e["name"] for e in events]
    FIGURES["deploy restarting caddy, live call"] = {"deploy_s": round(seconds, 1), "room_events": names,
                                                     "answer": answer.get("answer")}
    assert "disconnected" not in names, events
    assert answer["ok"] and "turned on the lights" in answer["answer"].lower(), answer


def test_a_deploy_that_restarts_livekit_drains_then_the_call_reconnects(env, session, live_call):
    """LiveKit must restart: it drains (the call goes on) for livekitStopTimeout, then it is killed;
    the SDK reconnects the call on its own and the agent rejoins."""
    before = int(ssh(env, "systemctl show -p MainPID --value livekit").stdout)
    reconfigure(env, acmeEmail="ops@e2echaos.test", livekitPrometheusPort=16789)
    t0 = time.time()
    result, summary, seconds = deploy()
    assert result.returncode == 0, result.stderr
    assert int(ssh(env, "systemctl show -p MainPID --value livekit").stdout) != before
    events = _await_event(session, {"reconnected", "disconnected"}, t0, 120)
    names = [e["name"] for e in events]
    answer = session.speak(timeout=90)
    events = _events_since(session, t0)
    lost = next((e["t"] for e in events if e["name"] == "reconnecting"), None)
    back = next((e["t"] for e in events if e["name"] == "reconnected"), None)
    agent_back = next((e["t"] for e in events if e["name"] == "track_subscribed" and lost and e["t"] > lost), None)
    FIGURES["deploy restarting livekit, live call"] = {
        "deploy_s": round(seconds, 1), "call_lost_after_s": lost and round(lost - t0, 1),
        "reconnected_after_loss_s": lost and back and round(back - lost, 2),
        "agent_audio_back_after_loss_s": lost and agent_back and round(agent_back - lost, 2),
        "room_events": [e["name"] for e in events], "answer": answer.get("answer")}
    print(f"\nlivekit restart under a call: {FIGURES['deploy restarting livekit, live call']}")
    assert "disconnected" not in names, f"the SDK gave the call up: {events}"
    assert lost is not None and back is not None and back > lost, events
    assert answer["ok"] and "turned on the lights" in answer["answer"].lower(), answer


def test_down_removes_the_machines_cgroups_and_restores_the_host(env, session):
    session.close()  # the caller hangs up first
    envs.down(ENV)
    for root in machines._cgroup_roots(mount=False):
        assert not (root / ENV).exists(), f"{root / ENV} left behind"
    assert not env.names.state_dir.exists() and not env.names.run_dir.exists()
    if not hostsettings.other_envs(env.names):
        record = RUN / hostsettings.HOST_DIR_NAME / hostsettings.FORWARD_KEY
        assert not record.exists(), "the last down did not restore net.ipv4.ip_forward"
