"""The chaos helpers' pure parts: which services are killed with which check, the node-side script."""
from __future__ import annotations

import subprocess

import pytest

from infra.local import chaos
from tests.unit.support import spec_of


def test_every_service_of_a_single_node_is_a_target_with_a_check_from_the_spec() -> None:
    spec = spec_of(livekitHttpPort=17880)
    found = {t.unit: t for t in chaos.targets(spec, spec.nodes[0])}
    assert set(found) == {"caddy.service", "nginx.service", "livekit.service", "coturn.service",
                          "voicestack-agent.service", "voicestack-speech.service", "voicestack-token.service",
                          "voicestack-webhooks.service"}
    assert "http://127.0.0.1:17880/" in found["livekit.service"].check
    assert f"https://{spec.config.livekit_host}/" in found["nginx.service"].check
    assert f"sport = :{spec.port('turn-tls').start}" in found["coturn.service"].check


def test_without_the_sni_split_there_is_no_nginx_to_kill() -> None:
    spec = spec_of(turnTlsPort=5349)
    assert "nginx.service" not in {t.unit for t in chaos.targets(spec, spec.nodes[0])}


@pytest.mark.parametrize("unit,check", [("caddy.service", "curl -fsS https://x.test/"),
                                        ("coturn.service", "ss -Hlnu 'sport = :3478' | grep -q .")],
                         ids=["curl", "quotes"])
def test_the_node_script_is_valid_shell_with_the_check_quoted(unit: str, check: str) -> None:
    script = chaos.kill_script(unit, check, 30)
    assert subprocess.run(["sh", "-n", "-c", script], capture_output=True).returncode == 0
    assert "kill -9" in script and "+ 30 ))" in script


def test_the_node_script_output_is_read_as_key_values() -> None:
    got = chaos.parse_lines("old_pid=12\nnew_pid=40\nnoise\nactive_s=2.10\n")
    assert got == {"old_pid": "12", "new_pid": "40", "active_s": "2.10"}


def test_the_readiness_script_is_valid_shell_and_waits_for_every_check() -> None:
    spec = spec_of()
    found = chaos.targets(spec, spec.nodes[0])
    script = chaos.ready_script(found, since=1.5, deadline_s=30)
    assert subprocess.run(["sh", "-n", "-c", script], capture_output=True).returncode == 0
    assert all(f"{t.unit}=" in script for t in found) and "t0=1.500" in script
