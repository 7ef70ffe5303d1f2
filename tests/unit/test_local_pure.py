"""The local environment's pure parts, without root: names, cloud firewall, DNS, apt sources, wheels, packing."""
from __future__ import annotations

import gzip
import hashlib
import io
import ipaddress
import subprocess
import tarfile
from pathlib import Path

import pytest

from infra.cloudinit import etc_hosts, render_user_data
from infra.local import aptproxy, artifacts, balancer, dns, firewall, host, wheelhouse
from infra.local.names import EnvNameError, EnvNames
from infra.spec import WORLD, FirewallRule
from tests.conftest import require
from tests.unit.support import spec_of

SSH_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHVvaWNlc3RhY2t0ZXN0a2V5MDAwMDAwMDAwMDAw op@host"


def test_names_are_derived_from_the_env_alone_and_fit_kernel_limits() -> None:
    a, b = EnvNames("local"), EnvNames("e2edeploy")
    assert a == EnvNames("local") and a.public_net != b.public_net and a.tag != b.tag
    for names in (a, b):
        links = [names.public_bridge, names.private_bridge, names.client_link, names.node_public_link(19),
                 names.node_private_link(19)]
        assert all(len(link) <= 15 for link in links), links  # IFNAMSIZ
        assert ipaddress.ip_address(names.gateway) in names.public_net
        assert ipaddress.ip_address(names.operator_ip) in names.internet_net
        assert names.node_public_ip(0) != names.gateway


@pytest.mark.parametrize("bad", ["Local", "1env", "a" * 25, "env_1", ""])
def test_bad_env_names_are_refused_with_the_rule(bad: str) -> None:
    with pytest.raises(EnvNameError, match="lower-case"):
        EnvNames(bad)


def test_cloud_firewall_accepts_exactly_the_spec_rules_and_drops_the_rest() -> None:
    names, spec = EnvNames("unit"), spec_of(env="unit")
    text = firewall.render(names, spec)
    accepts = [line.strip() for line in text.splitlines() if line.strip().endswith("\"") and " accept comment" in line
               and "saddr" in line]
    assert len(accepts) == sum(len(firewall._rule(r)) for r in spec.cloud_firewall)  # a line per family
    for rule in spec.cloud_firewall:
        assert any(f"{rule.protocol} dport {rule.port_range} accept" in a for a in accepts), rule
    assert 'counter drop comment "default deny"' in text
    assert text.startswith(f"table inet {names.nft_table}\ndelete table inet {names.nft_table}\n")


def test_cloud_firewall_splits_sources_by_family_and_sanitises_comments() -> None:
    rule = FirewallRule("tcp", 22, 22, ("198.51.100.7/32", "2001:db8::/48"), 'ssh: "admin" only')
    lines = firewall._rule(rule)
    assert lines == ['ip saddr { 198.51.100.7/32 } tcp dport 22 accept comment "ssh: \'admin\' only"',
                     'ip6 saddr { 2001:db8::/48 } tcp dport 22 accept comment "ssh: \'admin\' only"']
    assert len(firewall._rule(FirewallRule("udp", 1, 2, WORLD, "x"))) == 2


def test_dns_records_map_every_name_to_node_addresses_and_the_acme_server() -> None:
    names, spec = EnvNames("unit"), spec_of(3, env="unit")
    got = dns.records(names, spec)
    # A cluster's LiveKit name is the load balancer's (infra/local/balancer.py); TURN stays direct.
    assert got[spec.config.livekit_host] == [balancer.public_ip(names)]
    assert got[f"node-2.{spec.config.turn_host}"] == [names.node_public_ip(1)] and spec.config.turn_host not in got
    assert got[f"node-3.{spec.config.domain}"] == [names.node_public_ip(2)]
    assert dns.records(names, spec_of(1, env="unit"))[spec.config.livekit_host] == [names.node_public_ip(0)]
    assert got[f"acme.{spec.config.domain}"] == [names.gateway]


def test_apt_sources_are_read_in_both_formats(tmp_path: Path) -> None:
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list").write_text("# comment\ndeb [arch=amd64] http://mirror.example/debian bookworm main\n"
                                           "deb-src http://mirror.example/debian bookworm main\n")
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\nComponents: main\n\n"
        "Types: deb\nURIs: http://off.example/debian\nSuites: bookworm\nEnabled: no\n")
    assert aptproxy._entries(tmp_path) == [("http://mirror.example/debian", ["bookworm"]),
                                           ("http://mirror.example/debian-security", ["bookworm-security"])]
    m = aptproxy.host_mirrors(tmp_path)
    assert (m.debian, m.security) == ("http://mirror.example/debian", "http://mirror.example/debian-security")
    assert "URIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates" in aptproxy.machine_sources(m)


def test_a_host_without_an_http_mirror_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "sources.list").write_text("deb https://tls.example/debian bookworm main\n")
    with pytest.raises(aptproxy.host.LocalEnvError, match="no http:// 'bookworm' Debian mirror"):
        aptproxy.host_mirrors(tmp_path)


def test_wheel_index_links_every_wheel_with_its_sha256(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    for name in ("Foo_Bar-1.0-py3-none-any.whl", "foo_bar-1.1-py3-none-any.whl", "baz-2.0-py3-none-any.whl"):
        (wheels / name).write_bytes(name.encode())
    projects = wheelhouse.write_index(tmp_path / "simple", wheels, "../../wheels")
    assert projects == ["baz", "foo-bar"]
    page = (tmp_path / "simple" / "foo-bar" / "index.html").read_text()
    sha = hashlib.sha256(b"foo_bar-1.1-py3-none-any.whl").hexdigest()
    assert f'href="../../wheels/foo_bar-1.1-py3-none-any.whl#sha256={sha}"' in page and "Foo_Bar-1.0" in page


def test_packed_release_is_reproducible_in_the_upstream_layout() -> None:
    one, two = artifacts._pack({"livekit-server": b"\x7fELF..."}), artifacts._pack({"livekit-server": b"\x7fELF..."})
    assert one == two and artifacts._pack({"livekit-server": b"other"}) != one
    with tarfile.open(fileobj=io.BytesIO(one)) as tar:
        member = tar.getmember("livekit-server")
        assert member.mode == 0o755 and tar.extractfile(member).read() == b"\x7fELF..."
    assert gzip.decompress(one)  # a plain .tar.gz


def test_user_data_is_the_same_cloud_config_with_no_secret() -> None:
    spec = spec_of(env="unit", apiSecret="x" * 40)
    text = render_user_data(spec, spec.nodes[0], SSH_KEY)
    assert text.startswith("#cloud-config\n") and SSH_KEY in text and "x" * 40 not in text
    with pytest.raises(ValueError, match="one OpenSSH public key line"):
        render_user_data(spec, spec.nodes[0], SSH_KEY + "\n" + SSH_KEY)
    assert etc_hosts("node-1", "node-1.unit.test").startswith("127.0.1.1 node-1.unit.test node-1\n")


# ---- the emulated networking models ------------------------------------------------------------

def test_direct_machines_get_no_nat_and_udp_is_not_blocked() -> None:
    names, spec = EnvNames("unit"), spec_of(3, env="unit")
    text = firewall.render(names, spec)
    assert firewall.nat_map(names, spec) == {}
    assert "type nat" not in text and "blockUdp" not in text and "hairpin" not in text


def test_nat_maps_each_public_address_to_its_interface_address_both_ways() -> None:
    names, spec = EnvNames("unit"), spec_of(3, env="unit", network="nat")
    mapping = firewall.nat_map(names, spec)
    assert mapping == {names.node_public_ip(i): names.node_interface_ip(i) for i in range(3)}
    assert all(ipaddress.ip_address(ip) in names.interface_net for ip in mapping.values())
    assert not names.interface_net.overlaps(names.public_net) and not names.interface_net.overlaps(names.internet_net)
    text = firewall.render(names, spec)
    dnat = ", ".join(f"{a} : {b}" for a, b in mapping.items())
    snat = ", ".join(f"{b} : {a}" for a, b in mapping.items())
    # In: from the internet side and other machines (prerouting), and from the host itself (output).
    assert text.count(f"dnat ip to ip daddr map {{ {dnat} }}") == 2
    assert "type nat hook prerouting" in text and "type nat hook output" in text
    # Out: towards the internet side, and hairpin back onto the machines' bridge.
    assert f'oifname "{names.client_link}" ip saddr {{ {", ".join(mapping.values())} }} snat ip to ip saddr map ' \
           f'{{ {snat} }}' in text
    assert f'oifname "{names.public_bridge}" ct status dnat ip saddr' in text
    # Hairpin traffic passes the cloud firewall like outside traffic, and the router sends no redirects.
    assert "ct status dnat jump inbound" in text and "icmp type redirect drop" in text
    assert text.count(" accept comment ") == firewall.render(names, spec_of(3, env="unit")).count(" accept comment ")


def test_block_udp_drops_udp_to_and_from_the_internet_before_established_flows() -> None:
    names, spec = EnvNames("unit"), spec_of(env="unit", blockUdp=True)
    lines = [line.strip() for line in firewall.render(names, spec).splitlines()]
    forward = lines[lines.index("chain forward {"):lines.index("chain output {")]
    drops = [i for i, line in enumerate(forward) if "meta l4proto udp counter drop" in line]
    established = next(i for i, line in enumerate(forward) if "ct state established,related accept" in line)
    assert len(drops) == 2 and max(drops) < established
    assert any(f'oifname "{names.public_bridge}" meta l4proto udp counter drop' in line for line in lines)


@pytest.mark.parametrize("changes", [{}, {"network": "nat"}, {"network": "nat", "blockUdp": True}],
                         ids=["direct", "nat", "nat-block-udp"])
def test_the_cloud_firewall_ruleset_passes_nft_check(tmp_path: Path, changes: dict) -> None:
    require("nft", root=True)  # nft -c needs root
    path = tmp_path / "cloud.nft"
    path.write_text(firewall.render(EnvNames("unit"), spec_of(3, env="unit", **changes)))
    result = subprocess.run(["nft", "-c", "-f", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_client_network_conditions_filter_both_directions() -> None:
    """LiveKit sends ICE checks to the client too: a condition that only filters the way out lets
    UDP in, and the client's answers then pass as "established" (the media would use UDP)."""
    from infra.probes import netcond

    assert netcond.RULES["normal"] is None
    for name in ("udp-blocked", "tcp443-only"):
        out, into = netcond.RULES[name]
        assert "udp dport != 53 drop" in out and "udp sport != 53 drop" in into
    out, into = netcond.RULES["tcp443-only"]
    assert "tcp dport != 443 drop" in out and "tcp sport != 443 drop" in into


def test_the_balancer_forwards_each_service_to_every_target_with_proxy_v2_and_health_checks() -> None:
    names, spec = EnvNames("unit"), spec_of(3, env="unit")
    text = balancer.render(names, spec)
    lb = spec.balancer
    for svc in lb.services:
        front = text[text.index(f"frontend {svc.name}\n"):text.index(f"backend {svc.name}\n")]
        assert f"bind {balancer.public_ip(names)}:{svc.listen_port}" in front
        back = text[text.index(f"backend {svc.name}\n"):].split("\n\n")[0]
        assert f"http-check send meth GET uri {lb.health.path}" in back and "http-check expect status 200" in back
        assert (f"default-server check port {lb.health.port} inter {lb.health.interval_s}s fall {lb.health.retries} "
                f"rise {lb.health.retries} send-proxy-v2 check-send-proxy") in back
        servers = [line.split()[1:] for line in back.splitlines() if line.strip().startswith("server ")]
        assert servers == [[n, f"{spec.node(n).private_ip}:{svc.target_port}"] for n in lb.targets]
    assert "mode tcp" in text and f"timeout check {lb.health.timeout_s}s" in text


def test_haproxy_accepts_the_balancer_config(tmp_path: Path) -> None:
    names, spec = EnvNames("unit"), spec_of(3, env="unit")
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(balancer.render(names, spec))
    require("haproxy")
    proc = subprocess.run(["haproxy", "-c", "-f", str(cfg)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_a_single_node_env_has_no_balancer_to_render() -> None:
    with pytest.raises(host.LocalEnvError, match="no load balancer"):
        balancer.render(EnvNames("unit"), spec_of(1, env="unit"))
