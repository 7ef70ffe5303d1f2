"""Probes run from the operator's side of the internet (in local: inside `client_netns`).

`python -m infra.probes.outside <probe> <json args>` prints a JSON result; the verify suite
runs it through `ip netns exec` so the traffic really crosses the emulated cloud firewall.
"""
from __future__ import annotations

import json
import os
import socket
import ssl
import sys
import time
import urllib.request
from datetime import datetime, timezone
from typing import Any

from infra.probes.turn import TurnSession, binding


def tcp(host: str, port: int, timeout: float = 3.0) -> dict[str, Any]:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return {"open": True}
    except OSError as exc:
        return {"open": False, "error": str(exc)}


def tcp_each(targets: list[list[Any]], timeout: float = 3.0) -> dict[str, Any]:
    """tcp() for every [host, port] at once: a closed port costs the whole timeout when the firewall
    drops, so one at a time a node's dozen private ports took 20 s. {"results": [{open, error}]}."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=min(32, max(1, len(targets)))) as pool:
        return {"results": list(pool.map(lambda t: tcp(t[0], int(t[1]), timeout), targets))}


def stun(host: str, port: int, transport: str = "udp", timeout: float = 3.0) -> dict[str, Any]:
    try:
        mapped = binding(host, port, transport, timeout)
        return {"open": True, "mapped": list(mapped)}
    except (OSError, TimeoutError) as exc:
        return {"open": False, "error": str(exc)}


def udp_echo(host: str, port: int, timeout: float = 3.0) -> dict[str, Any]:
    """Send a nonce and wait for it to come back (the seed's `nc -u` test, automated)."""
    nonce = os.urandom(8).hex().encode()
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            s.sendto(nonce, (host, port))
            s.settimeout(0.3)
            try:
                data, _ = s.recvfrom(64)
            except (socket.timeout, ConnectionRefusedError):
                continue
            if data == nonce:
                return {"open": True}
    return {"open": False, "error": f"no echo within {timeout}s"}


def tls(host: str, port: int, server_name: str, cafile: str | None, timeout: float = 5.0) -> dict[str, Any]:
    ctx = ssl.create_default_context(cafile=cafile)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        with socket.create_connection((host, port), timeout=timeout) as raw, \
                ctx.wrap_socket(raw, server_hostname=server_name) as s:
            cert = s.getpeercert()
            expires = datetime.fromtimestamp(ssl.cert_time_to_seconds(cert["notAfter"]), timezone.utc)
            return {"ok": True, "version": s.version(), "days_left": (expires - datetime.now(timezone.utc)).days,
                    "san": [v for k, v in cert.get("subjectAltName", ()) if k == "DNS"]}
    except (OSError, ssl.SSLError) as exc:
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}


def https_get(url: str, cafile: str | None, timeout: float = 5.0, bearer: str | None = None) -> dict[str, Any]:
    ctx = ssl.create_default_context(cafile=cafile)
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {bearer}"} if bearer is not None else {})
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=timeout) as resp:
            return {"status": resp.status, "body": resp.read(200).decode(errors="replace"),
                    "headers": dict(resp.headers)}
    except urllib.error.HTTPError as exc:
        return {"status": exc.code, "body": exc.read(200).decode(errors="replace"), "headers": dict(exc.headers)}
    except (OSError, ssl.SSLError) as exc:
        return {"status": None, "error": f"{type(exc).__name__}: {exc}"}


def http_post(url: str, body: Any, cafile: str | None, bearer: str | None = None,
              timeout: float = 10.0) -> dict[str, Any]:
    """POST JSON; returns status and the JSON (or text) body."""
    headers = {"Content-Type": "application/json"}
    if bearer is not None:
        headers["Authorization"] = f"Bearer {bearer}"
    data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers=headers, method="POST")
    ctx = ssl.create_default_context(cafile=cafile)
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=timeout) as resp:
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    except (OSError, ssl.SSLError) as exc:
        return {"status": None, "error": f"{type(exc).__name__}: {exc}"}
    try:
        return {"status": status, "json": json.loads(raw)}
    except ValueError:
        return {"status": status, "text": raw[:300].decode(errors="replace")}


def turn(host: str, port: int, username: str, password: str, transport: str, server_name: str | None,
         cafile: str | None, peers: list[str]) -> dict[str, Any]:
    try:
        session = TurnSession(host, port, username, password, transport=transport, server_name=server_name,
                              cafile=cafile)
    except (OSError, ssl.SSLError) as exc:
        return {"allocated": False, "code": None, "reason": f"{type(exc).__name__}: {exc}"}
    try:
        alloc = session.allocate()
        # relayed: XOR-RELAYED-ADDRESS, the address peers send to (the relay candidate a browser gets).
        result: dict[str, Any] = {"allocated": alloc.ok, "code": alloc.code, "reason": alloc.reason,
                                  "relayed": list(alloc.relayed) if alloc.relayed else None, "permissions": {}}
        if alloc.ok:
            for peer in peers:
                r = session.permit(peer)
                result["permissions"][peer] = {"ok": r.ok, "code": r.code, "reason": r.reason}
        return result
    except (OSError, TimeoutError, ConnectionError) as exc:
        return {"allocated": False, "code": None, "reason": f"{type(exc).__name__}: {exc}"}
    finally:
        session.close()


def resolve(name: str, server: str | None) -> dict[str, Any]:
    import dns.resolver

    res = dns.resolver.Resolver(configure=server is None)
    if server:
        res.nameservers = [server]
    res.lifetime = 5
    try:
        return {"a": sorted(r.address for r in res.resolve(name, "A"))}
    except Exception as exc:  # noqa: BLE001 - every resolver failure is a finding, reported as text
        return {"a": [], "error": f"{type(exc).__name__}: {exc}"}


PROBES = {"tcp": tcp, "tcp_each": tcp_each, "udp_echo": udp_echo, "stun": stun, "tls": tls, "https_get": https_get, "http_post": http_post, "turn": turn, "resolve": resolve}


def main() -> int:
    name, args = sys.argv[1], json.loads(sys.argv[2])
    started = time.monotonic()
    result = PROBES[name](**args)
    result["elapsed"] = round(time.monotonic() - started, 3)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
