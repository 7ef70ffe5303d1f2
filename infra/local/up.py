"""`up`: create (or reuse) a local environment, as a flat list of named steps.

Every step is idempotent: on a running env it finds its piece in place and moves on, after
a half-finished run it makes what is missing. The last step writes `.stack/<env>/outputs.json`.
"""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from infra import config, outputs, secrets, spec as specmod
from infra.local import (acme, aptproxy, artifacts, dns, down, firewall, host, image, machines, network,
                         wheelhouse)
from infra.local.names import EnvNames

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Context:
    names: EnvNames
    spec: specmod.EnvSpec
    secrets: secrets.EnvSecrets
    log_dir: Path
    extra: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    ssh_key: Path | None = None
    public_key: str = ""
    base_image: Path | None = None
    dns_server: str = ""
    ca_bundle: Path | None = None
    acme_server_ca: Path | None = None
    boot_s: dict[str, float] = field(default_factory=dict)
    reused_machines: int = 0


def build_spec(env: str, node_count: int) -> specmod.EnvSpec:
    names = EnvNames(env)
    cfg = config.local_defaults(env, node_count, admin_cidrs=(f"{names.operator_ip}/32",))
    return specmod.derive(cfg)


# ---- steps -----------------------------------------------------------------------------------

def check_host(ctx: Context) -> str:
    host.require_root()
    host.require_tools(["systemd-nspawn", "debootstrap", "nft", "ip", "pebble", "apt-cacher-ng", "dnsmasq",
                        "ssh", "ssh-keygen"])
    network.check_collisions(ctx.names)
    ctx.names.run_dir.mkdir(parents=True, exist_ok=True)
    ctx.names.state_dir.mkdir(parents=True, exist_ok=True)
    ctx.ssh_key, ctx.public_key = machines.ensure_ssh_key(ctx.names)
    return f"public {ctx.names.public_net}, internet {ctx.names.internet_net}, links {ctx.names.link_prefix}*"


def base_image(ctx: Context) -> str:
    ctx.base_image, built = image.ensure(ctx.log_dir / "debootstrap.log")
    return f"{'built' if built else 'cached'} {ctx.base_image}"


def networks(ctx: Context) -> str:
    network.ensure_host(ctx.names, ctx.spec)
    for node in ctx.spec.nodes:
        network.ensure_machine_links(ctx.names, ctx.spec, node.index)
    return f"{len(ctx.spec.nodes)} machine namespace(s), client netns {ctx.names.client_netns}"


def cloud_firewall(ctx: Context) -> str:
    firewall.apply(ctx.names, ctx.spec)
    return f"table inet {ctx.names.nft_table}: {len(ctx.spec.cloud_firewall)} allow rules, default deny"


def dns_server(ctx: Context) -> str:
    ctx.dns_server = dns.start(ctx.names, ctx.spec)
    network.write_client_resolver(ctx.names, ctx.dns_server)
    return f"{ctx.dns_server}:53 serves {ctx.spec.config.domain} ({len(ctx.spec.dns_records)} records)"


def acme_ca(ctx: Context) -> str:
    url, ctx.ca_bundle = acme.start(ctx.names, ctx.spec.config.domain)
    ctx.acme_server_ca = acme.server_ca(ctx.names, ctx.spec.config.domain)
    ctx.extra.update(acme_directory=url, acme_server_ca=str(ctx.acme_server_ca))
    return url


def apt_proxy(ctx: Context) -> str:
    url = aptproxy.start(ctx.names, aptproxy.host_mirrors())
    ctx.extra["apt_proxy"] = url
    return url


def machines_up(ctx: Context) -> str:
    created = booted = 0
    for stale in machines.stale_nodes(ctx.names, ctx.spec):
        machines.remove(ctx.names, stale)
        network.remove_machine(ctx.names, stale, ctx.spec)
        ctx.notes.append(f"removed machine {stale}: no longer in the spec")
    pids, started = {}, {}
    for node in ctx.spec.nodes:
        if machines.ensure_rootfs(ctx.names, node, ctx.base_image):
            created += 1
    _each_node(ctx, lambda node: machines.first_boot_setup(ctx.names, ctx.spec, node, ctx.public_key,
                                                           ctx.dns_server, ctx.acme_server_ca))
    machines.write_known_hosts(ctx.names, ctx.spec)
    for node in ctx.spec.nodes:
        pid = machines.running_pid(ctx.names, node)
        started[node.name] = time.monotonic()
        if pid is None:
            pids[node.name] = machines.boot(ctx.names, node)
            booted += 1
        else:
            pids[node.name] = pid
    for node in ctx.spec.nodes:
        ctx.boot_s[node.name] = machines.wait_ssh(ctx.names, node, pids[node.name], started=started[node.name])
    ctx.reused_machines = len(ctx.spec.nodes) - booted
    if ctx.ca_bundle is not None:
        _each_node(ctx, lambda node: machines.trust_acme_root(ctx.names, node, ctx.ca_bundle))
    slowest = max(ctx.boot_s.values())
    return (f"{len(ctx.spec.nodes)} machine(s): {created} new root(s), {booted} booted, "
            f"{ctx.reused_machines} already running; SSH answered {slowest:.1f}s after start")


def _each_node(ctx: Context, fn: Callable[[specmod.Node], Any]) -> list[Any]:
    """Run `fn` for every node at once (independent, mostly waiting on subprocesses)."""
    with ThreadPoolExecutor(max_workers=max(1, len(ctx.spec.nodes))) as pool:
        return list(pool.map(fn, ctx.spec.nodes))


def write_outputs(ctx: Context) -> str:
    path = outputs.write(make_outputs(ctx))
    return str(path)


def artifact_server(ctx: Context) -> str:
    url = artifacts.serve(ctx.names)
    version = ctx.spec.config.livekit_version
    tarball, sha, built = artifacts.livekit_tarball(version, ctx.log_dir / "go-install.log")
    ctx.extra["artifacts"] = {"livekit": {"version": version, "url": artifacts.publish(ctx.names, tarball, "artifacts"),
                                          "sha256": sha}}
    ctx.extra["artifact_server"] = url
    return f"livekit {version} {'built' if built else 'cached'}, sha256 {sha[:12]}…, served at {url}"


def python_wheels(ctx: Context) -> str:
    req = wheelhouse.requirements_file(REPO)
    if not req.exists():
        ctx.notes.append(f"no {req.relative_to(REPO)} yet: wheelhouse skipped")
        return f"skipped: {req} does not exist yet"
    wheel_dir, built = wheelhouse.build(req, ctx.log_dir / "pip-wheel.log")
    index, find_links = wheelhouse.publish(ctx.names, wheel_dir)
    ctx.extra.update(pip_index=index, wheelhouse_url=find_links)
    return f"{'built' if built else 'cached'} {wheel_dir} ({len(list(wheel_dir.glob('*.whl')))} wheels), index {index}"


# Order: what the deploy needs first comes first; outputs are written as soon as machines
# answer and again at the end with the artifact URLs.
STEPS: list[tuple[str, Callable[[Context], str]]] = [
    ("check host", check_host),
    ("base image", base_image),
    ("networks", networks),
    ("cloud firewall", cloud_firewall),
    ("dns", dns_server),
    ("acme", acme_ca),
    ("apt proxy", apt_proxy),
    ("machines", machines_up),
    ("outputs", write_outputs),
    ("artifacts", artifact_server),
    ("wheelhouse", python_wheels),
    ("outputs (final)", write_outputs),
]


def make_outputs(ctx: Context) -> outputs.Outputs:
    cfg, names = ctx.spec.config, ctx.names
    nodes = [outputs.NodeOut(name=n.name, public_ip=names.node_public_ip(n.index), private_ip=n.private_ip,
                             ssh_user="root", ssh_key=str(ctx.ssh_key), roles=sorted(r.value for r in n.roles),
                             ssh_port=22)
             for n in ctx.spec.nodes]
    extra = dict(ctx.extra)
    extra.update(operator_ip=names.operator_ip, known_hosts=str(names.known_hosts), provider="local",
                 netns={n.name: names.node_netns(n.name) for n in ctx.spec.nodes},
                 public_network=str(names.public_net), internet_network=str(names.internet_net),
                 gateway=names.gateway, client_ip=names.client_ip, nft_table=f"inet {names.nft_table}",
                 notes=list(ctx.notes),
                 config=config.local_raw(cfg.env, len(ctx.spec.nodes), cfg.admin_cidrs))
    return outputs.Outputs(
        env=cfg.env,
        livekit_url=f"wss://{cfg.livekit_host}",
        api_key=cfg.api_key,
        api_secret=ctx.secrets.api_secret,
        turn_domain=cfg.turn_host,
        token_endpoint=f"https://{cfg.livekit_host}/api/token",
        nodes=nodes,
        livekit_domain=cfg.livekit_host,
        turn_secret=ctx.secrets.turn_secret,
        token_key=ctx.secrets.token_key,
        config_file="",
        ca_bundle=str(ctx.ca_bundle) if ctx.ca_bundle else None,
        dns_server=ctx.dns_server or None,
        client_netns=names.client_netns,
        extra=extra,
    )


def up(env: str, node_count: int = 1, retain: bool = False, print_fn: Callable[[str], None] = print) -> Context:
    host.require_root()
    names = EnvNames(env)
    spec = build_spec(env, node_count)
    existed = names.state_dir.exists()
    ctx = Context(names=names, spec=spec, secrets=secrets.load_or_create(spec.config),
                  log_dir=names.state_dir / "logs")
    start = time.monotonic()
    for label, step in STEPS:
        t0 = time.monotonic()
        try:
            detail = step(ctx)
        except Exception as exc:
            print_fn(f"[{time.monotonic() - start:6.1f}s] {label}: FAILED after {time.monotonic() - t0:.1f}s")
            if not retain and not existed:
                print_fn("removing the half-made environment (pass --retain to keep it for debugging)")
                down.down(env, print_fn=lambda _m: None)
            if isinstance(exc, host.LocalEnvError):
                raise host.LocalEnvError(f"failed to bring up env {env!r} at step '{label}': {exc}") from exc
            raise
        print_fn(f"[{time.monotonic() - start:6.1f}s] {label}: {detail} ({time.monotonic() - t0:.1f}s)")
    for note in ctx.notes:
        print_fn(f"note: {note}")
    return ctx
