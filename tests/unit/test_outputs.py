"""outputs.json is the one contract: self-contained, typed, versioned, private."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

import infra.outputs
from infra import outputs
from infra import spec as specmod
from tests.unit.support import outputs_for, spec_of


@pytest.fixture
def stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(infra.outputs, "STACK_DIR", tmp_path)
    return tmp_path


def test_outputs_round_trip_with_the_derived_spec(stack: Path) -> None:
    out = outputs_for(spec_of(3, env="unit", iceMode="mux"), apt_proxy="http://198.18.0.1:3142")
    path = outputs.write(out)
    back = outputs.read("unit")
    assert back == dataclasses.replace(out, spec=specmod.without_secrets(out.spec))
    assert back.spec.port("livekit-ice-udp").start == 7882 and back.deploy.apt_proxy == "http://198.18.0.1:3142"
    assert path.stat().st_mode & 0o777 == 0o600 and path.parent.stat().st_mode & 0o777 == 0o700
    assert not list(path.parent.glob("*.tmp"))


def test_the_file_carries_every_field_of_the_architecture_contract(stack: Path) -> None:
    data = json.loads(outputs.write(outputs_for(spec_of(env="unit"))).read_text())
    for key in ("env", "livekit_url", "api_key", "api_secret", "turn_domain", "token_endpoint", "nodes", "spec",
                "schema", "provider"):
        assert data[key], key
    assert set(data["nodes"][0]) >= {"name", "public_ip", "private_ip", "ssh_user", "ssh_key", "roles"}
    assert {p["name"] for p in data["spec"]["ports"]} >= {"https", "livekit-ice-udp", "turn-udp"}
    assert data["spec"]["config"]["api_secret"] == {"plain": None, "encrypted": False}  # resolved ones sit outside


def test_an_older_outputs_file_fails_with_the_fix(stack: Path) -> None:
    path = outputs.write(outputs_for(spec_of(env="unit")))
    data = json.loads(path.read_text())
    data.pop("schema")
    path.write_text(json.dumps(data))
    with pytest.raises(outputs.OutputsError, match=r"older voicestack.*make up ENV=unit"):
        outputs.read("unit")


def test_a_damaged_outputs_file_names_the_bad_field(stack: Path) -> None:
    path = outputs.write(outputs_for(spec_of(env="unit")))
    data = json.loads(path.read_text())
    data["nodes"][0]["roles"] = "livekit"
    path.write_text(json.dumps(data))
    with pytest.raises(outputs.OutputsError, match=r"outputs.nodes\[0\].roles"):
        outputs.read("unit")


def test_assemble_refuses_nodes_the_spec_does_not_have_and_missing_secrets() -> None:
    spec = spec_of(env="unit")
    node = outputs.NodeOut("node-7", "203.0.113.7", None, "root", "/k", ["livekit"])
    with pytest.raises(outputs.OutputsError, match="node-7"):
        outputs.assemble(spec, [node], api_secret="a", turn_secret="b", token_key="c", call_password="d")
    good = outputs_for(spec).nodes
    with pytest.raises(outputs.OutputsError, match="turn_secret"):
        outputs.assemble(spec, good, api_secret="a", turn_secret="", token_key="c", call_password="d")
    with pytest.raises(outputs.OutputsError, match="call_password"):
        outputs.assemble(spec, good, api_secret="a", turn_secret="b", token_key="c", call_password="")


def test_urls_come_from_the_spec(stack: Path) -> None:
    out = outputs_for(spec_of(env="unit", livekitHost="lk.example.test"))
    assert out.livekit_url == "wss://lk.example.test" and out.token_endpoint == f"https://lk.example.test{specmod.TOKEN_PATH}"
