"""The pyinfra deploy against a local environment of its own: converge, idempotence, faults.

Runs as root on a host with the packages of `python -m infra.local packages`. Creates the env
`e2edeploy` (never a developer's `local`), deploys it, and removes it at the end.
"""
from __future__ import annotations

import dataclasses
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from infra import outputs
from infra import verify as infra_verify
from tests.e2e import envs

ENV = "e2edeploy"
ROOT = Path(__file__).resolve().parents[2]
AGENT_SERVICES = ("voicestack-speech", "voicestack-agent", "voicestack-token", "voicestack-webhooks")
SERVICES = ("livekit", "caddy", "coturn", "nginx", "fail2ban", "ssh", "nftables", "unattended-upgrades",
            "voicestack-turn-cert.timer", *AGENT_SERVICES)

pytestmark = pytest.mark.e2e


def deploy(env: str = ENV, timeout: float = 900, *extra: str) -> tuple[subprocess.CompletedProcess, dict, float]:
    return envs.timed_deploy(env, timeout, *extra)


@pytest.fixture(scope="module")
def env():
    ctx = envs.fresh(ENV)
    result, summary, seconds = deploy()
    assert result.returncode == 0, result.stderr
    ctx.first_converge_s = seconds
    yield ctx
    envs.down(ENV)


def reconfigure(tmp_path: Path, **settings) -> None:
    """What an operator does: edit the environment's stack file and run `make up` again."""
    envs.up(ENV, 1, config=envs.write_config(tmp_path / f"Pulumi.{ENV}.yaml", settings) if settings else None)


def ssh(env, command: str) -> str:
    from infra.local import machines
    return subprocess.run(machines.ssh_command(env.names, env.names.node_public_ip(0), command),
                          capture_output=True, text=True, timeout=60, check=True).stdout


def main_pids(env) -> dict[str, str]:
    names = " ".join(("livekit", "caddy", "coturn", "nginx", *AGENT_SERVICES))
    out = ssh(env, f"for s in {names}; do echo $s $(systemctl show -p MainPID --value $s); done")
    return dict(line.split() for line in out.splitlines())


def corrupt_artifact() -> None:
    out = outputs.read(ENV)
    arts = {**out.deploy.artifacts, "livekit": {**out.deploy.artifacts["livekit"], "sha256": "0" * 64}}
    outputs.write(dataclasses.replace(out, deploy=dataclasses.replace(out.deploy, artifacts=arts)))


def test_first_converge_leaves_every_service_active_and_enabled(env):
    print(f"first converge: {env.first_converge_s:.1f}s")
    states = ssh(env, " ; ".join(f"echo {s} $(systemctl is-active {s}) $(systemctl is-enabled {s})"
                                 for s in SERVICES))
    for line in states.splitlines():
        name, active, enabled = line.split()
        assert (active, enabled) == ("active", "enabled"), line
    rss = ssh(env, "ps -eo rss= | awk '{s+=$1} END {print int(s/1024)}'")
    print(f"idle node: {rss.strip()} MiB resident (all processes)")


def test_agent_services_answer_as_the_unprivileged_user_with_an_owner_only_env_file(env):
    from deploy.tasks import agent
    assert ssh(env, f"stat -c '%a %U %G' {agent.ENV_FILE}").split() == ["600", "root", "root"]
    users = ssh(env, " ; ".join(f"ps -o user= -p $(systemctl show -p MainPID --value {s})" for s in AGENT_SERVICES))
    assert users.split() == ["voicestack"] * len(AGENT_SERVICES), users
    health = ("http://127.0.0.1:8000/health", "http://127.0.0.1:8081/", "http://127.0.0.1:8090/api/token/health",
              "http://127.0.0.1:8091/health")
    ssh(env, " && ".join(f"curl -fsS -o /dev/null --max-time 5 {url}" for url in health))
    total = ssh(env, f"ps -u {agent.USER} -o rss= | awk '{{s+=$1}} END {{print int(s/1024)}}'")
    print(f"agent services idle: {total.strip()} MiB resident")


def test_second_converge_changes_nothing(env):
    result, summary, seconds = deploy(ENV, 900, "--full")
    print(f"no-op converge, every operation: {seconds:.1f}s")
    assert result.returncode == 0, result.stderr
    assert summary["changed"] == {} and summary["operations"] > 50, summary


def test_a_no_op_deploy_is_one_check_per_node_and_drift_is_repaired(env):
    result, summary, seconds = deploy()
    print(f"no-op deploy (one SSH check): {seconds:.2f}s")
    assert result.returncode == 0 and summary.get("fast") is True and summary["operations"] == 0, result.stdout
    # Drift on the node (an edited config) is noticed by the check and repaired by the full converge.
    ssh(env, "echo '# edited by hand' >> /etc/turnserver.conf")
    result, summary, _ = deploy()
    assert result.returncode == 0, result.stderr
    assert "the node's state changed since the last converge" in result.stdout
    assert any("Render /etc/turnserver.conf" in n for n in summary["changed"]["node-1"]), summary["changed"]
    assert "edited by hand" not in ssh(env, "cat /etc/turnserver.conf")
    assert deploy()[1].get("fast") is True
    # A stopped service is drift too.
    ssh(env, "systemctl stop voicestack-webhooks")
    result, summary, _ = deploy()
    assert result.returncode == 0 and not summary.get("fast"), result.stdout
    assert ssh(env, "systemctl is-active voicestack-webhooks").strip() == "active"


def test_changing_one_setting_restarts_only_that_service(env, tmp_path):
    before = main_pids(env)
    reconfigure(tmp_path, livekitPrometheusPort=16789)
    try:
        result, summary, _ = deploy()
        assert result.returncode == 0, result.stderr
        after = main_pids(env)
        assert after["livekit"] != before["livekit"]
        assert {k: v for k, v in after.items() if k != "livekit"} == \
               {k: v for k, v in before.items() if k != "livekit"}
        assert all(name.startswith("livekit:") for name in summary["changed"]["node-1"])
        assert "127.0.0.1:16789" in ssh(env, "ss -ltn")
        # Deploy and verify read the same spec: the verify suite checks the new port's binding.
        verified = infra_verify.run(ENV, "host_02", "net_03", timeout=300)
        assert verified.returncode == 0, verified.stdout[-3000:]
    finally:
        reconfigure(tmp_path)
        assert deploy()[0].returncode == 0


def test_corrupted_artifact_aborts_before_the_running_livekit_is_touched(env, tmp_path):
    before_pid = main_pids(env)["livekit"]
    before_sha = ssh(env, "sha256sum /usr/local/bin/livekit-server")
    # Also ask for a config change, which must not be applied either.
    reconfigure(tmp_path, livekitPrometheusPort=16790)
    corrupt_artifact()
    try:
        result, summary, _ = deploy()
        assert result.returncode == 4
        assert "sha256 mismatch" in result.stderr and "node-1" in result.stderr
        assert main_pids(env)["livekit"] == before_pid
        assert ssh(env, "sha256sum /usr/local/bin/livekit-server") == before_sha
        assert "16790" not in ssh(env, "cat /etc/livekit/livekit.yaml")
    finally:
        reconfigure(tmp_path)  # rewrites the outputs with the real artifact
    assert deploy()[0].returncode == 0


def test_interrupted_deploy_converges_on_the_next_run(env, tmp_path):
    reconfigure(tmp_path, livekitPrometheusPort=16791)
    try:
        proc = subprocess.Popen([sys.executable, "-m", "deploy", "--env", ENV], cwd=ROOT, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        for line in proc.stdout:
            if "Render /etc/livekit/livekit.yaml: changed" in line:
                proc.send_signal(signal.SIGKILL)  # the config is written, the restart has not run
                break
        proc.wait(timeout=60)
        result, summary, _ = deploy()
        assert result.returncode == 0, result.stderr
        assert "127.0.0.1:16791" in ssh(env, "ss -ltn")
        assert ssh(env, "test -e /usr/sbin/policy-rc.d && echo left || echo gone").strip() == "gone"
    finally:
        reconfigure(tmp_path)
        assert deploy()[0].returncode == 0


@pytest.mark.parametrize("change,expect", [
    ({"ssh_key": "wrong"}, "Authentication"),
    ({"public_ip": "unrouted"}, "Could not connect"),
], ids=["wrong-ssh-key", "unreachable-host"])
def test_bad_ssh_access_fails_naming_the_host(env, tmp_path, change, expect):
    out = outputs.read(ENV)
    node = out.nodes[0]
    if change.get("ssh_key") == "wrong":
        key = tmp_path / "wrong_key"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
        node = dataclasses.replace(node, ssh_key=str(key))
    else:
        # An address of the env's own public network where no machine lives.
        node = dataclasses.replace(node, public_ip=env.names.node_public_ip(200))
    bad_env = ENV + "x"
    outputs.write(dataclasses.replace(out, env=bad_env, nodes=[node]))
    try:
        result, _, seconds = deploy(bad_env, timeout=120)
        assert result.returncode == 3
        assert f"cannot reach {node.name}" in result.stderr and expect in result.stderr
        assert "nothing was changed" in result.stderr
    finally:
        shutil.rmtree(outputs.EnvPaths(bad_env).dir, ignore_errors=True)
