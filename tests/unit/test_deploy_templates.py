"""Deploy templates render from the spec: a port changed in the config changes every file that uses it."""
from __future__ import annotations

import dataclasses
import re
import subprocess

import pytest

from deploy.inventory import DeployInputError, node_vars
from deploy.render import render
from deploy.tasks import caddy, coturn, edge, firewall, livekit, redis
from infra import outputs
from infra.config import parse
from infra.outputs import OutputsError
from infra.secrets import redis_password
from infra.spec import TOKEN_PATH, derive
from tests.conftest import require
from tests.unit.support import ADMIN, ART, INTERFACE, PUBLIC, SECRET, TURN_SECRET, outputs_for, spec_of


def rendered(nodes: int = 1, node: str = "node-1", **changes) -> dict[str, str]:
    """Every rendered file of one node, by a short name."""
    spec = spec_of(nodes, **changes)
    vs = node_vars(outputs_for(spec))[node]
    files = {
        "livekit.yaml": render("livekit", "livekit.yaml.j2", livekit.livekit_vars(vs)),
        "livekit.service": render("livekit", "livekit.service.j2", livekit.livekit_vars(vs)),
        "turnserver.conf": coturn.render_config(vs),
        "Caddyfile": render("caddy", "Caddyfile.j2", caddy.caddy_vars(vs)),
        "nftables.conf": render("firewall", "nftables.conf.j2", firewall.firewall_vars(vs)),
    }
    if spec.sni_split:
        files["nginx.conf"] = render("edge", "nginx.conf.j2", edge.edge_vars(vs))
    if vs.node in spec.redis_nodes:
        files["redis.conf"] = render("redis", "redis.conf.j2", redis.redis_vars(vs))
        files["sentinel.conf"] = render("redis", "sentinel.conf.j2", redis.sentinel_vars(vs))
    return files


def test_single_node_livekit_listens_on_loopback_with_ports_from_the_spec() -> None:
    spec = spec_of()
    lk = rendered()["livekit.yaml"]
    assert f"port: {spec.port('livekit-http').start}\n" in lk
    assert re.search(r"bind_addresses:\n  - 127\.0\.0\.1\nlog_level", lk)
    assert f"tcp_port: {spec.port('livekit-ice-tcp').start}" in lk
    assert "port_range_start: 50000" in lk and "port_range_end: 60000" in lk
    assert f"node_ip: {PUBLIC[0]}\n  use_external_ip: false" in lk
    assert "prometheus:\n  port: 6789" in lk
    assert "redis:" not in lk
    assert "key_file: /etc/livekit/keys.yaml" in lk
    # TURN REST credentials come from a secret file, never inline.
    assert lk.count("secret_file: /etc/livekit/turn-secret") == len(spec.turn_servers)
    assert TURN_SECRET not in lk and SECRET not in lk


def test_ice_mux_mode_uses_one_udp_port() -> None:
    lk = rendered(iceMode="mux", iceUdpPort=7885)["livekit.yaml"]
    assert "udp_port: 7885" in lk and "port_range_start" not in lk
    assert "udp dport 7885 accept" in rendered(iceMode="mux", iceUdpPort=7885)["nftables.conf"]


def test_one_node_has_no_redis_and_livekit_keeps_its_state_in_memory() -> None:
    files = rendered(1)
    assert "redis:" not in files["livekit.yaml"]
    assert "redis.conf" not in files and "sentinel.conf" not in files
    assert "6379" not in files["nftables.conf"] and "26379" not in files["nftables.conf"]


def test_three_nodes_run_redis_and_sentinel_everywhere_and_livekit_asks_the_sentinels() -> None:
    spec = spec_of(3)
    sentinels = [f"{n.private_ip}:{spec.port('redis-sentinel').start}" for n in spec.nodes]
    vs = node_vars(outputs_for(spec))["node-1"]
    for node in spec.nodes:
        files = rendered(3, node.name)
        lk = files["livekit.yaml"]
        # Always the master name: several sentinel_addresses without it make go-redis a Cluster client.
        assert ("redis:\n  sentinel_master_name: voicestack\n  sentinel_addresses:\n" +
                "".join(f"    - {a}\n" for a in sentinels) +
                f"  sentinel_password: {vs.secrets.redis_sentinel_password}\n"
                f"  password: {redis_password(SECRET)}\n") in lk
        assert "address:" not in lk.split("redis:")[1].split("sentinel_addresses")[0]
        assert f"  - {node.private_ip}\n" in lk  # API reachable on the private network
        # The relay sends to LiveKit's public node IPs, so it sits on the public interface, not the private net.
        assert f"relay-ip={PUBLIC[node.index]}" in files["turnserver.conf"]
        rconf, sconf = files["redis.conf"], files["sentinel.conf"]
        # Private network and loopback only, protected mode, passwords for clients and replication.
        assert f"bind 127.0.0.1 {node.private_ip}\nport {spec.port('redis').start}\nprotected-mode yes\n" in rconf
        assert f"requirepass {redis_password(SECRET)}\nmasterauth {redis_password(SECRET)}\n" in rconf
        assert f"replica-announce-ip {node.private_ip}\n" in rconf
        assert f"bind 127.0.0.1 {node.private_ip}\nport 26379\nprotected-mode yes\n" in sconf
        assert f"sentinel announce-ip {node.private_ip}\n" in sconf
        assert f"requirepass {vs.secrets.redis_sentinel_password}\n" in sconf
        assert f"sentinel sentinel-pass {vs.secrets.redis_sentinel_password}\n" in sconf
        assert f"sentinel auth-pass voicestack {redis_password(SECRET)}\n" in sconf
        # Nothing persisted; the seed never names a primary (the deploy asks the Sentinels for it).
        assert 'save ""\nappendonly no\n' in rconf
        assert not [line for line in (rconf + sconf).splitlines() if line.startswith(("replicaof", "sentinel monitor"))]
        nft = files["nftables.conf"]
        for port in (spec.port("redis").start, spec.port("redis-sentinel").start):
            assert f"ip saddr {{ 10.77.0.0/24 }} tcp dport {port} accept" in nft


def test_config_is_renamed_to_the_same_secret_for_redis_and_sentinel_and_other_commands_are_off() -> None:
    files = rendered(3, "node-2")
    vs = node_vars(outputs_for(spec_of(3)))["node-2"]
    name = vs.secrets.redis_config_command
    assert name.startswith("config-") and len(name) == 39 and SECRET not in name
    assert f"rename-command CONFIG {name}\n" in files["redis.conf"]
    assert 'rename-command CONFIG ""' not in files["redis.conf"]  # would abort every failover
    assert f"sentinel rename-command voicestack CONFIG {name}\n" in files["sentinel.conf"]
    for command in ("FLUSHALL", "FLUSHDB", "DEBUG"):
        assert f'rename-command {command} ""\n' in files["redis.conf"]


def test_the_live_files_start_with_the_current_primary_then_the_seed() -> None:
    spec = spec_of(3)
    vs = node_vars(outputs_for(spec))["node-2"]
    assert redis.seed_primary(vs) == f"{spec.nodes[0].private_ip}:6379"
    # A replica follows whichever node is the primary now; the primary itself has no replicaof.
    assert redis.redis_head("10.77.0.12:6379", "10.77.0.11") == ["replicaof 10.77.0.12 6379"]
    assert redis.redis_head("10.77.0.11:6379", "10.77.0.11") == []
    head = redis.sentinel_head("10.77.0.12:6379", redis.sentinel_tunables(vs))
    assert head == ["sentinel monitor voicestack 10.77.0.12 6379 2",
                    "sentinel down-after-milliseconds voicestack 2000",
                    "sentinel failover-timeout voicestack 10000"]
    assert redis.compose(head, "seed\n") == "\n".join(head) + "\nseed\n"


@pytest.mark.parametrize("nodes,quorum", [(2, 2), (3, 2), (4, 3), (5, 3)])
def test_sentinel_quorum_is_a_majority_of_the_nodes(nodes: int, quorum: int) -> None:
    spec = spec_of(nodes)
    assert len(spec.redis_nodes) == nodes and spec.redis_quorum == quorum


def test_redis_password_is_derived_from_and_rotates_with_the_api_secret() -> None:
    assert redis_password(SECRET) != redis_password(SECRET + "x")
    assert SECRET not in redis_password(SECRET) and len(redis_password(SECRET)) == 64


# (config key, new value, {file: text that must appear})
PORT_CHANGES = [
    ("livekitHttpPort", 17880, {"livekit.yaml": "port: 17880\n", "Caddyfile": "reverse_proxy 127.0.0.1:17880"}),
    ("livekitTcpPort", 17881, {"livekit.yaml": "tcp_port: 17881", "nftables.conf": "tcp dport 17881 accept"}),
    ("livekitPrometheusPort", 16789, {"livekit.yaml": "prometheus:\n  port: 16789"}),
    ("turnUdpPort", 13478, {"turnserver.conf": "listening-port=13478", "livekit.yaml": "port: 13478\n",
                            "nftables.conf": "udp dport 13478 accept"}),
    ("icePortStart", 51000, {"livekit.yaml": "port_range_start: 51000", "nftables.conf": "udp dport 51000-60000"}),
    ("turnRelayStart", 41000, {"turnserver.conf": "min-port=41000"}),
    ("turnRelayEnd", 48000, {"turnserver.conf": "max-port=48000"}),
    ("turnTlsPort", 5350, {"turnserver.conf": "tls-listening-port=5350", "livekit.yaml": "port: 5350\n",
                           "nftables.conf": "tcp dport 5350 accept", "Caddyfile": "https_port 443"}),
]


@pytest.mark.parametrize("key,value,expect", PORT_CHANGES, ids=[c[0] for c in PORT_CHANGES])
def test_changing_a_port_in_the_config_changes_the_rendered_files(key: str, value: int, expect: dict) -> None:
    before, after = rendered(), rendered(**{key: value})
    for name, text in expect.items():
        assert text in after[name], f"{name} lacks {text!r} after {key}={value}"
        assert text not in before[name], f"{name} already had {text!r}"
    assert [n for n in after if before.get(n) != after[n]], "nothing changed"


def test_turn_tls_on_443_puts_an_sni_router_in_front_of_caddy_and_coturn() -> None:
    spec = spec_of()
    assert spec.sni_split
    files = rendered()
    nginx = files["nginx.conf"]
    assert f"listen {spec.port('https').start};" in nginx
    # The TURN name goes through the hop that takes the PROXY header off, then to coturn on the
    # node's own address, not loopback (see deploy/tasks/edge.py).
    assert f"{spec.config.turn_host} turn_hop;" in nginx
    assert f"upstream turn_tls {{\n\t\tserver {PUBLIC[0]}:{spec.port('turn-tls').start};" in nginx
    assert f"server 127.0.0.1:{spec.port('caddy-https').start};" in nginx
    assert f"https_port {spec.port('caddy-https').start}" in files["Caddyfile"]
    assert f"tls-listening-port={spec.port('turn-tls').start}" in files["turnserver.conf"]
    # The internal ports are not opened by the host firewall.
    assert "dport 5349" not in files["nftables.conf"] and "dport 8443" not in files["nftables.conf"]


def test_turn_tls_on_its_own_port_needs_no_sni_router() -> None:
    files = rendered(turnTlsPort=5349)
    assert "nginx.conf" not in files
    assert "https_port 443" in files["Caddyfile"]


def test_every_cluster_node_serves_and_obtains_its_own_turn_name_and_hands_out_only_it() -> None:
    spec = spec_of(3)
    names = spec.turn_hosts()
    for node in ("node-1", "node-2", "node-3"):
        files, own = rendered(3, node), names[node]
        assert own == f"{node}.{spec.config.turn_host}"
        # Caddy obtains its certificate (an ACME order of its own, on port 80 of this node)...
        assert f"\n{own} {{" in files["Caddyfile"] and f"http://{own} {{" in files["Caddyfile"].replace(
            f"http://{spec.config.livekit_host}, http://{own}", f"http://{own}")
        # ...the SNI router sends it to coturn, and LiveKit hands out this name and no other.
        assert f"\t\t{own} turn_hop;" in files["nginx.conf"]
        assert re.findall(r"- host: (\S+)", files["livekit.yaml"]) == [own, own]
        for other in set(names.values()) - {own}:
            assert other not in files["Caddyfile"] and other not in files["nginx.conf"]
        assert f"\n{spec.config.turn_host} {{" not in files["Caddyfile"]


def test_caddyfile_proxies_livekit_and_the_token_endpoint_with_hsts() -> None:
    spec = spec_of()
    cf = rendered()["Caddyfile"]
    assert "acme_ca https://198.18.0.1:14000/dir" in cf
    assert f"{spec.config.livekit_host} {{" in cf
    assert f"handle {TOKEN_PATH}* {{\n\t\treverse_proxy 127.0.0.1:{spec.port('token').start}" in cf
    assert 'Strict-Transport-Security "max-age=31536000"' in cf
    assert f"{spec.config.turn_host} {{" in cf  # so Caddy obtains the TURN certificate
    assert "protocols h1 h2" in cf and "admin off" in cf


@pytest.mark.parametrize("acme,directory", [
    ("letsencrypt", "https://acme-v02.api.letsencrypt.org/directory"),
    ("letsencrypt-staging", "https://acme-staging-v02.api.letsencrypt.org/directory"),
    ("https://ca.example.test/dir", "https://ca.example.test/dir"),
], ids=["letsencrypt", "staging", "custom"])
def test_acme_directory_follows_the_config(acme: str, directory: str) -> None:
    assert f"acme_ca {directory}\n" in rendered(acmeCa=acme)["Caddyfile"]


def test_only_the_certificate_node_asks_acme_others_relay_challenges_to_it() -> None:
    spec = spec_of(3)
    leader = rendered(3, "node-1")["Caddyfile"]
    assert "tls /etc/caddy" not in leader
    assert "reverse_proxy" in leader and "acme-challenge" not in leader
    for node in ("node-2", "node-3"):
        other = rendered(3, node)
        # The certificate node's certificate, copied by the deploy, instead of an ACME order.
        assert "tls /etc/caddy/tls/livekit.crt /etc/caddy/tls/livekit.key" in other["Caddyfile"]
        relay = f"{spec.nodes[0].private_ip}:{spec.port('http').start}"
        assert re.search(r"handle /\.well-known/acme-challenge/\* \{\n\t\treverse_proxy " + re.escape(relay),
                         other["Caddyfile"])
        # Every TURN node serves TURN/TLS (with the copied certificate).
        assert f"tls-listening-port={spec.port('turn-tls').start}" in other["turnserver.conf"]


def test_internal_caddy_https_binds_loopback_but_port_80_stays_public() -> None:
    cf = rendered()["Caddyfile"]
    assert cf.count("\tbind 127.0.0.1\n") == 2  # LiveKit and TURN sites
    http_block = cf[cf.index("http://"):]
    assert "bind" not in http_block
    assert "bind" not in rendered(turnTlsPort=5349)["Caddyfile"]


# ---- networking models ----------------------------------------------------------------------

def _lines(text: str, *prefixes: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip().startswith(prefixes)]


@pytest.mark.parametrize("nodes", [1, 3], ids=["one-node", "three-nodes"])
def test_direct_nodes_advertise_bind_and_relay_on_the_public_address_of_their_interface(nodes: int) -> None:
    for node in spec_of(nodes).nodes:
        files = rendered(nodes, node.name)
        pub = PUBLIC[node.index]
        lk = files["livekit.yaml"]
        assert f"node_ip: {pub}\n  use_external_ip: false\n  ips:\n    includes:\n      - {pub}/32\n" in lk
        turn = files["turnserver.conf"]
        assert _lines(turn, "listening-ip", "relay-ip", "external-ip") == [f"listening-ip={pub}", f"relay-ip={pub}"]
        assert f"server {pub}:5349;" in files["nginx.conf"]


@pytest.mark.parametrize("nodes", [1, 3], ids=["one-node", "three-nodes"])
def test_nat_nodes_bind_the_interface_address_and_advertise_the_public_one(nodes: int) -> None:
    """1:1 NAT: the public address is on no interface; coturn could not bind it (it would retry forever)."""
    spec = spec_of(nodes, network="nat")
    for node in spec.nodes:
        files = rendered(nodes, node.name, network="nat")
        pub, iface = PUBLIC[node.index], INTERFACE[node.index]
        lk = files["livekit.yaml"]
        assert f"node_ip: {pub}\n  use_external_ip: false\n  ips:\n    includes:\n      - {iface}/32\n" in lk
        turn = files["turnserver.conf"]
        assert _lines(turn, "listening-ip", "relay-ip", "external-ip") == [
            f"listening-ip={iface}", f"relay-ip={iface}", f"external-ip={pub}/{iface}"]
        # coturn relays to LiveKit's advertised (public) addresses, and to the interface ones behind the NAT.
        want = [ip for n in spec.nodes for ip in (PUBLIC[n.index], INTERFACE[n.index])]
        assert re.findall(r"^allowed-peer-ip=(.+)$", turn, re.M) == want
        assert f"server {iface}:5349;" in files["nginx.conf"]
        # Port 80 and the SNI router listen on every address: the firewall stays port based.
        assert re.search(r"^\s*listen 443;$", files["nginx.conf"], re.M)
        assert files["nftables.conf"] == rendered(nodes, node.name)["nftables.conf"]


def test_a_node_without_an_interface_address_behind_nat_is_refused() -> None:
    spec = spec_of(network="nat")
    node = dataclasses.replace(outputs_for(spec).nodes[0], interface_ip=None)
    with pytest.raises(OutputsError, match="network nat needs the interface address"):
        outputs.assemble(spec, [node], api_secret=SECRET, turn_secret=TURN_SECRET, token_key="k" * 40, call_password="p" * 16)


def test_coturn_peer_policy_allows_only_livekit_nodes() -> None:
    spec = spec_of(3)
    conf = rendered(3)["turnserver.conf"]
    allowed = re.findall(r"^allowed-peer-ip=(.+)$", conf, re.M)
    # LiveKit advertises only its public node IP: the relay goes there, never to the private network.
    assert allowed == [PUBLIC[n.index] for n in spec.nodes]
    denied = re.findall(r"^denied-peer-ip=(.+)$", conf, re.M)
    assert denied == ["0.0.0.0-255.255.255.255", "::-ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"]
    for line in ("use-auth-secret", f"static-auth-secret={TURN_SECRET}", "no-cli", "no-tcp-relay",
                 "no-multicast-peers", f"realm={spec.config.turn_host}", "user-quota=", "total-quota=", "max-bps="):
        assert line in conf
    assert "allow-loopback-peers" not in conf and "no-auth" not in conf


@pytest.mark.parametrize("bad,problem", [
    ("denied-peer-ip=::", "denies every peer"),
    ("denied-peer-ip=::0", "denies every peer"),
    ("allow-loopback-peers", "allow-loopback-peers"),
    ("no-auth", "no-auth"),
], ids=["deny-colon-colon", "deny-colon-colon-0", "loopback-peers", "no-auth"])
def test_coturn_lint_refuses_dangerous_settings(bad: str, problem: str) -> None:
    spec = spec_of()
    vs = node_vars(outputs_for(spec))["node-1"]
    text = render("coturn", "turnserver.conf.j2", coturn.coturn_vars(vs)) + bad + "\n"
    assert any(problem in p for p in coturn.lint(text))
    assert coturn.lint(text.replace(bad + "\n", "")) == []


def test_host_firewall_renders_exactly_the_spec_rules() -> None:
    spec = spec_of()
    nft = rendered()["nftables.conf"]
    assert "policy drop;" in nft and 'iif "lo" accept' in nft and "ct state established,related accept" in nft
    accepts = re.findall(r"^\t\t(.* dport .*) accept", nft, re.M)
    assert len(accepts) == len(spec.host_firewall)
    assert f"ip saddr {{ {ADMIN} }} tcp dport 22" in nft


def test_host_firewall_refuses_to_lock_ssh_out() -> None:
    spec = derive(parse({"provider": "local", "domain": "x.test", "acmeCa": "local"}, env="t"))
    vs = node_vars(outputs_for(spec))["node-1"]
    with pytest.raises(DeployInputError, match="locking the deploy out"):
        firewall.firewall_vars(vs)


@pytest.mark.parametrize("nodes", [1, 3])
def test_rendered_nftables_passes_nft_check(tmp_path, nodes: int) -> None:
    require("nft", root=True)  # nft -c needs root
    path = tmp_path / "nftables.conf"
    path.write_text(rendered(nodes)["nftables.conf"])
    result = subprocess.run(["nft", "-c", "-f", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_livekit_unit_is_sandboxed_and_drains_within_the_stop_budget() -> None:
    unit = rendered()["livekit.service"]
    for line in ("Restart=always\n", "NoNewPrivileges=yes", "ProtectSystem=strict", "ProtectHome=yes",
                 "PrivateTmp=yes", "CapabilityBoundingSet=\n", "KillSignal=SIGTERM\n", "TimeoutStopSec=120\n"):
        assert line in unit
    assert "TimeoutStopSec=300\n" in rendered(livekitStopTimeout=300)["livekit.service"]
    assert int(re.search(r"LimitNOFILE=(\d+)", unit).group(1)) >= 500000


def test_local_artifact_override_stands_for_every_architecture() -> None:
    vs = node_vars(outputs_for(spec_of()))["node-1"]
    assert livekit.artifact_for(vs, "x86_64") == (ART["livekit"]["url"], ART["livekit"]["sha256"])
    assert livekit.artifact_for(vs, "aarch64") == (ART["livekit"]["url"], ART["livekit"]["sha256"])
    with pytest.raises(DeployInputError, match="unsupported architecture"):
        livekit.artifact_for(vs, "riscv64")


def test_an_override_for_another_version_is_refused() -> None:
    with pytest.raises(DeployInputError, match="built livekit 1.13.5 but the spec asks for 1.9.11"):
        node_vars(outputs_for(spec_of(livekitVersion="1.9.11")))


def test_without_override_the_production_pin_is_used() -> None:
    vs = node_vars(outputs_for(spec_of(), artifacts={}))["node-1"]
    url, sha = livekit.artifact_for(vs, "x86_64")
    assert url == "https://github.com/livekit/livekit/releases/download/v1.13.5/livekit_1.13.5_linux_amd64.tar.gz"
    assert sha == "c020fac437b7cc9b776eef1ad5ea8af77be9acfa07602eca20a3a44930dfbc70"


def test_the_production_manifest_pins_every_version_for_every_architecture() -> None:
    from deploy.artifacts import load_manifest

    manifest = load_manifest()
    assert manifest["livekit"], "no LiveKit version pinned"
    assert manifest["caddy"], "no Caddy version pinned"
    # Each project's published checksums: LiveKit's checksums.txt is sha256, Caddy's is sha512.
    assert {name: next(iter(v.values())).algorithm for name, v in manifest.items()} == \
        {"livekit": "sha256", "caddy": "sha512"}
    for name, versions in manifest.items():
        for version, art in versions.items():
            assert set(art.digests) == {"amd64", "arm64"}, (name, version)
            for arch in art.digests:
                url, digest = art.for_arch(arch)  # raises when not pinned
                assert len(digest) == {"sha256": 64, "sha512": 128}[art.algorithm], (name, version, arch)
                assert url.endswith(f"_{version}_linux_{arch}.tar.gz")


def test_an_unknown_or_unpinned_version_is_a_config_problem() -> None:
    from deploy.artifacts import Artifact, check_pinned

    assert check_pinned("livekit", "1.13.5", "amd64") == []
    assert "not in deploy/artifacts.json" in check_pinned("livekit", "1.2.3", "amd64")[0][1]
    unpinned = {"livekit": {"9.9.9": Artifact("livekit", "9.9.9", "livekit-server", {"amd64": "u"}, {"amd64": None})}}
    (key, msg), = check_pinned("livekit", "9.9.9", "amd64", manifest=unpinned)
    assert key == "livekitVersion" and "refusing to install an unverified binary" in msg
