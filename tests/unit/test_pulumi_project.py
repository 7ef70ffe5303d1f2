"""Pulumi.yaml, the example stacks and the stack-outputs converter agree with infra/config.py and outputs.json."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import yaml

import infra.outputs
from infra import stack_outputs
from infra.config import DEFAULTS
from infra.outputs import Outputs, read
from infra.program import OUTPUTS_ENV
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


def test_config_schema_has_every_key_with_the_same_default():
    schema = project()["config"]
    assert set(schema) == set(DEFAULTS)
    for key, default in DEFAULTS.items():
        assert schema[key]["default"] == ("" if default is None else default), key
        if key != "hosts":  # a list of objects: Pulumi's schema cannot type its items
            assert schema[key]["type"] == TYPES[type("" if default is None else default)], key
        if default is None:
            assert "SECRET" in schema[key]["description"], key


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_stack_validates(path, capsys):
    assert validate([str(path)]) == 0, capsys.readouterr().err


def test_examples_cover_hetzner_single_and_cluster_and_digitalocean():
    assert [p.name for p in EXAMPLES] == ["Pulumi.digitalocean.yaml", "Pulumi.hetzner-cluster.yaml",
                                          "Pulumi.hetzner-single.yaml"]


SAMPLE = {
    "env": "prod", "livekit_url": "wss://livekit.example.com", "api_key": "APIvoicestack", "api_secret": "s" * 48,
    "turn_domain": "turn.example.com", "token_endpoint": "https://livekit.example.com/api/token",
    "nodes": [{"name": "node-1", "public_ip": "203.0.113.8", "private_ip": None, "ssh_user": "root",
               "ssh_key": "", "roles": ["agent", "livekit", "turn"], "ssh_port": 22}],
    "livekit_domain": "livekit.example.com", "turn_secret": "t" * 48, "token_key": "k" * 48,
    "config_file": "Pulumi.prod.yaml", "ca_bundle": None, "dns_server": None, "client_netns": None,
    "extra": {"provider": "hetzner", "cloud_firewall_managed": True},
}


def test_stack_outputs_become_outputs_with_the_operators_key():
    out = stack_outputs.to_outputs(SAMPLE, "/home/ops/.ssh/id_ed25519")
    assert out.nodes[0].ssh_key == "/home/ops/.ssh/id_ed25519" and out.api_secret == "s" * 48
    assert {f.name for f in dataclasses.fields(Outputs)} == set(SAMPLE)


@pytest.mark.parametrize("broken, message", [
    ({"api_secret": "[secret]"}, "--show-secrets"),
    ({"nodes": []}, "lack nodes"),
    ({"bucket": "x"}, "unexpected stack outputs bucket"),
], ids=["masked-secret", "no-nodes", "foreign-stack"])
def test_bad_stack_outputs_are_refused_with_the_fix(broken, message):
    with pytest.raises(stack_outputs.StackOutputsError, match=message):
        stack_outputs.to_outputs({**SAMPLE, **broken}, "k")


def test_from_env_writes_a_private_outputs_file(tmp_path, monkeypatch):
    monkeypatch.setattr(infra.outputs, "STACK_DIR", tmp_path)
    monkeypatch.setenv(OUTPUTS_ENV, json.dumps(SAMPLE))
    assert stack_outputs.main(["--from-env", "--ssh-key", "/keys/deploy"]) == 0
    path = tmp_path / "prod" / "outputs.json"
    assert path.stat().st_mode & 0o777 == 0o600
    assert read("prod").nodes[0].ssh_key == "/keys/deploy"
