"""`make preflight ENV=<env>`: does UDP reach the media ports from outside, before we deploy?

The operator guide's `nc -u` advice made automatic: a UDP echo runs on each node (over SSH) on the TURN port and
on ICE ports (both ends and the middle of the range, or the mux port), and the operator's side
(in local: the client namespace) sends a nonce to each. Ports already bound by a running
stack are skipped and left to `make verify`.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import paramiko

from infra import probes
from infra.outputs import NodeOut, Outputs, OutputsError, read
from infra.spec import EnvSpec

ADVICE = ("UDP is blocked on the way. Open the ports in the cloud firewall (make up does it on Hetzner and "
          "DigitalOcean) and the host firewall. Some providers block or throttle UDP (OVH often does; Hetzner, "
          "DigitalOcean and Contabo work) — without UDP only signalling works, no audio.")

ECHO = r"""
import socket, sys, time, select
socks = []
for p in map(int, sys.argv[1:]):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.bind(("0.0.0.0", p))
    except OSError:
        print("busy", p, flush=True); continue
    socks.append(s)
print("ready", flush=True)
end = time.time() + 30
while socks and time.time() < end:
    for s in select.select(socks, [], [], 0.5)[0]:
        data, addr = s.recvfrom(64)
        s.sendto(data, addr)
"""


def sample_ports(spec: EnvSpec) -> list[int]:
    ice = spec.port("livekit-ice-udp")
    ports = {spec.port("turn-udp").start, ice.start, ice.end, (ice.start + ice.end) // 2}
    return sorted(ports)


def _ssh(out: Outputs, node: NodeOut) -> paramiko.SSHClient:
    client = paramiko.SSHClient()
    known = Path(out.deploy.known_hosts or out.paths.known_hosts)
    if known.is_file():
        client.load_host_keys(str(known))
    # Before the first deploy a cloud server's key is not known yet: trust it on first use, as the
    # deploy does (accept-new), and keep it for the deploy to pin.
    client.set_missing_host_key_policy(paramiko.AutoAddPolicy() if out.deploy.ssh_strict_host_key_checking != "yes"
                                       else paramiko.RejectPolicy())
    client.connect(node.public_ip, port=node.ssh_port, username=node.ssh_user, key_filename=node.ssh_key,
                   timeout=10, allow_agent=False, look_for_keys=False)
    return client


def check_node(out: Outputs, spec: EnvSpec, node: NodeOut) -> list[tuple[int, str]]:
    ports = sample_ports(spec)
    client = _ssh(out, node)
    try:
        stdin, stdout, _ = client.exec_command(f"python3 -c '{ECHO}' " + " ".join(map(str, ports)), timeout=40,
                                             get_pty=True)  # a pty: the echo dies with the session
        busy: set[int] = set()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            line = stdout.readline().strip()
            if line.startswith("busy"):
                busy.add(int(line.split()[1]))
            if line == "ready" or not line:
                break
        results = []
        for port in ports:
            if port in busy:
                results.append((port, "in use by the running stack (checked by make verify)"))
                continue
            got = probes.run(out, "udp_echo", host=node.public_ip, port=port)
            results.append((port, "ok" if got["open"] else "BLOCKED"))
        return results
    finally:
        client.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--env", default="local")
    args = ap.parse_args(argv)
    try:
        out = read(args.env)
    except OutputsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    spec = out.spec
    blocked = False
    for node in out.nodes:
        for port, verdict in check_node(out, spec, node):
            print(f"{node.name} {node.public_ip} udp/{port}: {verdict}")
            blocked |= verdict == "BLOCKED"
    if blocked:
        print(f"verdict: UDP BLOCKED. {ADVICE}")
        if spec.udp_blocked:
            print("note: this environment emulates a provider that blocks UDP (blockUdp): media can only use "
                  "TURN over TLS on 443 and ICE over TCP; make verify checks that they carry it.")
        return 1
    print("verdict: UDP reaches the media ports from outside — voice will work over UDP.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
