"""The front door as rendered: Caddy (pinned release, its unit, the voice page, basic auth, PROXY
protocol behind the SNI router) and nginx's stream edge (PROXY lines, limits, descriptors).

The real Caddy checks what the deploy renders (`caddy validate`, the binary the local
environment builds: `python -m infra.local caddy-bin`), so a Caddyfile that Caddy would refuse
fails here, not on a node.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import bcrypt
import pytest

from deploy.inventory import DeployInputError, node_vars
from deploy.render import render
from deploy.tasks import caddy, edge, web
from infra.spec import CALL_PATH, DRAIN_FLAG
from tests.unit.support import CALL_PASSWORD, PUBLIC, TOKEN_KEY, outputs_for, spec_of

ROOT = Path(__file__).resolve().parents[2]


def node(nodes: int = 1, name: str = "node-1", **changes):
    spec = spec_of(nodes, **changes)
    return spec, node_vars(outputs_for(spec))[name]


def caddyfile(nodes: int = 1, name: str = "node-1", **changes) -> str:
    _spec, vs = node(nodes, name, **changes)
    return render("caddy", "Caddyfile.j2", caddy.caddy_vars(vs))


def block(text: str, opening: str, start: int = 0) -> str:
    """The brace-balanced block that starts at the first `opening` (ending in '{') from `start`."""
    start = text.index(opening, start)
    depth, i = 0, start
    while True:
        ch = text[i]
        depth += ch == "{"
        depth -= ch == "}"
        if ch == "}" and depth == 0:
            return text[start:i + 1]
        i += 1


# ---- Caddy: PROXY protocol and the client address ----------------------------------------------

def test_behind_the_sni_router_caddy_reads_the_client_address_from_nginx_only() -> None:
    spec, vs = node()
    cf = caddyfile()
    https = spec.port("caddy-https")
    server = block(cf, f"servers 127.0.0.1:{https.start} {{")
    wrappers = block(server, "listener_wrappers {")
    # The wrapper comes before tls: after it, it would read TLS records as a PROXY header.
    assert wrappers.index("proxy_protocol {") < wrappers.index("\t\t\ttls\n")
    allow = re.search(r"allow (.+)\n", wrappers).group(1).split()
    assert allow == ["127.0.0.1/32", "::1/128", f"{PUBLIC[0]}/32"]
    assert "fallback_policy reject" in wrappers and "timeout 5s" in wrappers
    assert "protocols h1 h2" in server


def test_with_several_nodes_the_private_address_may_send_proxy_headers_too() -> None:
    spec, vs = node(3, "node-2")
    wrappers = block(caddyfile(3, "node-2"), "listener_wrappers {")
    assert f"{vs.private_ip}/32" in wrappers and f"{PUBLIC[1]}/32" in wrappers and f"{PUBLIC[0]}/32" not in wrappers


def test_without_the_sni_split_caddy_takes_443_itself_and_expects_no_proxy_header() -> None:
    cf = caddyfile(turnTlsPort=5349)
    assert "https_port 443" in cf and "proxy_protocol" not in cf and "listener_wrappers" not in cf
    assert "\tbind " not in cf
    assert "protocols h1 h2" in block(cf, "servers {")


# ---- Caddy: the voice page ---------------------------------------------------------------------

def test_private_page_is_behind_basic_auth_and_its_token_route_gets_the_key_from_caddy() -> None:
    cf = caddyfile()
    site = block(cf, "livekit.example.test {")
    token = block(site, f"handle {CALL_PATH}token {{")
    page = block(site, f"handle_path {CALL_PATH}* {{")
    for route in (token, page):
        assert "basic_auth bcrypt" in route
        assert "{env.VOICESTACK_CALL_USER} {env.VOICESTACK_CALL_HASH}" in route
    assert 'header_up Authorization "Bearer {env.VOICESTACK_TOKEN_KEY}"' in token
    assert "reverse_proxy 127.0.0.1:8090" in token
    assert f"root * {web.CURRENT}" in page and "file_server" in page
    # / and LiveKit's own paths (/rtc, /twirp, /agent) stay LiveKit's: only the catch-all proxies them.
    catch_all = site[site.rindex("\thandle {\n"):]
    assert catch_all.startswith("\thandle {\n\t\t# WebSocket upgrades (LiveKit signalling) pass through "
                                "reverse_proxy as they are.\n\t\treverse_proxy 127.0.0.1:7880 {")
    # No idle connection to LiveKit: the rolling deploy's drain counts the open ones as clients.
    assert re.search(r"transport http \{\n\t+keepalive off\n\t+\}\n\t\t\}\n\t\}\n\}\s*$", catch_all), catch_all
    assert re.search(r"handle /call \{\n(\t\t#.*\n)*\t\tredir \* /call/ 308\n", site)
    # No secret in the 0644 Caddyfile.
    assert TOKEN_KEY not in cf and CALL_PASSWORD not in cf and "$2b$" not in cf


def test_page_sends_the_content_security_policy_the_page_was_built_for() -> None:
    page = block(caddyfile(), f"handle_path {CALL_PATH}* {{")
    csp = re.search(r'Content-Security-Policy "([^"]+)"', page).group(1)
    directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
    assert directives["default-src"] == "'self'"
    assert directives["connect-src"] == "'self' wss://livekit.example.test"
    assert directives["media-src"] == "'self' blob:" and directives["frame-ancestors"] == "'none'"
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp


def test_public_demo_mode_has_no_password_and_no_key() -> None:
    _spec, vs = node(callPublic=True)
    cf = caddyfile(callPublic=True)
    site = block(cf, "livekit.example.test {")
    token = block(site, f"handle {CALL_PATH}token {{")
    assert "basic_auth" not in site
    # Whatever the browser sends is not passed on: public mode never widens to key rights.
    assert "header_up -Authorization" in token and "VOICESTACK_TOKEN_KEY" not in cf
    assert caddy.caddy_env(vs) == {}


def test_private_env_file_holds_the_key_user_and_a_bcrypt_hash_of_the_password() -> None:
    spec, vs = node()
    env = caddy.caddy_env(vs)
    assert env["VOICESTACK_TOKEN_KEY"] == TOKEN_KEY and env["VOICESTACK_CALL_USER"] == "voicestack"
    hashed = env["VOICESTACK_CALL_HASH"]
    assert hashed.startswith(f"$2b${caddy.BCRYPT_COST}$") and CALL_PASSWORD not in hashed
    assert bcrypt.checkpw(CALL_PASSWORD.encode(), hashed.encode())
    assert not bcrypt.checkpw(b"wrong password", hashed.encode())
    # Stable for an unchanged password (no restart per deploy), different per environment.
    assert caddy.caddy_env(vs)["VOICESTACK_CALL_HASH"] == hashed
    assert caddy.password_hash(CALL_PASSWORD, "other") != hashed
    text = render("caddy", "caddy.env.j2", {"env": env, "env_name": spec.env})
    assert f"VOICESTACK_CALL_HASH={hashed}\n" in text
    # Every value survives systemd's EnvironmentFile= and caddy's --envfile as written.
    assert all(re.fullmatch(r"[A-Za-z0-9_./$-]+", value) for value in env.values())


def test_call_user_is_configurable_and_checked() -> None:
    _spec, vs = node(callUser="ops.team")
    assert caddy.caddy_env(vs)["VOICESTACK_CALL_USER"] == "ops.team"
    from infra.config import ConfigError, parse
    with pytest.raises(ConfigError, match="callUser"):
        parse({"provider": "local", "domain": "x.test", "callUser": "a:b"})


def test_the_private_page_needs_its_password_in_the_outputs() -> None:
    import dataclasses
    spec = spec_of()
    out = dataclasses.replace(outputs_for(spec), call_password="")
    with pytest.raises(DeployInputError, match="call_password"):
        caddy.caddy_env(node_vars(out)["node-1"])


# ---- Caddy: its unit ---------------------------------------------------------------------------

def test_caddy_unit_runs_the_pinned_binary_as_caddy_sandboxed_with_one_capability() -> None:
    _spec, vs = node()
    unit = render("caddy", "caddy.service.j2", caddy.unit_vars(vs, "2.11.4"))
    for line in ("User=caddy", "Group=caddy", "Type=notify", f"EnvironmentFile={caddy.ENV_FILE}",
                 f"ExecStart={caddy.BINARY} run --config {caddy.CADDYFILE} --adapter caddyfile",
                 "ProtectSystem=strict", "NoNewPrivileges=yes", "ReadWritePaths=/var/lib/caddy",
                 "XDG_DATA_HOME=/var/lib/caddy/.local/share", "MemoryDenyWriteExecute=yes",
                 # The restart policy every unit of the stack shares (branch heal uses the same).
                 "Restart=always", "RestartSec=2", "StartLimitIntervalSec=0", "After=network-online.target"):
        assert f"{line}\n" in unit or f"{line} " in unit, line
    # The hardening resets both capability sets; the unit then grants exactly one.
    caps = re.findall(r"^(CapabilityBoundingSet|AmbientCapabilities)=(.*)$", unit, re.M)
    assert caps == [("CapabilityBoundingSet", ""), ("AmbientCapabilities", ""),
                    ("CapabilityBoundingSet", "CAP_NET_BIND_SERVICE"), ("AmbientCapabilities", "CAP_NET_BIND_SERVICE")]
    # --environ would print the token key into the journal.
    assert "--environ" not in re.search(r"^ExecStart=.*$", unit, re.M).group(0)
    assert "StartLimitIntervalSec=0" in unit.split("[Service]")[0]


def test_storage_stays_where_the_certificate_lifecycle_reads_it() -> None:
    from deploy.tasks import certificates
    assert certificates.STORAGE == f"{caddy.HOME}/.local/share/caddy"


# ---- nginx: PROXY protocol, limits, descriptors ------------------------------------------------

def nginx_conf(**changes) -> str:
    _spec, vs = node(**changes)
    return render("edge", "nginx.conf.j2", edge.edge_vars(vs))


def test_nginx_sends_proxy_protocol_to_caddy_and_takes_it_off_for_coturn() -> None:
    spec, _vs = node()
    conf = nginx_conf()
    servers = [block(conf, m.group(0), m.start()) for m in re.finditer(r"\tserver \{", conf)]
    front, hop = servers
    assert f"listen {spec.port('https').start};" in front and "proxy_protocol on;" in front
    assert "proxy_pass $voicestack_upstream;" in front
    assert f"listen unix:{edge.TURN_SOCKET} proxy_protocol;" in hop and "proxy_protocol on" not in hop
    assert "proxy_pass turn_tls;" in hop
    assert f"upstream turn_hop {{\n\t\tserver unix:{edge.TURN_SOCKET};" in conf
    assert f"upstream caddy_https {{\n\t\tserver 127.0.0.1:{spec.port('caddy-https').start};" in conf


def test_nginx_limits_connections_per_address_and_idle_time() -> None:
    front = block(nginx_conf(), "\tserver {")
    assert "limit_conn_zone $binary_remote_addr zone=voicestack_per_address:10m;" in nginx_conf()
    assert "limit_conn voicestack_per_address 100;" in front
    assert "preread_timeout 5s;" in front and "proxy_timeout 10m;" in front and "proxy_connect_timeout 5s;" in front
    assert "limit_conn voicestack_per_address 12;" in nginx_conf(edgeConnsPerAddress=12)


def test_nginx_descriptors_fit_the_units_limit() -> None:
    _spec, vs = node()
    v = edge.edge_vars(vs)
    conf = render("edge", "nginx.conf.j2", v)
    dropin = render("edge", "nginx-limits.conf.j2", v)
    unit_limit = int(re.search(r"^LimitNOFILE=(\d+)$", dropin, re.M).group(1))
    rlimit = int(re.search(r"worker_rlimit_nofile (\d+);", conf).group(1))
    connections = int(re.search(r"worker_connections (\d+);", conf).group(1))
    assert rlimit <= unit_limit and rlimit >= 65536
    # A TURN connection holds four descriptors in one worker (client, hop in, hop out, coturn).
    assert connections * 4 <= rlimit
    assert f"ExecStartPre=-/bin/rm -f {edge.TURN_SOCKET}" in dropin


def test_nginx_asks_for_no_more_descriptors_than_the_node_allows() -> None:
    _spec, vs = node()
    v = edge.edge_vars(vs, hard_limit=20000)    # a local machine: PID 1's hard limit
    conf = render("edge", "nginx.conf.j2", v)
    assert "worker_rlimit_nofile 20000;" in conf and "worker_connections 5000;" in conf
    assert "LimitNOFILE=20000\n" in render("edge", "nginx-limits.conf.j2", v)
    assert edge.edge_vars(vs, hard_limit=1048576)["nofile"] == edge.NOFILE == edge.edge_vars(vs)["nofile"]


@pytest.mark.parametrize("value", [0, 3, 100001], ids=["zero", "too-few", "too-many"])
def test_the_connection_limit_is_range_checked(value: int) -> None:
    from infra.config import ConfigError, parse
    with pytest.raises(ConfigError, match="edgeConnsPerAddress"):
        parse({"provider": "local", "domain": "x.test", "edgeConnsPerAddress": value})


# ---- the real Caddy ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def caddy_bin() -> str:
    path = os.environ.get("CADDY_BIN", "")
    if not path:
        proc = subprocess.run([sys.executable, "-m", "infra.local", "caddy-bin"], cwd=ROOT, capture_output=True,
                              text=True, timeout=1800)
        if proc.returncode != 0:
            pytest.fail(f"failed to get caddy: python -m infra.local caddy-bin: {proc.stderr.strip()[-2000:]}")
        path = proc.stdout.strip().splitlines()[-1]
    return path


def test_the_pinned_caddy_has_the_proxy_protocol_listener_wrapper(caddy_bin: str) -> None:
    version = subprocess.run([caddy_bin, "version"], capture_output=True, text=True, check=True).stdout
    assert version.startswith("v2.11.4"), version
    modules = subprocess.run([caddy_bin, "list-modules"], capture_output=True, text=True, check=True).stdout
    assert "caddy.listeners.proxy_protocol" in modules.split()
    assert "http.authentication.providers.http_basic" in modules.split()


VARIANTS = {"sni-split-private": {}, "sni-split-public": {"callPublic": True}, "own-443": {"turnTlsPort": 5349},
            "recording": {"recording": "rooms"}, "cluster": {"nodes": 3},
            "cluster-own-443": {"nodes": 3, "turnTlsPort": 5349}}


@pytest.mark.parametrize("changes", list(VARIANTS.values()), ids=list(VARIANTS))
def test_caddy_validates_the_rendered_caddyfile(caddy_bin: str, tmp_path: Path, changes: dict) -> None:
    spec, vs = node(**changes)
    (tmp_path / "Caddyfile").write_text(render("caddy", "Caddyfile.j2", caddy.caddy_vars(vs)))
    (tmp_path / "caddy.env").write_text(render("caddy", "caddy.env.j2",
                                               {"env": caddy.caddy_env(vs), "env_name": spec.env}))
    # validate provisions every module (the basic_auth hash from the env file included); HOME keeps
    # its storage out of the real one.
    proc = subprocess.run([caddy_bin, "validate", "--adapter", "caddyfile", "--config", str(tmp_path / "Caddyfile"),
                           "--envfile", str(tmp_path / "caddy.env")], capture_output=True, text=True,
                          env={"PATH": os.environ["PATH"], "HOME": str(tmp_path), "XDG_DATA_HOME": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    adapted = subprocess.run([caddy_bin, "adapt", "--adapter", "caddyfile", "--config", str(tmp_path / "Caddyfile")],
                             capture_output=True, text=True, env={"PATH": os.environ["PATH"], "HOME": str(tmp_path)})
    assert adapted.returncode == 0, adapted.stderr
    import json
    servers = json.loads(adapted.stdout)["apps"]["http"]["servers"]
    https = next(s for s in servers.values() if any(a.endswith(f":{spec.port('caddy-https' if spec.sni_split else 'https').start}")
                                                    for a in s["listen"]))
    wrappers = [w["wrapper"] for w in https.get("listener_wrappers", [])]
    assert wrappers == (["proxy_protocol", "tls"] if spec.sni_split else []), wrappers
    # /call redirects to /call/ (a redir whose target Caddy took for a matcher would not).
    site = json.dumps(https["routes"])
    assert '"Location": ["/call/"]' in site and '"status_code": 308' in site, site[:2000]
    if spec.balancer is not None:
        # The balancer's ports: PROXY v2 from the private network only, TLS only where it is HTTPS.
        lb = caddy.balancer_vars(vs)
        for listener in lb["listeners"]:
            server = next(s for s in servers.values() if listener["address"] in s["listen"])
            wrappers = server["listener_wrappers"]
            assert [w["wrapper"] for w in wrappers] == (["proxy_protocol", "tls"] if listener["tls"]
                                                        else ["proxy_protocol"])
            assert wrappers[0]["allow"] == [spec.config.private_network]
            assert wrappers[0]["fallback_policy"].lower() == "reject"
        # DigitalOcean's health checks carry a PROXY header: the health port must read one.
        health = next(s for s in servers.values() if f"{vs.private_ip}:{spec.balancer.health.port}" in s["listen"])
        assert [w["wrapper"] for w in health["listener_wrappers"]] == ["proxy_protocol"]


# ---- the load balancer's side ------------------------------------------------------------------

def test_a_single_node_has_no_balancer_ports() -> None:
    _spec, vs = node()
    assert caddy.balancer_vars(vs) is None and edge.balancer_listen(vs) is None
    conf = nginx_conf()
    assert "set_real_ip_from" not in conf and len(re.findall(r"listen [^;]* proxy_protocol;", conf)) == 1  # the TURN hop


def test_caddy_answers_the_health_check_on_the_private_address_and_fails_it_while_draining() -> None:
    spec, vs = node(3, "node-2")
    text = caddyfile(3, "node-2")
    health = block(text, f"http://:{spec.balancer.health.port} {{")
    assert f"bind {vs.private_ip}" in health
    drain_dir, drain_file = DRAIN_FLAG.rsplit("/", 1)
    assert f"root {drain_dir}" in health and f"try_files /{drain_file}" in health
    assert 'respond "draining" 503' in block(health, "handle @draining {")
    # Otherwise LiveKit's own answer: a LiveKit that is down (502) takes the node out too.
    assert f"reverse_proxy {caddy.caddy_vars(vs)['livekit_upstream']}" in block(
        health, f"handle {spec.balancer.health.path} {{")
    http = block(text, f"http://{spec.config.livekit_host}:{spec.port('lb-http').start} {{")
    assert f"bind {vs.private_ip}" in http and "redir https://{host}{uri} 308" in http
    # node-2 is not the certificate node: validations through the balancer go on to it.
    assert f"reverse_proxy {vs.certificate_relay}" in http
    assert vs.private_ip in caddy.caddy_lifecycle(vs).wait_addresses


def test_nginx_takes_the_balancers_proxy_header_from_the_private_network_only() -> None:
    spec, vs = node(3, "node-3")
    conf = render("edge", "nginx.conf.j2", edge.edge_vars(vs))
    servers = [block(conf, m.group(0), m.start()) for m in re.finditer(r"\tserver \{", conf)]
    lb = next(s for s in servers if f"listen {vs.private_ip}:{spec.port('lb-https').start} proxy_protocol;" in s)
    assert f"set_real_ip_from {spec.config.private_network};" in lb
    # The same route as 443: per-client limits, SNI to Caddy or coturn, PROXY v1 on to Caddy.
    assert "limit_conn voicestack_per_address" in lb and "ssl_preread on;" in lb and "proxy_protocol on;" in lb
    assert "proxy_pass $voicestack_upstream;" in lb
    assert "set_real_ip_from" not in servers[0], "direct clients on 443 send no PROXY header to believe"


# ---- make up's summary -------------------------------------------------------------------------

@pytest.mark.parametrize("public", [False, True], ids=["private", "public"])
def test_make_up_prints_the_page_url_and_where_its_credentials_are(capsys: pytest.CaptureFixture[str],
                                                                 public: bool) -> None:
    from infra.steps import Progress
    from infra.up import summary
    out = outputs_for(spec_of(env="unit-summary", callPublic=public))
    summary(out, Progress())
    printed = capsys.readouterr().out
    line = next(line for line in printed.splitlines() if "voice page:" in line)
    assert "https://livekit.example.test/call/" in line
    # No secret value reaches the terminal: not the password, not a token, not the API secret.
    assert CALL_PASSWORD not in printed and out.api_secret not in printed and "eyJ" not in printed
    if public:
        assert "public demo mode" in line
    else:
        assert "user voicestack" in line and "pulumi stack output --show-secrets call_password" in line
