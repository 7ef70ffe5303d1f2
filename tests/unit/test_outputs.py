"""outputs.json is the one contract: self-contained, typed, versioned, private."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

import infra.outputs
from infra import outputs
from infra import spec as specmod
from tests.unit.support import BALANCER, outputs_for, spec_of


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


def test_each_node_carries_its_networking_model_and_interface_address(stack: Path) -> None:
    direct = outputs_for(spec_of(env="unit"))
    assert (direct.nodes[0].network, direct.nodes[0].interface_ip) == ("direct", direct.nodes[0].public_ip)
    nat = outputs_for(spec_of(3, env="unit", network="nat"))
    assert {n.network for n in nat.nodes} == {"nat"}
    assert all(n.interface_ip and n.interface_ip != n.public_ip for n in nat.nodes)
    outputs.write(nat)
    assert outputs.read("unit").nodes == nat.nodes


def test_a_node_that_contradicts_its_model_is_refused() -> None:
    spec = spec_of(env="unit")
    node = dataclasses.replace(outputs_for(spec).nodes[0], interface_ip="10.0.0.9")
    with pytest.raises(outputs.OutputsError, match="network direct means the public address"):
        outputs.assemble(spec, [node], api_secret="a", turn_secret="b", token_key="c", call_password="p" * 16)
    node = dataclasses.replace(node, network="nat")
    with pytest.raises(outputs.OutputsError, match="network 'nat' but the spec says 'direct'"):
        outputs.assemble(spec, [node], api_secret="a", turn_secret="b", token_key="c", call_password="p" * 16)


def test_published_dns_defaults_to_the_nodes_and_must_cover_every_record() -> None:
    spec = spec_of(3, env="unit")
    out = outputs_for(spec)
    # A cluster's LiveKit name is its load balancer's; every other name points at its nodes.
    assert out.dns[spec.config.livekit_host] == [BALANCER] == [out.balancer_ip]
    for node in out.nodes:  # each node's own TURN name, its own address
        assert out.dns[f"{node.name}.{spec.config.turn_host}"] == [node.public_ip]
    assert spec.config.turn_host not in out.dns and out.turn_domain == f"node-1.{spec.config.turn_host}"
    assert out.dns[f"node-2.{spec.config.domain}"] == [out.node("node-2").public_ip]
    other = {**out.dns, spec.config.livekit_host: ["192.0.2.1"]}
    assert outputs.assemble(spec, out.nodes, api_secret="a", turn_secret="b", token_key="c", call_password="p" * 16,
                            dns=other).dns == other  # a provider may publish another address
    with pytest.raises(outputs.OutputsError, match="published DNS names"):
        outputs.assemble(spec, out.nodes, api_secret="a", turn_secret="b", token_key="c", call_password="p" * 16,
                         dns={k: v for k, v in out.dns.items() if k != f"node-3.{spec.config.turn_host}"})
    with pytest.raises(outputs.OutputsError, match="another number of addresses"):
        outputs.assemble(spec, out.nodes, api_secret="a", turn_secret="b", token_key="c", call_password="p" * 16,
                         dns={**out.dns, spec.config.livekit_host: [n.public_ip for n in out.nodes]})
    with pytest.raises(outputs.OutputsError, match="load balancer"):
        outputs.assemble(spec, out.nodes, api_secret="a", turn_secret="b", token_key="c", call_password="p" * 16)
    one = outputs_for(spec_of(1, env="unit"))
    assert one.balancer_ip is None and one.dns[one.livekit_domain] == [one.nodes[0].public_ip]
