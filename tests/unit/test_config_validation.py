"""Every invalid configuration is refused before anything is created, naming its key and the fix."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from infra.config import ConfigError, parse
from infra.validate import load
from infra.validate import main as validate_main

ROOT = Path(__file__).resolve().parents[2]
GOOD = {
    "provider": "hetzner",
    "region": "nbg1",
    "serverType": "cx23",
    "domain": "example.com",
    "adminCidrs": ["198.51.100.7/32"],
    "apiSecret": "a" * 40,
    "turnSecret": "b" * 40,
}


def problems(**changes: object) -> dict[str, str]:
    raw = {**GOOD, **changes}
    raw = {k: v for k, v in raw.items() if v is not None}
    with pytest.raises(ConfigError) as exc:
        load(raw, env="t")
    found: dict[str, str] = {}
    for key, msg in exc.value.problems:  # one key may have several problems
        found[key] = f"{found[key]}; {msg}" if key in found else msg
    return found


def test_good_config_is_accepted() -> None:
    cfg = load(GOOD, env="t").config
    assert cfg.livekit_host == "livekit.example.com"
    assert cfg.turn_host == "turn.example.com"


CASES = [
    ("bad-fqdn", {"livekitHost": "live kit.example.com"}, "livekitHost", "fully qualified"),
    ("bare-label", {"turnHost": "turn"}, "turnHost", "fully qualified"),
    ("bad-domain", {"domain": "-bad-.com"}, "domain", "not a valid domain"),
    ("same-hosts", {"livekitHost": "lk.example.com", "turnHost": "lk.example.com"}, "turnHost", "own name"),
    ("short-api-secret", {"apiSecret": "x" * 31}, "apiSecret", "at least 32"),
    ("short-turn-secret", {"turnSecret": "short"}, "turnSecret", "at least 32"),
    ("relay-overlaps-ice", {"turnRelayStart": 55000, "turnRelayEnd": 56000}, "turnRelayStart/turnRelayEnd",
     "overlaps livekit-ice-udp"),
    ("port-used-twice", {"livekitTcpPort": 7880}, "livekitHttpPort", "overlaps livekit-ice-tcp"),
    ("turn-udp-in-ice", {"iceMode": "mux", "iceUdpPort": 3478}, "turnUdpPort", "overlaps livekit-ice-udp"),
    ("zero-nodes", {"nodeCount": 0}, "nodeCount", "out of range"),
    ("cluster-no-private-net", {"nodeCount": 3, "privateNetwork": ""}, "privateNetwork", "need one"),
    ("world-ssh-v4", {"adminCidrs": ["0.0.0.0/0"]}, "adminCidrs", "allowWorldSsh"),
    ("world-ssh-v6", {"adminCidrs": ["::/0"]}, "adminCidrs", "allowWorldSsh"),
    ("unknown-provider", {"provider": "linode"}, "provider", "unknown provider"),
    ("unknown-region", {"region": "mars1"}, "region", "not a hetzner region"),
    ("unknown-server-type", {"serverType": "t2.micro"}, "serverType", "not a hetzner server type"),
    ("do-region-on-hetzner", {"region": "fra1"}, "region", "not a hetzner region"),
    ("ovh-blocks-udp", {"provider": "ovh", "region": None, "serverType": None,
                        "hosts": [{"name": "n1", "publicIp": "203.0.113.5"}]}, "provider", "blocks"),
    ("unknown-key", {"livekitPrt": 1}, "livekitPrt", "unknown setting"),
    ("bad-cidr", {"adminCidrs": ["10.0.0.300/32"]}, "adminCidrs", "not a CIDR"),
    ("privileged-ice", {"icePortStart": 80, "icePortEnd": 90}, "icePortStart", "privileged"),
    # CIDR sets that add up to the whole internet are the whole internet.
    ("world-ssh-split-v4", {"adminCidrs": ["0.0.0.0/1", "128.0.0.0/1"]}, "adminCidrs", "together are 0.0.0.0/0"),
    ("world-ssh-split-v6", {"adminCidrs": ["::/1", "8000::/1"]}, "adminCidrs", "together are ::/0"),
    # Control characters would reach rendered configs (Caddyfile, livekit.yaml).
    ("newline-in-email", {"acmeEmail": "ops@example.com\n}\nimport evil"}, "acmeEmail", "control character"),
    ("newline-in-webhook", {"webhookUrls": ["https://n8n.example.com/x\nurls:"]}, "webhookUrls", "control character"),
    ("tab-in-domain", {"domain": "example.com\t"}, "domain", "control character"),
    ("bad-email", {"acmeEmail": "not-an-address"}, "acmeEmail", "not an e-mail address"),
    ("non-root-ssh-user", {"sshUser": "deploy"}, "sshUser", "use root"),
    ("bad-ssh-user", {"sshUser": "Root Admin"}, "sshUser", "not a valid user name"),
    ("bad-livekit-version", {"livekitVersion": "latest"}, "livekitVersion", "not a release number"),
    ("unpinned-livekit-version", {"livekitVersion": "1.99.0"}, "livekitVersion", "not in deploy/artifacts.json"),
    ("bad-caddy-version", {"caddyVersion": "latest"}, "caddyVersion", "not a release number"),
    ("unpinned-caddy-version", {"caddyVersion": "2.99.0"}, "caddyVersion", "not in deploy/artifacts.json"),
    ("short-call-password", {"callPassword": "p" * 15}, "callPassword", "at least 16"),
    ("call-user-with-colon", {"callUser": "a:b"}, "callUser", "letters, digits"),
    ("long-call-password", {"callPassword": "p" * 73}, "callPassword", "at most 72"),
    ("existing-without-admin", {"provider": "existing", "region": None, "serverType": None, "adminCidrs": [],
                                "hosts": [{"name": "node-1", "publicIp": "203.0.113.5"}]}, "adminCidrs", "is empty"),
    ("http-acme-directory", {"acmeCa": "http://ca.example.com/dir"}, "acmeCa", "https://"),
    # Networking models: Hetzner and DigitalOcean put the public address on the interface.
    ("unknown-network", {"network": "bridge"}, "network", "not direct"),
    ("nat-on-hetzner", {"network": "nat"}, "network", "primary IP is on its interface"),
    ("nat-on-digitalocean", {"provider": "digitalocean", "region": "fra1", "serverType": "s-2vcpu-4gb",
                             "network": "nat"}, "network", "reserved IP only serves the LiveKit name"),
    ("nat-host-without-interface", {"provider": "aws", "region": None, "serverType": None, "network": "nat",
                                    "hosts": [{"name": "node-1", "publicIp": "203.0.113.5"}]},
     "hosts[0].interfaceIp", "has no interfaceIp"),
    ("interface-equals-public", {"provider": "existing", "region": None, "serverType": None,
                                 "hosts": [{"publicIp": "203.0.113.5", "interfaceIp": "203.0.113.5"}]},
     "hosts[0].interfaceIp", "leave interfaceIp out"),
    ("bad-interface-ip", {"provider": "existing", "region": None, "serverType": None,
                          "hosts": [{"publicIp": "203.0.113.5", "interfaceIp": "172.31.5"}]},
     "hosts[0]", "write IPv4 addresses"),
    ("block-udp-in-the-cloud", {"blockUdp": True}, "blockUdp", "only the local cloud"),
]


@pytest.mark.parametrize("changes,key,fragment", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_invalid_config_names_key_and_fix(changes: dict, key: str, fragment: str) -> None:
    found = problems(**changes)
    assert key in found, f"expected a problem for {key}, got {found}"
    assert fragment in found[key]


def test_world_ssh_accepted_with_explicit_opt_in() -> None:
    cfg = parse({**GOOD, "adminCidrs": ["0.0.0.0/0", "::/0"], "allowWorldSsh": True}, env="t")
    assert parse({**GOOD, "adminCidrs": ["0.0.0.0/1", "128.0.0.0/1"], "allowWorldSsh": True}, env="t")
    assert cfg.admin_cidrs == ("0.0.0.0/0", "::/0")


@pytest.mark.parametrize("provider", ["scaleway", "aws", "gcp"])
def test_nat_and_firewall_providers_are_accepted_with_a_warning(provider: str) -> None:
    cfg = parse({"provider": provider, "domain": "example.com", "adminCidrs": ["198.51.100.7/32"],
                 "hosts": [{"name": "node-1", "publicIp": "203.0.113.5"}]}, env="t")
    assert cfg.warnings and provider in cfg.warnings[0]


@pytest.mark.parametrize("nodes,warned", [(1, False), (2, True), (3, False)], ids=["one", "two", "three"])
def test_two_nodes_are_accepted_with_a_warning_that_they_do_not_survive_losing_the_primary(nodes: int,
                                                                                           warned: bool) -> None:
    cfg = parse({**GOOD, "nodeCount": nodes}, env="t")
    cluster = [w for w in cfg.warnings if "nodeCount" in w]
    assert bool(cluster) == warned, cfg.warnings
    if warned:
        assert "Sentinel" in cluster[0] and "nodeCount 3" in cluster[0]
def test_local_environments_take_both_networking_models_and_blocked_udp() -> None:
    for model in ("direct", "nat"):
        spec = load({"network": model, "blockUdp": model == "nat", "nodeCount": 3}, env="t")
        assert spec.config.network == model and {n.network for n in spec.nodes} == {model}
    assert load({"network": "nat", "blockUdp": True}, env="t").udp_blocked


def test_an_existing_host_with_an_interface_address_is_behind_nat() -> None:
    hosts = [{"name": "a", "publicIp": "203.0.113.5", "interfaceIp": "172.31.5.9"},
             {"name": "b", "publicIp": "203.0.113.6", "privateIp": "10.1.0.6"}]
    spec = load({**GOOD, "provider": "aws", "region": None, "serverType": None, "nodeCount": 2,
                 "privateNetwork": "10.1.0.0/24", "hosts": hosts}, env="t")
    assert [(n.name, n.network) for n in spec.nodes] == [("a", "nat"), ("b", "direct")]
    assert spec.config.hosts[0].interface_ip == "172.31.5.9"


def test_all_problems_are_reported_at_once() -> None:
    found = problems(domain="bad domain", apiSecret="x", nodeCount=0, region="mars1")
    assert {"domain", "apiSecret", "nodeCount", "region"} <= set(found)


def test_encrypted_secret_is_not_length_checked() -> None:
    cfg = parse({**GOOD, "apiSecret": {"secure": "v1:abc"}}, env="t")
    assert cfg.api_secret.encrypted and cfg.api_secret.plain is None
    assert "abc" not in repr(cfg)


def test_a_port_collision_and_a_field_problem_are_reported_together() -> None:
    found = problems(domain="bad domain", livekitTcpPort=7880)
    assert {"domain", "livekitHttpPort"} <= set(found)


PLAIN = {k: v for k, v in GOOD.items() if k not in ("apiSecret", "turnSecret")}


def _stack_file(tmp_path: Path, raw: dict) -> Path:
    path = tmp_path / "Pulumi.staging.yaml"
    path.write_text(yaml.safe_dump({"config": {f"voicestack:{k}": v for k, v in raw.items()}}))
    return path


def test_plain_text_secrets_in_a_stack_file_are_refused_with_the_fix(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    assert validate_main([str(_stack_file(tmp_path, GOOD))]) == 1
    err = capsys.readouterr().err
    for key in ("apiSecret", "turnSecret"):
        assert f"- {key}: is written in plain text" in err and f"pulumi config set --secret {key}" in err
    encrypted = {**PLAIN, "apiSecret": {"secure": "v1:AAAA"}}
    assert validate_main([str(_stack_file(tmp_path, encrypted))]) == 0


def test_make_validate_prints_every_error_and_fails(tmp_path: Path) -> None:
    path = _stack_file(tmp_path, {**PLAIN, "domain": "bad domain", "nodeCount": 0, "livekitVersion": "1.99.0"})
    proc = subprocess.run(["make", "-s", "validate", f"CONFIG={path}"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode != 0
    for key in ("domain", "nodeCount", "livekitVersion"):
        assert f"- {key}:" in proc.stderr
    assert "nothing was created" in proc.stderr


def test_validate_accepts_good_stack_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert validate_main([str(_stack_file(tmp_path, PLAIN))]) == 0
    assert "valid" in capsys.readouterr().out


def test_validate_missing_file_is_one_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert validate_main([str(tmp_path / "Pulumi.nope.yaml")]) == 1
    assert "does not exist" in capsys.readouterr().err
