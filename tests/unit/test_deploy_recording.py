"""Recording in the deploy: the stack settings, the env file, the two units, their ports and directories,
Caddy's download route and the forwarding secret. Off by default: then nothing of it is deployed."""
from __future__ import annotations

import re

import pytest

from agent.actions import ActionConfig
from agent.outbox import ForwardConfig
from agent.recording_config import POLICIES, RecordingConfig
from deploy import fastpath
from deploy.render import render
from deploy.tasks import agent, caddy
from infra.config import RECORDING_POLICIES, ConfigError, parse
from infra.secrets import forward_secret
from infra.spec import RECORDINGS_PATH, Role, Scope
from tests.unit.support import SECRET, TOKEN_KEY, TURN_SECRET, agent_unit, env_lines, node, outputs_for

N8N = "https://n8n.example.net/webhook/livekit"
N8N_ACTION = "https://n8n.example.net/webhook/voice-action"


def unit(vs, name: str) -> str:
    return agent_unit(vs, name)


def test_the_stack_knows_the_policies_the_agent_knows() -> None:
    assert RECORDING_POLICIES == POLICIES


def test_recording_is_off_by_default_and_deploys_nothing_of_it() -> None:
    spec, vs = node()
    assert spec.config.recording == "off" and not spec.recording
    assert not spec.has_port("recordings") and not spec.has_port("recorder-health")
    env = env_lines(vs)
    assert env["RECORDING_POLICY"] == "off"
    assert not {"RECORDINGS_DIR", "RECORDINGS_PORT", "FORWARD_URL", "FORWARD_SECRET"} & set(env)
    assert set(agent.agent_vars(vs)["services"]) == set(agent.SERVICES)
    assert agent.data_dirs(vs) == ()
    assert RECORDINGS_PATH not in render("caddy", "Caddyfile.j2", caddy.caddy_vars(vs))
    assert not set(fastpath.RECORDING_UNITS) & set(fastpath.units_for(outputs_for(spec), "node-1"))


@pytest.mark.parametrize("policy", ["agent-calls", "rooms"])
def test_recording_on_runs_the_recorder_and_the_recordings_service(policy: str) -> None:
    spec, vs = node(recording=policy, recordingRetentionDays=7)
    env = env_lines(vs)
    assert env["RECORDING_POLICY"] == policy
    assert (env["RECORDINGS_DIR"], env["RECORDING_RETENTION_DAYS"], env["RECORDING_MIN_FREE_MB"]) == \
        ("/var/lib/voicestack/recordings", "7", "1024")
    assert (env["RECORDINGS_HOST"], env["RECORDINGS_PORT"]) == ("127.0.0.1", "8092")
    assert (env["RECORDER_HEALTH_HOST"], env["RECORDER_HEALTH_PORT"], env["RECORDER_DRAIN_TIMEOUT"]) == \
        ("127.0.0.1", "8093", "60")
    for name in ("recordings", "recorder-health"):
        p = spec.port(name)
        assert (p.scope, p.service, p.role) == (Scope.LOOPBACK, "agent", Role.AGENT) and p in spec.closed_ports()
    # The agent code reads these back as the deploy meant them.
    cfg = RecordingConfig.from_env(env)
    assert (cfg.policy, str(cfg.root), cfg.retention_days, cfg.api_port, cfg.token_key) == \
        (policy, agent.RECORDINGS_DIR, 7.0, 8092, TOKEN_KEY)
    assert cfg.public_url == "https://livekit.example.test"
    v = agent.agent_vars(vs)
    assert list(v["services"])[-2:] == ["voicestack-recorder", "voicestack-recordings"]
    assert "http://127.0.0.1:8093/" in agent._wait_command(v["services"])
    assert f"http://127.0.0.1:8092{RECORDINGS_PATH}/health" in agent._wait_command(v["services"])
    assert set(fastpath.RECORDING_UNITS) <= set(fastpath.units_for(outputs_for(spec), "node-1"))


def test_recording_units_write_only_their_own_directories_and_hold_no_secrets() -> None:
    _, vs = node(recording="rooms", forwardUrl=N8N)
    assert agent.data_dirs(vs) == (agent.RECORDINGS_DIR, agent.OUTBOX_DIR)
    want = {"voicestack-recorder": [agent.RECORDINGS_DIR],
            "voicestack-recordings": [agent.RECORDINGS_DIR, agent.OUTBOX_DIR],
            "voicestack-webhooks": [agent.OUTBOX_DIR], "voicestack-agent": [], "voicestack-token": [],
            "voicestack-speech": []}
    for name, dirs in want.items():
        text = unit(vs, name)
        got = re.findall(r"^ReadWritePaths=(.*)$", text, re.M)
        assert got == ([" ".join(dirs)] if dirs else []), (name, got)
        assert "ProtectSystem=strict\n" in text and "User=voicestack\n" in text
        for secret in (SECRET, TOKEN_KEY, TURN_SECRET, forward_secret(SECRET)):
            assert secret not in text
    recorder = unit(vs, "voicestack-recorder")
    assert f"ExecStart={agent.PYTHON} -m agent.recorder\n" in recorder
    assert "KillMode=mixed\n" in recorder and "RECORDER_DRAIN_TIMEOUT" in recorder
    assert int(re.search(r"TimeoutStopSec=(\d+)", recorder).group(1)) > agent.DRAIN_SECONDS
    assert "livekit.service" in re.search(r"^After=(.*)$", recorder, re.M).group(1).split()
    recordings = unit(vs, "voicestack-recordings")
    assert f"ExecStart={agent.PYTHON} -m agent.recordings\n" in recordings
    assert "voicestack-speech.service" in re.search(r"^After=(.*)$", recordings, re.M).group(1).split()


def test_agent_calls_lets_the_worker_write_its_call_recordings() -> None:
    _, vs = node(recording="agent-calls")
    assert re.findall(r"^ReadWritePaths=(.*)$", unit(vs, "voicestack-agent"), re.M) == [agent.RECORDINGS_DIR]


def test_forwarding_gets_a_derived_secret_of_its_own() -> None:
    _, vs = node(forwardUrl=N8N)
    env = env_lines(vs)
    assert (env["FORWARD_URL"], env["OUTBOX_DIR"]) == (N8N, agent.OUTBOX_DIR)
    secret = env["FORWARD_SECRET"]
    assert secret == forward_secret(SECRET) and len(secret) >= 32
    assert secret not in (SECRET, TOKEN_KEY, TURN_SECRET, vs.secrets.redis_password)
    assert forward_secret("another-api-secret-" + "y" * 20) != secret   # rotates with the API secret
    forward = ForwardConfig.from_env(env)
    assert forward is not None and (forward.url, str(forward.outbox_dir)) == (N8N, agent.OUTBOX_DIR)
    assert "forward_secret" not in repr(vs.secrets) and secret not in repr(vs)


def test_voice_actions_go_to_action_url_signed_with_the_same_derived_secret() -> None:
    """actionUrl reaches the speech server and the worker as ACTION_URL/ACTION_SECRET, in the form
    the agent's own parser (agent.actions.ActionConfig) accepts; one signing secret towards n8n."""
    _, vs = node(actionUrl=N8N_ACTION, forwardUrl=N8N)
    env = env_lines(vs)
    assert (env["ACTION_URL"], env["ACTION_SECRET"]) == (N8N_ACTION, forward_secret(SECRET))
    action = ActionConfig.from_env(env)
    assert action is not None and (action.url, action.secret) == (N8N_ACTION, env["FORWARD_SECRET"])
    for name in agent.services(vs):
        assert env["ACTION_SECRET"] not in unit(vs, name)   # in the 0640 env file only, never in a unit
    _, without = node(forwardUrl=N8N)
    assert not {"ACTION_URL", "ACTION_SECRET"} & set(env_lines(without))
    assert ActionConfig.from_env(env_lines(without)) is None   # the responder answers on its own


def test_caddy_routes_downloads_to_the_recordings_api() -> None:
    spec, vs = node(recording="rooms")
    text = render("caddy", "Caddyfile.j2", caddy.caddy_vars(vs))
    route = f"handle {RECORDINGS_PATH}* {{\n\t\treverse_proxy 127.0.0.1:{spec.port('recordings').start}\n"
    assert route in text
    # Before the catch-all LiveKit route, so that Caddy's first matching handle wins.
    assert text.index(route) < text.index("\thandle {\n\t\t# WebSocket")


@pytest.mark.parametrize("raw, key", [
    ({"recording": "always"}, "recording"),
    ({"recordingRetentionDays": -1}, "recordingRetentionDays"),
    ({"forwardUrl": "n8n.example.net/hook"}, "forwardUrl"),
    ({"forwardUrl": "https://n8n.example.net/hook?a=$HOME"}, "forwardUrl"),
    ({"forwardUrl": "https://n8n.example.net/a b"}, "forwardUrl"),
    ({"actionUrl": "n8n.example.net/webhook/voice-action"}, "actionUrl"),
    ({"actionUrl": "https://n8n.example.net/hook?a=`id`"}, "actionUrl"),
], ids=["policy", "retention", "not-a-url", "dollar", "space", "action-not-a-url", "action-backtick"])
def test_bad_recording_settings_are_refused_with_their_key(raw: dict, key: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse({"provider": "local", **raw})
    assert key in [k for k, _ in exc.value.problems], exc.value.problems


def test_a_bare_yaml_off_means_off() -> None:
    assert parse({"provider": "local", "recording": False}).recording == "off"
    assert parse({"provider": "local", "recording": "Rooms"}).recording == "rooms"
