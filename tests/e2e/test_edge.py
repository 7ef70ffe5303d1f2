"""One deployed node behind the emulated 1:1 NAT, from the emulated internet: the voice page in real
Chromium, its basic auth, the real client address reaching the token service, per-address limits
on 443, the networking model (`network: nat`, as on AWS/GCP or a DigitalOcean reserved IP) and
the unchanged verify suite, then a provider that blocks UDP.

One environment (`e2eedge`, one node, `network: nat`: eth0 holds only a private address, the host
maps the public one), one `up`, one deploy. Before the deploy the node gets
Debian's caddy package, as a node deployed before the pinned release has it: the deploy must
replace it and keep its storage. Every request goes through the cloud firewall, nginx's SNI
router, the PROXY header and Caddy, as a user's would.

Second client address: the test adds two addresses to the client namespace's eth0 (and
removes them at the end), so that "address A floods, address B is served" is two real sources.
Figures (page load -> greeting, bundle size, connection-limit timings) are printed, not asserted.
The last two tests switch the same machines to `blockUdp: true` (only the emulated cloud changes,
the seed's OVH row): preflight must report UDP blocked with the provider advice while the UDP
checks of the verify suite see it blocked and the spoken round trip still passes over TCP/TURN.
"""
from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest

from infra import outputs as outputsmod
from infra.local import machines
from tests.e2e import envs, network

ENV = "e2eedge"
ROOT = Path(__file__).resolve().parents[2]
SCREENSHOT = Path(os.environ.get("VOICESTACK_CALL_SCREENSHOT") or ROOT / "build" / "edge-call.png")
STORAGE_MARKER = "/var/lib/caddy/.local/share/caddy/voicestack-e2e-kept"
NAT = {"network": "nat"}

pytestmark = pytest.mark.e2e


def ssh(ctx: Any, command: str, data: bytes | None = None, timeout: float = 180) -> bytes:
    proc = subprocess.run(machines.ssh_command(ctx.names, ctx.names.node_public_ip(0), command), input=data,
                          capture_output=True, timeout=timeout)
    assert proc.returncode == 0, f"on the node: {command}\n{proc.stderr.decode(errors='replace')[-2000:]}"
    return proc.stdout


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, outputsmod.Outputs]]:
    envs.require_host()
    envs.down(ENV)  # leftovers of an earlier, interrupted run
    # The default settings (private page, 100 connections per address) behind the 1:1 NAT.
    config = envs.write_config(tmp_path_factory.mktemp(ENV) / f"Pulumi.{ENV}.yaml", NAT)
    ctx = envs.up(ENV, 1, config=config)
    ctx.config_path = config
    try:
        # A node deployed before the pinned release: Debian's caddy with something in its storage.
        ssh(ctx, "DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends caddy >/dev/null && "
                 f"install -d -o caddy -g caddy {Path(STORAGE_MARKER).parent} && "
                 f"echo kept > {STORAGE_MARKER} && /usr/bin/caddy version", timeout=600)
        result = envs.deploy(ENV)
        print(f"deploy: rc={result.returncode}\n{result.stdout[-4000:]}")
        assert result.returncode == 0, result.stderr[-4000:]
        yield ctx, outputsmod.read(ENV)
    finally:
        envs.down(ENV)


@pytest.fixture(scope="module")
def sources(env: tuple[Any, outputsmod.Outputs]) -> Iterator[tuple[str, str]]:
    """Two more client addresses on the internet side (A floods, B is the innocent one)."""
    ctx, out = env
    net = ipaddress.ip_network(out.local.internet_network)
    added = [str(net.network_address + 21), str(net.network_address + 22)]
    for addr in added:
        subprocess.run(["ip", "-n", out.client_netns, "addr", "add", f"{addr}/{net.prefixlen}", "dev", "eth0"],
                       check=True, capture_output=True)
    try:
        yield added[0], added[1]
    finally:
        for addr in added:
            subprocess.run(["ip", "-n", out.client_netns, "addr", "del", f"{addr}/{net.prefixlen}", "dev", "eth0"],
                           capture_output=True)


def client(out: outputsmod.Outputs, command: str, **args: Any) -> Any:
    """tests/e2e/edge_client.py inside the client namespace; its JSON result."""
    argv = ["ip", "netns", "exec", out.client_netns, sys.executable, "-m", "tests.e2e.edge_client", command,
            json.dumps({"host": out.livekit_domain, "cafile": out.ca_bundle, **args})]
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def basic(user: str, password: str) -> dict[str, str]:
    import base64
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


# ---- the node --------------------------------------------------------------------------------

def test_the_pinned_caddy_replaced_debians_and_kept_its_storage(env) -> None:
    ctx, _out = env
    facts = ssh(ctx, "dpkg-query -W -f='${db:Status-Status}' caddy 2>/dev/null || echo absent; echo; "
                     "/usr/local/bin/caddy version; "
                     "/usr/local/bin/caddy list-modules | grep -c '^caddy.listeners.proxy_protocol$'; "
                     "systemctl show caddy -p FragmentPath --value; systemctl is-enabled caddy; "
                     "readlink /etc/systemd/system/multi-user.target.wants/caddy.service; "
                     "ps -o user= -p $(systemctl show -p MainPID --value caddy); "
                     "grep -c . /proc/$(systemctl show -p MainPID --value caddy)/status >/dev/null && "
                     "grep CapEff /proc/$(systemctl show -p MainPID --value caddy)/status | cut -f2; "
                     f"cat {STORAGE_MARKER}; stat -c '%a %U %G' /etc/caddy/caddy.env; "
                     "ls /var/lib/caddy/.local/share/caddy/certificates/*/").decode().split("\n")
    status, version, modules, fragment, enabled, wants, user, cap_eff, marker, env_file, *certs = facts
    assert status in ("config-files", "not-installed", "absent"), status   # removed, not running
    assert version.startswith("v2.11.4"), version
    assert modules == "1", "the deployed caddy has no proxy_protocol listener wrapper"
    # Started at boot from the project's unit, not the removed package's.
    assert (fragment, enabled, wants, user) == ("/etc/systemd/system/caddy.service", "enabled",
                                                "/etc/systemd/system/caddy.service", "caddy")
    assert int(cap_eff, 16) == 1 << 10, f"caddy runs with capabilities {cap_eff} (want only CAP_NET_BIND_SERVICE)"
    assert marker == "kept" and env_file == "600 root root"
    assert any(ctx.spec.config.livekit_host in c for c in certs), certs


def test_nginx_runs_with_the_descriptor_limit_it_was_given(env) -> None:
    from deploy.tasks import edge
    ctx, _out = env
    limits = ssh(ctx, "awk '/^Max open files/ {print $5}' /proc/1/limits; "
                      "for p in $(pgrep -f '^nginx: worker'); do grep 'Max open files' /proc/$p/limits; done; "
                      "grep -c 'setrlimit' /var/log/nginx/error.log || true").decode().splitlines()
    # As many as the node allows, up to the project's 65536 (PID 1 of a local machine has 20000).
    want = min(edge.NOFILE, int(limits[0]))
    workers = [line.split() for line in limits if line.startswith("Max open files")]
    assert workers and all((int(w[3]), int(w[4])) == (want, want) for w in workers), limits
    assert limits[-1] == "0", "nginx could not set its descriptor limit (see /var/log/nginx/error.log)"


# ---- the voice page in Chromium ----------------------------------------------------------------

def speech(ctx: Any, path: str, args: str, data: bytes) -> bytes:
    """The node's own speech server (loopback there), over SSH: no second model load on this host."""
    return ssh(ctx, f"curl -sS -f --max-time 170 {args} http://127.0.0.1:8000/v1{path}", data=data, timeout=200)


def test_a_person_calls_the_agent_from_the_page_in_chromium(env) -> None:
    from tests.browser import voice_page  # Playwright: only this test needs it

    ctx, out = env
    cfg = out.spec.config
    wav = speech(ctx, "/audio/speech", "-H 'Content-Type: application/json' --data-binary @-",
                 json.dumps({"input": voice_page.PHRASE, "response_format": "wav"}).encode())
    # The phrase is what the agent will hear (and the first transcription warms the node's STT).
    check = speech(ctx, "/audio/transcriptions", "-F 'file=@-;filename=phrase.wav' -F response_format=text", wav)
    assert "light" in check.decode().lower(), check
    phrase = Path(ctx.names.state_dir / "phrase.wav")
    # The fake microphone plays the file once from the moment the page opens it (Connect): 20 s of
    # silence first, so the agent has joined and finished its greeting even on a busy machine.
    phrase.write_bytes(voice_page.padded_wav(wav, lead_s=20.0, tail_s=3.0))
    target = voice_page.Target(url=out.spec.call_url, ca_bundle=out.ca_bundle, netns=out.client_netns,
                               username=cfg.call_user, password=out.call_password)
    with voice_page.chromium(target, audio_file=phrase) as browser:
        page, console = voice_page.open_page(browser, target)
        try:
            # Deadlines, not durations: generous for a shared 2-core machine.
            call = voice_page.converse(page, timeout_s=150)
            SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SCREENSHOT), full_page=True)
            diag = voice_page.diagnostics(page)
            voice_page.hang_up(page)
        except Exception:
            sys.stderr.write("--- browser console\n" + "\n".join(c[:400] for c in console[-60:]) + "\n")
            sys.stderr.write(f"--- page\n{voice_page.diagnostics(page)}\n--- node: voicestack-agent\n")
            sys.stderr.write(ssh(ctx, "journalctl -u voicestack-agent -n 60 --no-pager").decode(errors="replace"))
            raise
    spoken = speech(ctx, "/audio/transcriptions", "-F 'file=@-;filename=agent.webm' -F response_format=text",
                    call.recorded).decode().strip()
    build = json.loads(ssh(ctx, "cat /srv/voicestack/web/current/BUILD.json"))["files"]
    print(f"bundle: app.js {build['app.js']['bytes']} B ({build['app.js']['gzip_bytes']} B gzip), "
          f"app.css {build['app.css']['bytes']} B, index.html {build['index.html']['bytes']} B")
    voice_page.check_call(call, spoken, diag, SCREENSHOT)
    # The page works under its Content-Security-Policy: the browser reported no violation.
    assert not [line for line in console if "Content Security Policy" in line], console


def test_the_page_asks_for_its_password_and_refuses_a_wrong_one(env) -> None:
    _ctx, out = env
    user, good = out.spec.config.call_user, out.call_password
    client_ip = str(ipaddress.ip_network(out.local.internet_network).network_address + 2)
    calls = [
        {"source": client_ip, "path": "/call/"},
        {"source": client_ip, "path": "/call/", "headers": basic(user, good + "x")},
        {"source": client_ip, "path": "/call/", "headers": basic("someone", good)},
        {"source": client_ip, "method": "POST", "path": "/call/token", "body": {}, "headers": basic(user, "wrong")},
        {"source": client_ip, "path": "/call/", "headers": basic(user, good)},
        {"source": client_ip, "path": "/call/app.js", "headers": basic(user, good)},
        {"source": client_ip, "method": "POST", "path": "/call/token", "body": {"participant_name": "Ada"},
         "headers": basic(user, good)},
        {"source": client_ip, "path": "/call"},
        {"source": client_ip, "path": "/"},
    ]
    anon, wrong_pw, wrong_user, wrong_token, page, script, token, bare, root = client(out, "requests", calls=calls)
    for r in (anon, wrong_pw, wrong_user, wrong_token):
        assert r["status"] == 401 and r["www_authenticate"].startswith("Basic"), r
    assert page["status"] == 200 and "Voice agent" in page["body"] and page["content_type"].startswith("text/html")
    assert "connect-src 'self' wss://" + out.livekit_domain in page["csp"], page["csp"]
    assert script["status"] == 200 and script["content_type"].startswith("text/javascript")
    # Caddy swapped the browser's credentials for the bearer key: a standard-format token came back.
    assert token["status"] == 201, token
    assert json.loads(token["body"])["server_url"] == out.livekit_url, token
    assert (bare["status"], bare["location"]) == (308, "/call/")
    assert (root["status"], root["body"].strip()) == (200, "OK")   # / stays LiveKit's


# ---- the real client address -------------------------------------------------------------------

def test_a_wrong_key_flood_from_one_address_limits_that_address_only(env, sources) -> None:
    _ctx, out = env
    a, b = sources
    key = {"Authorization": f"Bearer {out.token_key}"}
    wrong = {"Authorization": "Bearer " + "w" * 40, "X-Forwarded-For": b}   # a forged XFF changes nothing
    body = {"identity": "flood-test", "name": "Flood"}
    flood = client(out, "requests", calls=[{"source": a, "method": "POST", "path": "/api/token", "body": body,
                                            "headers": wrong, "repeat": 8}])
    statuses = [r["status"] for r in flood]
    print(f"\nwrong-key flood from {a}: {statuses}")
    assert statuses[:5] == [401] * 5 and statuses[-1] == 429, statuses
    assert all(r["retry_after"] for r in flood if r["status"] == 429)
    b_wrong, b_right, a_right = client(out, "requests", calls=[
        {"source": b, "method": "POST", "path": "/api/token", "body": body, "headers": {"Authorization": "Bearer x"}},
        {"source": b, "method": "POST", "path": "/api/token", "body": {"identity": "b-user", "name": "B"},
         "headers": key},
        {"source": a, "method": "POST", "path": "/api/token", "body": {"identity": "a-user", "name": "A"},
         "headers": key},
    ])
    # B's failed-key bucket is its own: the token service sees B's address, not 127.0.0.1 and not
    # what A wrote into X-Forwarded-For.
    assert b_wrong["status"] == 401, b_wrong
    assert b_right["status"] == 200 and json.loads(b_right["body"])["wsUrl"] == out.livekit_url, b_right
    # The key is compared first: A's own flood of wrong keys does not lock A's right key out.
    assert a_right["status"] == 200, a_right


def test_one_address_cannot_hold_more_connections_than_the_limit(env, sources) -> None:
    ctx, out = env
    a, b = sources
    limit = out.spec.config.edge_conns_per_address
    got = client(out, "connections", source=a, other=b, count=limit)
    print(f"\nconnection limit {limit}: {got}")
    assert got["held"] == limit, got
    assert got["extra_error"], f"connection {limit + 1} from {a} was accepted: {got}"
    assert got["other_body"] == "OK", got
    assert got["again_body"] == "OK", f"{a} could not connect again after closing its connections: {got}"
    log = ssh(ctx, "grep 'limiting connections by zone' /var/log/nginx/error.log | tail -n 3").decode()
    # nginx saw the real client address (not a proxy's) when it refused the extra connection.
    assert f"client: {a}" in log, log


# ---- the networking model: behind the 1:1 NAT ---------------------------------------------------

def test_nat_01_the_machine_holds_only_a_private_address_the_public_one_is_mapped(env) -> None:
    _ctx, out = env
    node = out.nodes[0]
    assert node.network == "nat" and node.interface_ip != node.public_ip
    eth0 = network.ssh(ENV, node.name, "ip -4 -o addr show dev eth0")
    assert f" {node.interface_ip}/" in eth0 and node.public_ip not in eth0
    assert node.public_ip not in network.ssh(ENV, node.name, "ip -4 -o addr show")


def test_nat_02_the_deploy_binds_the_interface_and_advertises_the_public_address(env) -> None:
    _ctx, out = env
    node = out.nodes[0]
    lines = network.rendered_lines(ENV, node.name)
    print(json.dumps({"model": "nat", "node": node.name, "public_ip": node.public_ip,
                      "interface_ip": node.interface_ip, **lines}, indent=2))
    lk = lines["livekit.yaml"]
    assert f"node_ip: {node.public_ip}" in lk and "use_external_ip: false" in lk and f"- {node.interface_ip}/32" in lk
    turn = lines["turnserver.conf"]
    for line in (f"listening-ip={node.interface_ip}", f"relay-ip={node.interface_ip}",
                 f"external-ip={node.public_ip}/{node.interface_ip}", f"allowed-peer-ip={node.public_ip}"):
        assert line in turn, f"{line} missing from turnserver.conf: {turn}"
    # coturn really serves (it would loop forever on a bind of the public address, looking active).
    sockets = network.ssh(ENV, node.name, "ss -Hlntu")
    assert f"{node.interface_ip}:3478" in sockets and f"{node.interface_ip}:5349" in sockets


def test_nat_03_the_verify_suite_passes_unchanged_and_the_client_sees_only_the_public_address(env) -> None:
    _ctx, out = env
    proc = network.verify(ENV)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    seen = json.loads(out.paths.verify_results.read_text())["round_trips"]
    print("ICE the client saw (nat, one node):\n" + json.dumps(seen, indent=2))
    assert sorted(seen) == ["normal", "tcp443-only", "udp-blocked"], seen
    for condition, trip in seen.items():
        assert trip["ice_remote"] and all(c.startswith(f"{out.nodes[0].public_ip}:") for c in trip["ice_remote"]), \
            (condition, trip)


# ---- a provider that blocks UDP (the same machines) ----------------------------------------------

def test_nat_04_a_provider_that_blocks_udp_preflight_says_so(env) -> None:
    ctx, out = env
    envs.up(ENV, 1, config=envs.write_config(ctx.config_path, {**NAT, "blockUdp": True}))
    assert outputsmod.read(ENV).spec.udp_blocked
    proc = subprocess.run([sys.executable, "-m", "infra.preflight", "--env", ENV], cwd=ROOT, capture_output=True,
                          text=True, timeout=180)
    print(proc.stdout)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    ice = out.spec.port("livekit-ice-udp")
    assert f"udp/{ice.start}: BLOCKED" in proc.stdout and f"udp/{ice.end}: BLOCKED" in proc.stdout
    assert "verdict: UDP BLOCKED" in proc.stdout and "OVH" in proc.stdout and "blockUdp" in proc.stdout


def test_nat_05_with_udp_blocked_voice_still_works_over_tcp_and_turn_tls(env) -> None:
    """The UDP checks assert the block (they can still fail); TURN/TLS, ICE/TCP and voice must work."""
    assert outputsmod.read(ENV).spec.udp_blocked
    # The other two client conditions add nothing here: the provider already drops all UDP.
    proc = network.verify(ENV, "net_02", "turn_", "(voice_01 and normal)")
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    tally = proc.stdout.strip().splitlines()[-1]
    assert " passed" in tally and "skipped" not in tally and "failed" not in tally, tally
    seen = json.loads(outputsmod.EnvPaths(ENV).verify_results.read_text())["round_trips"]
    print("ICE the client saw (nat, UDP blocked by the provider):\n" + json.dumps(seen, indent=2))
    # No UDP reaches the node from outside: ICE over TCP, or a candidate of a TURN server (relay, or
    # peer-reflexive learned through the relay) reached over TCP/TLS.
    selected = seen["normal"]["ice_selected"].values()
    assert selected and all(s["remote"]["protocol"] == "tcp" or s["local"].get("relay_protocol") in ("tcp", "tls")
                            for s in selected), seen["normal"]
