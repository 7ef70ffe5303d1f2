"""Local environment lifecycle: machines, cloud firewall, DNS, ACME, host services, teardown.

Runs as root on a host with the packages of `python -m infra.local packages`. Uses its own
env name so it never touches a developer's `local` env, and clears leftovers of an earlier
run first. Nothing is deployed yet, so the tests start throwaway listeners on the machines.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from tests.e2e import envs

ENV = "e2elocal"
NODES = 2  # several nodes: private network and the private-only Redis port exist


@pytest.fixture(scope="module")
def env():
    yield envs.fresh(ENV, NODES)  # prints the cold up's time
    envs.down(ENV)


@pytest.fixture(scope="module")
def out(env):
    from infra import outputs
    return outputs.read(ENV)


def ssh(env, node_index: int, command: str, check: bool = True) -> subprocess.CompletedProcess:
    from infra.local import machines
    return subprocess.run(machines.ssh_command(env.names, env.names.node_public_ip(node_index), command),
                          capture_output=True, text=True, timeout=60, check=check)


def in_client(env, *cmd: str, timeout: float = 20) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", "exec", env.names.client_netns, *cmd], capture_output=True, text=True,
                          timeout=timeout)


def client_tcp_connects(env, ip: str, port: int) -> bool:
    probe = (f"import socket,sys\ns=socket.socket();s.settimeout(2)\n"
             f"sys.exit(0 if s.connect_ex(({ip!r},{port}))==0 else 1)")
    return in_client(env, sys.executable, "-c", probe).returncode == 0


def listen_tcp(env, node_index: int, port: int) -> None:
    """A throwaway TCP listener on the machine (all addresses), checked from the machine itself."""
    ssh(env, node_index, f"setsid -f python3 -m http.server {port} >/dev/null 2>&1 < /dev/null; "
                         f"for i in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/{port}) 2>/dev/null && exit 0; "
                         f"sleep 0.1; done; exit 1")


# ---- machines ----------------------------------------------------------------------------------

def test_outputs_describe_every_machine(env, out):
    assert [n.name for n in out.nodes] == [n.name for n in env.spec.nodes]
    assert out.livekit_url == f"wss://livekit.{ENV}.test"
    assert out.client_netns == env.names.client_netns
    from infra.outputs import path_for
    assert oct(path_for(ENV).stat().st_mode & 0o777) == "0o600"
    for node in out.nodes:
        assert node.ssh_user == "root" and os.path.exists(node.ssh_key)


def test_machines_answer_ssh_with_their_own_hostname(env, out):
    for i, node in enumerate(out.nodes):
        assert ssh(env, i, "hostname").stdout.strip() == node.name


def test_machines_boot_systemd_without_failed_units(env):
    for i in range(NODES):
        state = ssh(env, i, "systemctl is-system-running --wait", check=False).stdout.strip()
        failed = ssh(env, i, "systemctl --failed --no-legend --plain").stdout.strip()
        assert state == "running", failed


def test_machines_start_from_the_cloud_init_user_data(env):
    from infra import cloudinit
    node = env.spec.nodes[0]
    import yaml
    doc = yaml.safe_load(cloudinit.render_user_data(env.spec, node, env.public_key))
    assert ssh(env, 0, "cat /root/.ssh/authorized_keys").stdout.split("\n")[0] == doc["ssh_authorized_keys"][0]
    assert doc["fqdn"] in ssh(env, 0, "cat /etc/hosts").stdout
    marker = json.loads(ssh(env, 0, f"cat {cloudinit.MARKER}").stdout)
    assert marker["node"] == node.name and "secret" not in json.dumps(marker).lower()


def test_machines_have_distinct_identities(env):
    ids = {ssh(env, i, "cat /etc/machine-id").stdout for i in range(NODES)}
    keys = {ssh(env, i, "cat /etc/ssh/ssh_host_ed25519_key.pub").stdout for i in range(NODES)}
    assert len(ids) == NODES and len(keys) == NODES


def test_machines_reach_each_other_on_the_private_network(env):
    other = env.spec.nodes[1].private_ip
    assert ssh(env, 0, f"ping -c1 -W2 {other}", check=False).returncode == 0


# ---- cloud firewall, seen from the internet -----------------------------------------------------

def test_public_tcp_port_is_reachable_from_the_internet(env):
    port = env.spec.port("livekit-ice-tcp").start
    listen_tcp(env, 0, port)
    assert client_tcp_connects(env, env.names.node_public_ip(0), port)


@pytest.mark.parametrize("port_name", ["livekit-http", "redis", "livekit-prometheus"])
def test_private_port_is_unreachable_from_the_internet(env, port_name):
    port = env.spec.port(port_name).start
    listen_tcp(env, 0, port)  # listening, so only the cloud firewall can refuse it
    assert not client_tcp_connects(env, env.names.node_public_ip(0), port)


def test_ssh_is_closed_to_the_internet_but_open_to_the_operator(env):
    assert not client_tcp_connects(env, env.names.node_public_ip(0), 22)
    assert ssh(env, 0, "true").returncode == 0  # the host deploys from the admin CIDR


def test_public_udp_port_answers_from_the_internet(env):
    port = env.spec.port("turn-udp").start
    echo = (f"import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);s.bind(('0.0.0.0',{port}))\n"
            f"while True:\n d,a=s.recvfrom(2048);s.sendto(d,a)")
    # Started over SSH; the client's probe retries until the echo answers (a deadline, not a sleep).
    ssh(env, 0, f"setsid -f python3 -c \"{echo}\" >/dev/null 2>&1 </dev/null")
    probe = (f"import socket,sys\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);s.settimeout(1)\n"
             f"for _ in range(10):\n s.sendto(b'ping',({env.names.node_public_ip(0)!r},{port}))\n"
             f" try:\n  sys.exit(0 if s.recvfrom(64)[0]==b'ping' else 1)\n except OSError: pass\nsys.exit(1)")
    assert in_client(env, sys.executable, "-c", probe).returncode == 0


def test_machines_reach_no_host_port_but_the_env_services(env):
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("0.0.0.0", 0))
    srv.listen()
    port = srv.getsockname()[1]
    try:
        reach = ssh(env, 0, f"timeout 3 bash -c 'exec 3<>/dev/tcp/{env.names.gateway}/{port}'", check=False)
        assert reach.returncode != 0
    finally:
        srv.close()
    routes = ssh(env, 0, "ip -4 route show default").stdout.split()
    assert routes[:3] == ["default", "via", env.names.gateway]


# ---- DNS, ACME and the host's services ----------------------------------------------------------

def test_dns_names_resolve_in_the_client_namespace(env):
    from infra.local import dns
    expected = dns.records(env.names, env.spec)
    script = ("import dns.resolver,json,sys\nr=dns.resolver.Resolver()\n"
              "print(json.dumps({n: sorted(a.address for a in r.resolve(n,'A')) for n in sys.argv[1:]}))")
    res = in_client(env, sys.executable, "-c", script, *[r.name for r in env.spec.dns_records])
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout) == {r.name: sorted(expected[r.name]) for r in env.spec.dns_records}


def test_acme_directory_answers_machines_over_trusted_tls(env, out):
    directory = json.loads(ssh(env, 0, f"curl -sS --fail {out.deploy.acme_directory}").stdout)
    assert "newOrder" in directory
    with open(out.ca_bundle) as fh:
        assert "BEGIN CERTIFICATE" in fh.read()


def test_livekit_artifact_is_served_with_its_manifest_sha256(env, out):
    art = out.deploy.artifacts["livekit"]
    assert art["version"] == env.spec.config.livekit_version
    got = ssh(env, 0, f"curl -sS --fail {art['url']} | sha256sum").stdout.split()[0]
    assert got == art["sha256"]
    listing = ssh(env, 0, f"curl -sS --fail {art['url']} | tar -tzf -").stdout.split()
    assert listing == ["livekit-server"]


def test_machines_install_debian_packages_through_the_host(env):
    res = ssh(env, 0, "apt-get -q update", check=False)
    assert res.returncode == 0, res.stderr[-800:]


# ---- lifecycle ----------------------------------------------------------------------------------

def test_up_on_a_running_env_reuses_it(env):
    t0 = time.monotonic()
    ctx = envs.up(ENV, NODES)
    print(f"warm up: {time.monotonic() - t0:.1f}s")
    assert ctx.reused_machines == NODES


def test_down_leaves_nothing_behind(env):
    from infra.local import down, network
    from infra.local.host import pids_matching
    names = env.names
    envs.down(ENV)
    envs.down(ENV)  # safe to repeat
    assert not [ns for ns in network.netns_list() if ns.startswith(names.netns_prefix)]
    assert not network.links_with_prefix(names.link_prefix)
    assert subprocess.run(["nft", "list", "table", "inet", names.nft_table], capture_output=True).returncode != 0
    assert not down.mounts_of(names)
    assert not pids_matching(f"/voicestack/{ENV}/")
    assert not names.state_dir.exists() and not names.run_dir.exists()


# ---- clear errors -------------------------------------------------------------------------------

def test_up_refuses_a_network_already_used_on_the_host():
    from infra.local.names import EnvNames
    from infra.steps import StepFailed
    names = EnvNames("e2ecollide")
    squatter = "vstestsquat"  # not of the env's prefix: something else on the host
    subprocess.run(["ip", "link", "add", squatter, "type", "bridge"], check=True)
    try:
        subprocess.run(["ip", "addr", "add", f"{names.node_public_ip(5)}/24", "dev", squatter], check=True)
        with pytest.raises(StepFailed, match=f"failed to check host: .*{squatter}.*{names.public_net}"):
            envs.up(names.env, 1)
        assert not names.state_dir.exists()  # the failed, fresh env was removed
    finally:
        subprocess.run(["ip", "link", "del", squatter], check=False)


def test_up_as_non_root_says_it_needs_root():
    res = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable,
                          "-m", "infra.local", "up", "--env", "e2enoroot"], capture_output=True, text=True,
                         cwd=str(__import__("pathlib").Path(__file__).resolve().parents[2]))
    assert res.returncode == 1 and "needs root" in res.stderr, res.stderr


def test_up_refuses_an_env_name_unfit_for_interfaces():
    res = subprocess.run([sys.executable, "-m", "infra.local", "up", "--env", "Bad_Name"], capture_output=True,
                         text=True, cwd=str(__import__("pathlib").Path(__file__).resolve().parents[2]))
    assert res.returncode == 1 and "not usable for a local environment" in res.stderr
