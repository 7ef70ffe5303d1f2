"""The env's DNS: dnsmasq on the host's gateway address, authoritative for `<env>.test` only.

It answers `spec.dns_records` (names -> nodes' public addresses, the LiveKit name of a cluster
-> the load balancer's) plus `acme.<domain>` (the
local ACME server); every other name gets no answer, since nothing is forwarded anywhere.
Records live in a hosts file that dnsmasq re-reads on SIGHUP, so an `up` with other nodes
updates them without a restart.
"""
from __future__ import annotations

import os
import signal

from infra.local import balancer, host
from infra.local.names import DNS_PORT, EnvNames
from infra.spec import EnvSpec


def records(names: EnvNames, spec: EnvSpec) -> dict[str, list[str]]:
    ip_of = {n.name: names.node_public_ip(n.index) for n in spec.nodes}
    lb = balancer.public_ip(names) if spec.balancer is not None else None
    out = {name: ips for name, ips in spec.dns_addresses(ip_of, lb).items()
           if next(r for r in spec.dns_records if r.name == name).type == "A"}
    out[f"acme.{spec.config.domain}"] = [names.gateway]
    return out


def start(names: EnvNames, spec: EnvSpec) -> str:
    hosts_file = names.run_dir / "dns.hosts"
    names.run_dir.mkdir(parents=True, exist_ok=True)
    text = "".join(f"{ip} {name}\n" for name, ips in sorted(records(names, spec).items()) for ip in ips)
    changed = not hosts_file.exists() or hosts_file.read_text() != text
    hosts_file.write_text(text)
    pid = host.running("dnsmasq", names.run_dir)
    if pid:
        if changed:
            os.kill(pid, signal.SIGHUP)
        return names.gateway
    domain = spec.config.domain
    cmd = [host.which("dnsmasq") or "dnsmasq", "--keep-in-foreground", "--no-resolv", "--no-hosts",
           "--no-poll", "--conf-file=/dev/null", f"--addn-hosts={hosts_file}", f"--listen-address={names.gateway}",
           "--bind-interfaces", f"--port={DNS_PORT}", f"--local=/{domain}/", f"--domain={domain}",
           "--user=root", "--group=root", "--log-facility=-", "--local-ttl=30",
           f"--pid-file={names.run_dir}/dnsmasq-own.pid"]
    host.start_daemon("dnsmasq", cmd, names.run_dir, names.run_dir / "dnsmasq.log")
    host.wait_until(f"dnsmasq on {names.gateway}:{DNS_PORT} (log: {names.run_dir}/dnsmasq.log)",
                    lambda: resolves(names.gateway, spec.dns_records[0].name), 10)
    return names.gateway


def resolves(server: str, name: str) -> bool:
    import dns.exception
    import dns.resolver
    r = dns.resolver.Resolver(configure=False)
    r.nameservers = [server]
    r.lifetime = 1.0
    try:
        return bool(r.resolve(name, "A"))
    except (dns.exception.DNSException, OSError):
        return False
