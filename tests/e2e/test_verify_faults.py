"""The verification suite fails, for the right reason, when the stack is broken on purpose; and
the stack heals by itself from a bad day (the chaos suite's smoke, tests/e2e/heal.py).

One local environment of its own (`e2everify`): provisioned and deployed; then coturn and LiveKit
are killed with kill -9 (each followed by a spoken round trip, coturn's through TURN/TLS on 443)
and the node reboots from inside; the whole verify suite then passes with no other command.
Next it is broken one way at a time — coturn stopped, a public port closed in the cloud firewall,
an untrusted CA, a certificate for the wrong name, the agent stopped, 7880 exposed — each time
the matching verify checks must fail with a message that names the cause, and the stack is
repaired before the next case. Last, a power cut and a round trip after power-on. Every unit,
Redis and deploys under a live call are the long chaos suite's (tests/e2e/test_chaos.py).
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import shutil
import subprocess
from pathlib import Path
from typing import Iterator

import pytest

from infra import outputs
from infra import verify as infra_verify
from tests.e2e import envs, heal

# The operator host's own hygiene, checked here too (the functions are the chaos suite's; pytest
# collects them in this module with this module's `env`).
from tests.e2e.test_chaos import (  # noqa: F401 - collected as tests of this module
    test_machine_state_is_root_only,
    test_the_host_runs_no_packaged_turn_or_apt_cache_service,
)

ENV = "e2everify"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def env() -> Iterator[object]:
    envs.require_host()
    envs.down(ENV)
    ctx = envs.up(ENV, 1)
    deployed = envs.deploy(ENV)
    assert deployed.returncode == 0, deployed.stdout[-3000:] + deployed.stderr[-3000:]
    yield ctx
    envs.down(ENV)


@pytest.fixture(scope="module")
def out(env) -> outputs.Outputs:
    return outputs.read(ENV)


def verify(*select: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return infra_verify.run(ENV, *select, tb="line", cwd=cwd, timeout=900)


def node(env, command: str) -> str:
    from infra.local import machines
    return machines.ssh(env.names, env.names.node_public_ip(0), command, timeout=120).stdout


def failed(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode != 0, f"verify passed on a broken stack:\n{proc.stdout[-3000:]}"
    return proc.stdout


def test_00a_kill_9_of_coturn_heals_and_a_turn_tls_round_trip_passes(env, out) -> None:
    heal.kill_9(env, out, "coturn.service")


def test_00b_kill_9_of_livekit_heals_and_a_round_trip_passes(env, out) -> None:
    heal.kill_9(env, out, "livekit.service")


def test_00c_reboot_inside_the_node_comes_back_running(env) -> None:
    heal.reboot(env)


def test_01_clean_stack_passes_verify(env) -> None:
    """After the kills and the reboot, with no other command: the whole suite passes."""
    proc = verify()
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-2000:]


def test_01b_the_outputs_alone_drive_verify_from_another_checkout(env, tmp_path: Path) -> None:
    """Copy .stack/<env>/ to a checkout that has no stack file: verify needs nothing else."""
    checkout = tmp_path / "checkout"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(checkout), "HEAD"], check=True,
                   capture_output=True)
    try:
        for venv in (".venv", ".venv-agent"):
            (checkout / venv).symlink_to((ROOT / venv).resolve())
        shutil.copytree(outputs.EnvPaths(ENV).dir, checkout / ".stack" / ENV)
        assert not list(checkout.glob(f"Pulumi.{ENV}.yaml"))
        proc = verify("dns_01", "net_01", "tls_01", "turn_01", "host_01", cwd=checkout)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(checkout)], capture_output=True)


def test_02_coturn_stopped_fails_turn_checks(env) -> None:
    node(env, "systemctl stop coturn")
    try:
        out = failed(verify("turn_01", "turn_03", "net_02"))
    finally:
        node(env, "systemctl start coturn")
    assert "test_turn_01_allocation_with_rest_credentials" in out
    assert "coturn" in out and "TURN/STUN" in out
    assert verify("turn_01", "turn_03").returncode == 0  # repaired


def test_03_closed_public_port_fails_reachability(env) -> None:
    from infra.local import firewall

    ice_tcp = env.spec.port("livekit-ice-tcp")
    broken = dataclasses.replace(env.spec, cloud_firewall=tuple(
        r for r in env.spec.cloud_firewall if r.start != ice_tcp.start))
    firewall.apply(env.names, broken)
    try:
        out = failed(verify("net_01"))
    finally:
        firewall.apply(env.names, env.spec)
    assert f"{ice_tcp.label} (livekit-ice-tcp)" in out and "unreachable from outside" in out


def _outputs_path() -> Path:
    return outputs.path_for(ENV)


def test_04_untrusted_ca_fails_tls(env, tmp_path: Path) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "some other CA")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True).sign(key, hashes.SHA256()))
    other = tmp_path / "other-ca.pem"
    other.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    original = _outputs_path().read_text()
    data = json.loads(original)
    data["ca_bundle"] = str(other)
    _outputs_path().write_text(json.dumps(data))
    try:
        out = failed(verify("tls_01", "http_01"))
    finally:
        _outputs_path().write_text(original)
    assert "CERTIFICATE_VERIFY_FAILED" in out or "certificate verify failed" in out
    assert verify("tls_01").returncode == 0


def test_05_certificate_for_wrong_name_fails_tls(env) -> None:
    # A mis-routed SNI split: the LiveKit name now gets coturn's certificate (the TURN name's), through
    # the hop that takes the PROXY header off (straight to coturn the header would break the handshake).
    node(env, "sed -i 's/default caddy_https;/default turn_hop;/' /etc/nginx/nginx.conf && nginx -t && "
              "systemctl reload nginx")
    try:
        out = failed(verify("tls_01"))
    finally:
        node(env, "sed -i 's/default turn_hop;/default caddy_https;/' /etc/nginx/nginx.conf && "
                  "systemctl reload nginx")
    assert "test_tls_01_certificates_valid[livekit]" in out
    assert "Hostname mismatch" in out or "does not name" in out
    assert verify("tls_01").returncode == 0


def test_06_agent_stopped_fails_round_trip(env) -> None:
    node(env, "systemctl stop voicestack-agent")
    try:
        out = failed(verify("voice_01 and normal"))
    finally:
        node(env, "systemctl start voicestack-agent")
    assert "no spoken round trip with normal network" in out


def test_07_exposed_7880_fails_closed_port_check(env) -> None:
    from infra.local import firewall
    from infra.spec import WORLD, FirewallRule

    http = env.spec.port("livekit-http")
    ip = env.names.node_public_ip(0)
    opened = dataclasses.replace(env.spec, cloud_firewall=env.spec.cloud_firewall + (
        FirewallRule("tcp", http.start, http.end, WORLD, "a mistake"),))
    firewall.apply(env.names, opened)
    # What a careless edit does: LiveKit's API also on the public address, host firewall opened.
    node(env, f"nft insert rule inet voicestack input tcp dport {http.start} accept && "
              f"(setsid -f python3 -m http.server {http.start} --bind {ip} >/dev/null 2>&1 </dev/null) && "
              f"for i in $(seq 50); do ss -Hlnt | grep -q '{ip}:{http.start}' && exit 0; sleep 0.1; done; exit 1")
    try:
        out = failed(verify("net_03"))
    finally:
        node(env, "pkill -f '^python3 -m http[.]server'; systemctl restart nftables")
        firewall.apply(env.names, env.spec)
    assert f"{http.label} (livekit-http, loopback only)" in out
    assert verify("net_03").returncode == 0


def test_08_power_cut_then_power_on_brings_the_voice_back(env, out) -> None:
    heal.power_cut(env, out)
