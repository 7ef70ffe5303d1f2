"""The emulated cloud network: a public bridge, a private bridge, the internet side.

    client netns ──veth──╮
    client-udp-blocked ──┼══ internet bridge ══ host (router + cloud services) ══bridge══ machines
    client-tcp443-only ──╯                                                     (public /24)
    machines ══private bridge══ machines          (several nodes only; the host is not on it)

The client namespaces stand on the emulated internet: `client` for every probe, and one per
filtered network condition (infra/probes/netcond.py, its filter applied for good) so that round
trips under different conditions can run at once.

The host is the machines' only gateway. Its address on the public bridge (`gateway`) serves
DNS, ACME, apt and artifacts; its address on the internet side (`operator_ip`) is where its
own SSH and the ACME validations come from, so they cross the cloud firewall like any
outside traffic would.

Networking models (spec node.network): `direct` puts each machine's public address on its
eth0. `nat` puts only a private address there (names.interface_net) and the host is the
cloud's 1:1 NAT router (infra/local/firewall.py renders the DNAT/SNAT): the public addresses
exist on no interface, as with AWS elastic IPs or GCP external IPs.
"""
from __future__ import annotations

import ipaddress
import json
import shutil
from pathlib import Path

from infra.local import host, hostsettings
from infra.local.names import EnvNames
from infra.probes import netcond
from infra.spec import EnvSpec


def _ip(*args: str, check: bool = True, what: str = "") -> str:
    return host.run(["ip", *args], check=check, what=what or f"run ip {' '.join(args)}").stdout


def link_exists(name: str, netns: str | None = None) -> bool:
    cmd = (["-n", netns] if netns else []) + ["link", "show", "dev", name]
    return host.run(["ip", *cmd], check=False).returncode == 0


def netns_list() -> list[str]:
    out = host.run(["ip", "-j", "netns", "list"], check=False).stdout.strip()
    return [n["name"] for n in json.loads(out)] if out else []


def links_with_prefix(prefix: str) -> list[str]:
    out = host.run(["ip", "-j", "link", "show"], check=False).stdout.strip()
    return [link["ifname"] for link in (json.loads(out) if out else []) if link["ifname"].startswith(prefix)]


def uses_nat(spec: EnvSpec) -> bool:
    return any(n.network == "nat" for n in spec.nodes)


def interface_ip(names: EnvNames, spec: EnvSpec, index: int) -> str:
    """The address on machine `index`'s eth0: its public one (direct), or the private one it maps to (nat)."""
    return names.node_interface_ip(index) if spec.nodes[index].network == "nat" else names.node_public_ip(index)


def check_collisions(names: EnvNames, spec: EnvSpec | None = None) -> None:
    """Fail clearly when the env's networks overlap something on the host that is not ours."""
    ours = (names.public_net, names.internet_net) + ((names.interface_net,) if spec and uses_nat(spec) else ())
    problems = []
    addrs = json.loads(host.run(["ip", "-j", "-4", "addr", "show"]).stdout or "[]")
    for link in addrs:
        if link["ifname"].startswith(names.link_prefix):
            continue
        for a in link.get("addr_info", []):
            net = ipaddress.ip_interface(f"{a['local']}/{a['prefixlen']}").network
            for mine in ours:
                if net.overlaps(mine):
                    problems.append(f"{link['ifname']} has {a['local']}/{a['prefixlen']}, inside {mine}")
    routes = json.loads(host.run(["ip", "-j", "-4", "route", "show"]).stdout or "[]")
    for r in routes:
        if r.get("dst") in (None, "default") or str(r.get("dev", "")).startswith(names.link_prefix):
            continue
        net = ipaddress.ip_network(r["dst"], strict=False)
        for mine in ours:
            if net.overlaps(mine):
                problems.append(f"route {r['dst']} dev {r.get('dev')} overlaps {mine}")
    if problems:
        raise host.LocalEnvError(
            f"env {names.env!r} wants {', '.join(str(n) for n in ours)} (machines, internet side"
            f"{', behind the NAT' if len(ours) > 2 else ''}), "
            f"but the host already uses them: {'; '.join(problems)}. If that is another voicestack env, "
            f"pick another env name (networks are chosen from a hash of the name) or take it down first")


def _ensure_bridge(name: str) -> None:
    kind = json.loads(_ip("-j", "-d", "link", "show", "dev", name, check=False) or "[{}]")[0] \
        .get("linkinfo", {}).get("info_kind") if link_exists(name) else None
    if kind not in (None, "bridge"):
        _ip("link", "del", name)  # an env made before the internet side was a bridge: its veth
    if not link_exists(name):
        _ip("link", "add", name, "type", "bridge", "forward_delay", "0", "stp_state", "0",
            what=f"create bridge {name}")
    _ip("link", "set", name, "up")


def _ensure_netns(ns: str) -> None:
    if ns not in netns_list():
        _ip("netns", "add", ns, what=f"create network namespace {ns}")
    _ip("-n", ns, "link", "set", "lo", "up")


def _ensure_veth(host_end: str, ns: str, inner: str) -> None:
    """A veth whose host end is `host_end` and whose other end is `inner` inside `ns`."""
    if link_exists(host_end) and not link_exists(inner, ns):
        _ip("link", "del", host_end)  # half-made by an interrupted run
    if not link_exists(host_end):
        if link_exists(inner, ns):
            _ip("-n", ns, "link", "del", inner)
        _ip("link", "add", host_end, "type", "veth", "peer", "name", inner, "netns", ns,
            what=f"create veth {host_end} <-> {ns}:{inner}")
    _ip("link", "set", host_end, "up")
    _ip("-n", ns, "link", "set", inner, "up")


def _ensure_addr(cidr: str, dev: str, netns: str | None = None) -> None:
    pre = ["-n", netns] if netns else []
    have = _ip(*pre, "-j", "addr", "show", "dev", dev)
    ip = cidr.split("/")[0]
    if not any(a.get("local") == ip for link in json.loads(have or "[]") for a in link.get("addr_info", [])):
        _ip(*pre, "addr", "add", cidr, "dev", dev, what=f"add {cidr} to {netns + ':' if netns else ''}{dev}")


def _set_only_addr(cidr: str, dev: str, netns: str | None = None) -> None:
    """`dev` holds exactly this IPv4 address (another one is left from a run with another model)."""
    pre = ["-n", netns] if netns else []
    have = json.loads(_ip(*pre, "-j", "-4", "addr", "show", "dev", dev) or "[]")
    for link in have:
        for a in link.get("addr_info", []):
            if f"{a['local']}/{a['prefixlen']}" != cidr:
                _ip(*pre, "addr", "del", f"{a['local']}/{a['prefixlen']}", "dev", dev)
    _ensure_addr(cidr, dev, netns)


def _drop_addr(cidr: str, dev: str) -> None:
    _ip("addr", "del", cidr, "dev", dev, check=False)


def _sysctl(key: str, value: str) -> None:
    Path("/proc/sys/" + key.replace(".", "/")).write_text(value)


def ensure_host(names: EnvNames, spec: EnvSpec) -> None:
    """Bridges, the client namespace (the internet) and the host's routes."""
    _ensure_bridge(names.public_bridge)
    _ensure_addr(f"{names.gateway}/32", names.public_bridge)
    # nat: the router's leg on the machines' private network; the host services stay on `gateway`,
    # which the machines reach through it (like a cloud's metadata/DNS addresses).
    nat_gateway = f"{names.interface_gateway}/{names.interface_net.prefixlen}"
    if uses_nat(spec):
        _ensure_addr(nat_gateway, names.public_bridge)
    else:
        _drop_addr(nat_gateway, names.public_bridge)
    # The internet side: a bridge holding the host's internet address, the client namespaces on it.
    _ensure_bridge(names.client_link)
    _ensure_addr(f"{names.operator_ip}/{names.internet_net.prefixlen}", names.client_link)
    for index, (netns, address) in enumerate(client_namespaces(names).items()):
        _ensure_netns(netns)
        _ensure_veth(names.condition_link(index), netns, "eth0")
        _ip("link", "set", names.condition_link(index), "master", names.client_link)
        _sysctl(f"net.ipv6.conf.{names.condition_link(index)}.disable_ipv6", "1")
        _ensure_addr(f"{address}/{names.internet_net.prefixlen}", "eth0", netns)
        _ip("-n", netns, "route", "replace", "default", "via", names.operator_ip)
    for condition in netcond.FILTERED:
        netcond.apply(names.condition_netns(condition), condition)
    # Host-originated traffic to the machines leaves from the internet-side address.
    _ip("route", "replace", str(names.public_net), "dev", names.public_bridge, "src", names.operator_ip,
        what=f"route {names.public_net} to {names.public_bridge}")
    if spec.multi_node:
        _ensure_bridge(names.private_bridge)
    hostsettings.enable_forwarding(names)  # recorded, so the last `down` restores it
    for dev in (names.public_bridge, names.client_link):
        _sysctl(f"net.ipv6.conf.{dev}.disable_ipv6", "1")


def client_namespaces(names: EnvNames) -> dict[str, str]:
    """Every client namespace on the internet side -> its address: `client`, then one per filtered
    network condition."""
    found = {names.client_netns: names.client_ip}
    for index, condition in enumerate(netcond.FILTERED, start=1):
        found[names.condition_netns(condition)] = names.condition_ip(index)
    return found


def condition_namespaces(names: EnvNames) -> dict[str, str]:
    """Network condition -> the client namespace that has it ("normal": the plain client one)."""
    return {"normal": names.client_netns, **{c: names.condition_netns(c) for c in netcond.FILTERED}}


def write_client_resolver(names: EnvNames, dns_server: str) -> Path:
    """The environment's DNS for every client namespace; returns the plain client's resolv.conf."""
    for netns in client_namespaces(names):
        etc = names.netns_etc_of(netns)
        etc.mkdir(parents=True, exist_ok=True)
        (etc / "resolv.conf").write_text(f"# voicestack env {names.env}: the environment's DNS\n"
                                         f"nameserver {dns_server}\n")
    return names.netns_etc / "resolv.conf"


def ensure_machine_links(names: EnvNames, spec: EnvSpec, index: int) -> str:
    """The machine's namespace with eth0 on the public bridge (and eth1 on the private one).

    eth0 holds the public address (direct) or only the private one behind the NAT (nat)."""
    node = spec.nodes[index]
    ns = names.node_netns(node.name)
    _ensure_netns(ns)
    pub = names.node_public_link(index)
    _ensure_veth(pub, ns, "eth0")
    _ip("link", "set", pub, "master", names.public_bridge)
    # Hairpin NAT towards a machine's own public address: with br_netfilter loaded (bridge-nf-call-
    # iptables, as Docker hosts have it) the host DNATs such a frame on the bridge itself and must
    # send it back out of the port it came in on, which a bridge port only does in hairpin mode.
    _ip("link", "set", "dev", pub, "type", "bridge_slave", "hairpin", "on" if node.network == "nat" else "off")
    if node.network == "nat":
        _set_only_addr(f"{names.node_interface_ip(index)}/{names.interface_net.prefixlen}", "eth0", ns)
        _ip("-n", ns, "route", "replace", "default", "via", names.interface_gateway)
    else:
        _set_only_addr(f"{names.node_public_ip(index)}/{names.public_net.prefixlen}", "eth0", ns)
        _ip("-n", ns, "route", "replace", "default", "via", names.gateway)
    if spec.multi_node and node.private_ip:
        prv = names.node_private_link(index)
        _ensure_veth(prv, ns, "eth1")
        _ip("link", "set", prv, "master", names.private_bridge)
        prefix = ipaddress.ip_network(spec.config.private_network).prefixlen
        _ensure_addr(f"{node.private_ip}/{prefix}", "eth1", ns)
    return ns


def ensure_namespace_on(ns: str, host_end: str, bridge: str, inner: str, cidr: str, gateway: str | None = None) -> None:
    """`ns` with `inner` on `bridge`, holding exactly `cidr` (a cloud appliance such as the load
    balancer, infra/local/balancer.py); `gateway`: its default route."""
    _ensure_netns(ns)
    _ensure_veth(host_end, ns, inner)
    _ip("link", "set", host_end, "master", bridge)
    _sysctl(f"net.ipv6.conf.{host_end}.disable_ipv6", "1")
    _set_only_addr(cidr, inner, ns)
    if gateway:
        _ip("-n", ns, "route", "replace", "default", "via", gateway)


def remove_machine(names: EnvNames, node_name: str, spec: EnvSpec) -> None:
    """The namespace and links of a machine that left the spec (its index is unknown now)."""
    ns = names.node_netns(node_name)
    if ns in netns_list():
        for pid in host.run(["ip", "netns", "pids", ns], check=False).stdout.split():
            host.stop_pids([int(pid)], grace_s=3)
        host.run(["ip", "netns", "del", ns], check=False)
    keep = {f(n.index) for n in spec.nodes for f in (names.node_public_link, names.node_private_link)}
    for link in links_with_prefix(names.link_prefix):
        if link[len(names.link_prefix):][:1] in ("p", "v") and link[len(names.link_prefix) + 1:].isdigit() \
                and link not in keep:
            host.run(["ip", "link", "del", link], check=False)


def remove(names: EnvNames) -> list[str]:
    """Delete the env's namespaces and links (found by prefix). Returns what was removed."""
    removed = []
    for ns in netns_list():
        if ns.startswith(names.netns_prefix):
            for pid in host.run(["ip", "netns", "pids", ns], check=False).stdout.split():
                host.stop_pids([int(pid)], grace_s=3)
            host.run(["ip", "netns", "del", ns], check=False)
            removed.append(f"netns {ns}")
    for link in links_with_prefix(names.link_prefix):
        if host.run(["ip", "link", "del", link], check=False).returncode == 0:
            removed.append(f"link {link}")
    for netns in client_namespaces(names):
        etc = names.netns_etc_of(netns)
        if etc.exists():
            shutil.rmtree(etc, ignore_errors=True)
            removed.append(str(etc))
    return removed
