"""`up`: create (or reuse) a local environment, as a flat list of named steps.

Every step is idempotent: on a running env it finds its piece in place and moves on, after
a half-finished run it makes what is missing. The spec comes in validated (infra.validate.load);
the outputs are written twice: as soon as the machines answer, and with the artifacts at the end.
"""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from infra import outputs, secrets, steps
from infra import spec as specmod
from infra.local import (
    acme,
    aptproxy,
    artifacts,
    background,
    balancer,
    dns,
    down,
    firewall,
    host,
    hostsettings,
    image,
    machines,
    network,
    wheelhouse,
)
from infra.local.names import EnvNames
from infra.probes import netcond

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Context:
    names: EnvNames
    spec: specmod.EnvSpec
    secrets: secrets.EnvSecrets
    log_dir: Path
    acme_directory: str | None = None
    apt_proxy: str | None = None
    pip_index: str | None = None
    artifacts: dict[str, dict[str, str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    ssh_key: Path | None = None
    public_key: str = ""
    base_image: Path | None = None
    dns_server: str = ""
    ca_bundle: Path | None = None
    acme_server_ca: Path | None = None
    boot_s: dict[str, float] = field(default_factory=dict)
    reused_machines: int = 0
    #: Progress lines inside a long step (e.g. "building caddy ... log: ...").
    say: Callable[[str], None] = lambda _m: None
    #: The cache builds started early (background_builds) and waited for by the steps that use them.
    builds: background.Background | None = None


# ---- steps -----------------------------------------------------------------------------------

def check_host(ctx: Context) -> str:
    host.require_root()
    host.require_tools(["systemd-nspawn", "debootstrap", "nft", "ip", "pebble", "apt-cacher-ng", "dnsmasq",
                        "ssh", "ssh-keygen"] + (["haproxy"] if ctx.spec.balancer is not None else []))
    network.check_collisions(ctx.names, ctx.spec)
    hostsettings.ensure_private_state(ctx.names)
    disabled = hostsettings.disable_packaged_daemons()
    ctx.ssh_key, ctx.public_key = machines.ensure_ssh_key(ctx.names)
    return (f"public {ctx.names.public_net}, internet {ctx.names.internet_net}, links {ctx.names.link_prefix}*"
            + (f"; disabled the host's packaged {', '.join(disabled)}" if disabled else ""))


def base_image(ctx: Context) -> str:
    ctx.base_image, built = image.ensure(ctx.log_dir / "debootstrap.log")
    return f"{'built' if built else 'cached'} {ctx.base_image}"


def networks(ctx: Context) -> str:
    network.ensure_host(ctx.names, ctx.spec)
    for node in ctx.spec.nodes:
        network.ensure_machine_links(ctx.names, ctx.spec, node.index)
    model = ("nat: eth0 holds " + str(ctx.names.interface_net) + ", the host maps the public addresses 1:1"
             if network.uses_nat(ctx.spec) else "direct: eth0 holds the public address")
    return (f"{len(ctx.spec.nodes)} machine namespace(s) ({model}), client netns {ctx.names.client_netns} "
            f"(+ {', '.join(network.condition_namespaces(ctx.names)[c] for c in netcond.FILTERED)})")


def cloud_firewall(ctx: Context) -> str:
    firewall.apply(ctx.names, ctx.spec)
    extra = "".join([", 1:1 NAT" if network.uses_nat(ctx.spec) else "",
                     ", UDP from the internet dropped (blockUdp)" if ctx.spec.udp_blocked else ""])
    return f"table inet {ctx.names.nft_table}: {len(ctx.spec.cloud_firewall)} allow rules, default deny{extra}"


def load_balancer(ctx: Context) -> str:
    if ctx.spec.balancer is None:
        return "none: one node, DNS points at it"
    return balancer.ensure(ctx.names, ctx.spec, ctx.log_dir / "haproxy.log")


def dns_server(ctx: Context) -> str:
    ctx.dns_server = dns.start(ctx.names, ctx.spec)
    network.write_client_resolver(ctx.names, ctx.dns_server)
    return f"{ctx.dns_server}:53 serves {ctx.spec.config.domain} ({len(ctx.spec.dns_records)} records)"


def acme_ca(ctx: Context) -> str:
    ctx.acme_directory, ctx.ca_bundle = acme.start(ctx.names, ctx.spec.config.domain)
    ctx.acme_server_ca = acme.server_ca(ctx.names, ctx.spec.config.domain)
    return ctx.acme_directory


def apt_proxy(ctx: Context) -> str:
    ctx.apt_proxy = aptproxy.start(ctx.names, aptproxy.host_mirrors())
    return ctx.apt_proxy


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


def _builds(ctx: Context) -> background.Background:
    """The cache builds that depend on nothing else of the environment (started together)."""
    if ctx.builds is None:
        cfg = ctx.spec.config

        def release(rel: artifacts.GoRelease, version: str) -> Callable[[], tuple[Path, str, bool]]:
            return lambda: artifacts.release_tarball(rel, version, ctx.log_dir / f"go-install-{rel.name}.log",
                                                     say=ctx.say)

        ctx.builds = background.Background({
            "livekit": release(artifacts.LIVEKIT, cfg.livekit_version),
            "caddy": release(artifacts.CADDY, cfg.caddy_version),
            "wheelhouse": lambda: wheelhouse.build(wheelhouse.read_checked_lock(REPO), ctx.log_dir / "pip-wheel.log",
                                                   say=ctx.say),
        }, say=ctx.say)
    return ctx.builds


def background_builds(ctx: Context) -> str:
    return _builds(ctx).start() + " (they overlap the image and the machines)"


def _artifact(ctx: Context, release: artifacts.GoRelease, version: str) -> str:
    """Build (or find) one pinned release, serve it, and record its override for the deploy."""
    url = artifacts.serve(ctx.names)
    tarball, digest, built = _builds(ctx).result(release.name)
    ctx.artifacts[release.name] = {"version": version, "url": artifacts.publish(ctx.names, tarball, "artifacts"),
                                   release.algorithm: digest}
    return (f"{release.name} {version} {'built' if built else 'cached'}, {release.algorithm} {digest[:12]}…, "
            f"served at {url}")


def artifact_server(ctx: Context) -> str:
    return _artifact(ctx, artifacts.LIVEKIT, ctx.spec.config.livekit_version)


def caddy_artifact(ctx: Context) -> str:
    return _artifact(ctx, artifacts.CADDY, ctx.spec.config.caddy_version)


def python_wheels(ctx: Context) -> str:
    wheel_dir, built = _builds(ctx).result("wheelhouse")  # the hashed pins every node installs
    index, _find_links = wheelhouse.publish(ctx.names, wheel_dir)
    ctx.pip_index = index
    return f"{'built' if built else 'cached'} {wheel_dir} ({len(list(wheel_dir.glob('*.whl')))} wheels), index {index}"


# Order: what the deploy needs first comes first; outputs are written as soon as machines
# answer and again at the end with the artifact URLs.
STEPS: list[tuple[str, Callable[[Context], str]]] = [
    ("check host", check_host),
    ("background builds", background_builds),
    ("base image", base_image),
    ("networks", networks),
    ("cloud firewall", cloud_firewall),
    ("load balancer", load_balancer),
    ("dns", dns_server),
    ("acme", acme_ca),
    ("apt proxy", apt_proxy),
    ("machines", machines_up),
    ("outputs", write_outputs),
    ("artifacts", artifact_server),
    ("caddy artifact", caddy_artifact),
    ("wheelhouse", python_wheels),
    ("outputs (final)", write_outputs),
]


def make_outputs(ctx: Context) -> outputs.Outputs:
    names = ctx.names
    nodes = [outputs.NodeOut(name=n.name, public_ip=names.node_public_ip(n.index), private_ip=n.private_ip,
                             ssh_user="root", ssh_key=str(ctx.ssh_key), roles=sorted(r.value for r in n.roles),
                             ssh_port=22, network=n.network,
                             interface_ip=network.interface_ip(names, ctx.spec, n.index))
             for n in ctx.spec.nodes]
    deploy = outputs.DeployInputs(acme_directory=ctx.acme_directory, artifacts=ctx.artifacts, apt_proxy=ctx.apt_proxy,
                                  pip_index=ctx.pip_index, known_hosts=str(names.known_hosts),
                                  ssh_strict_host_key_checking="yes")
    local = outputs.LocalInfo(operator_ip=names.operator_ip, gateway=names.gateway,
                              public_network=str(names.public_net), internet_network=str(names.internet_net),
                              netns={n.name: names.node_netns(n.name) for n in ctx.spec.nodes},
                              condition_netns=network.condition_namespaces(names),
                              interface_network=str(names.interface_net) if network.uses_nat(ctx.spec) else None)
    # What dnsmasq answers (infra/local/dns.py): every spec record at its nodes' public addresses
    # (a balanced one at the balancer's).
    published = {name: ips for name, ips in dns.records(names, ctx.spec).items()
                 if name in {r.name for r in ctx.spec.dns_records}}
    return outputs.assemble(ctx.spec, nodes, api_secret=ctx.secrets.api_secret, turn_secret=ctx.secrets.turn_secret,
                            token_key=ctx.secrets.token_key, call_password=ctx.secrets.call_password,
                            dns=published, deploy=deploy,
                            ca_bundle=str(ctx.ca_bundle) if ctx.ca_bundle else None,
                            dns_server=ctx.dns_server or None, client_netns=names.client_netns, local=local,
                            balancer_ip=balancer.public_ip(names) if ctx.spec.balancer is not None else None)


def up(spec: specmod.EnvSpec, progress: steps.Progress | None = None, retain: bool = False) -> Context:
    """Bring the local environment of `spec` up (or in line with it); outputs.json is the last step."""
    host.require_root()
    progress = progress or steps.Progress()
    names = EnvNames(spec.env)
    existed = names.state_dir.exists()
    ctx = Context(names=names, spec=spec, secrets=secrets.load_or_create(spec.config), log_dir=names.state_dir / "logs",
                  say=progress.child().line)

    def cleanup(_label: str) -> None:
        if not retain and not existed:
            progress.line("removing the half-made environment (pass --retain to keep it for debugging)")
            down.down(spec.env, progress=steps.Progress.quiet())

    try:
        steps.run(progress, [(label, (lambda fn=fn: fn(ctx))) for label, fn in STEPS], errors=(host.LocalEnvError,),
                  on_failure=cleanup)
    finally:
        if ctx.builds is not None:
            ctx.builds.close()
    for note in ctx.notes:
        progress.line(f"note: {note}")
    return ctx
