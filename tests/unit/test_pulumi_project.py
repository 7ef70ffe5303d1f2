"""Pulumi.yaml, the example stacks and the stack-outputs converter agree with infra/config.py and outputs.json."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

import infra.outputs
from infra import spec as specmod
from infra.cloud import stack_outputs
from infra.cloud.components import OUTPUTS_ENV
from infra.config import DEFAULTS, SETTINGS
from infra.outputs import read
from infra.validate import load_file
from infra.validate import main as validate

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("Pulumi.*.yaml"))
TYPES = {bool: "boolean", int: "integer", str: "string", list: "array"}


def project() -> dict:
    return yaml.safe_load((ROOT / "Pulumi.yaml").read_text())


def test_project_runs_the_infra_program_in_the_venv():
    p = project()
    assert p["name"] == "voicestack" and p["main"] == "infra/"
    assert p["runtime"] == {"name": "python", "options": {"toolchain": "pip", "virtualenv": ".venv"}}


def test_config_schema_is_the_settings_table():
    """Pulumi.yaml's schema and infra/config.py SETTINGS: same keys, defaults, types, descriptions."""
    schema = project()["config"]
    assert list(schema) == [s.key for s in SETTINGS]
    for s in SETTINGS:
        assert schema[s.key]["default"] == ("" if s.default is None else s.default), s.key
        if s.kind != "hosts":  # a list of objects: Pulumi's schema cannot type its items
            assert schema[s.key]["type"] == TYPES[type("" if s.default is None else s.default)], s.key
        assert schema[s.key].get("description", "") == s.description, s.key
    assert set(DEFAULTS) == set(schema)


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_stack_validates(path, capsys):
    assert validate([str(path)]) == 0, capsys.readouterr().err


def test_examples_cover_hetzner_single_and_cluster_and_digitalocean():
    assert [p.name for p in EXAMPLES] == ["Pulumi.digitalocean.yaml", "Pulumi.hetzner-cluster.yaml",
                                          "Pulumi.hetzner-single.yaml"]


def sample() -> dict:
    """What `pulumi stack output --json --show-secrets` prints for a one-node Hetzner stack."""
    spec = load_file(ROOT / "examples" / "Pulumi.hetzner-single.yaml", env="prod")
    return {
        "spec": specmod.to_json(spec),
        "nodes": [{"name": "node-1", "public_ip": "203.0.113.8", "private_ip": None, "ssh_user": "root",
                   "roles": ["agent", "livekit", "turn"], "ssh_port": 22}],
        "api_secret": "s" * 48, "turn_secret": "t" * 48, "token_key": "k" * 48, "call_password": "p" * 48,
        "info": {"provider": "hetzner", "dns_nameservers": ["hydrogen.ns.hetzner.com"]},
    }


def test_stack_outputs_become_outputs_with_the_operators_key():
    data = sample()
    out = stack_outputs.to_outputs(data, "/home/ops/.ssh/id_ed25519")
    assert out.nodes[0].ssh_key == "/home/ops/.ssh/id_ed25519" and out.api_secret == "s" * 48
    # The spec travels whole: the outputs hold exactly what the program derived.
    assert specmod.to_json(out.spec) == data["spec"]
    assert out.livekit_url == "wss://livekit.voice.example.com" and out.provider == "hetzner"


@pytest.mark.parametrize("broken, message", [
    ({"api_secret": "[secret]"}, "--show-secrets"),
    ({"nodes": []}, "lack nodes"),
    ({"spec": None}, "lack spec"),
    ({"spec": {"nodes": []}}, "does not fit this checkout"),
    ({"nodes": [{"name": "node-9", "public_ip": "203.0.113.9", "ssh_user": "root", "roles": []}]}, "node-9"),
], ids=["masked-secret", "no-nodes", "foreign-stack", "other-schema", "wrong-nodes"])
def test_bad_stack_outputs_are_refused_with_the_fix(broken, message):
    with pytest.raises(stack_outputs.StackOutputsError, match=message):
        stack_outputs.to_outputs({**sample(), **broken}, "k")


def test_from_env_writes_a_private_outputs_file(tmp_path, monkeypatch):
    monkeypatch.setattr(infra.outputs, "STACK_DIR", tmp_path)
    monkeypatch.setenv(OUTPUTS_ENV, json.dumps(sample()))
    assert stack_outputs.main(["--from-env", "--ssh-key", "/keys/deploy"]) == 0
    path = tmp_path / "prod" / "outputs.json"
    assert path.stat().st_mode & 0o777 == 0o600 and path.parent.stat().st_mode & 0o777 == 0o700
    assert read("prod").nodes[0].ssh_key == "/keys/deploy"
