"""Clients on the emulated internet for tests/e2e/test_edge.py, each from a chosen source address.

    ip netns exec <client netns> python -m tests.e2e.edge_client requests '<json>'
    ip netns exec <client netns> python -m tests.e2e.edge_client connections '<json>'

Run inside a local environment's client namespace (the test adds the extra addresses there and
removes them afterwards); prints one JSON document. Standard library only. Traffic goes only to
the environment's own node through its cloud firewall.
"""
from __future__ import annotations

import http.client
import json
import socket
import ssl
import sys
import time
from typing import Any


def _tls(cafile: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=cafile)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def requests(host: str, cafile: str, calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each call: {source, method, path, headers?, body?, repeat?}; one result per request sent:
    {status, retry_after, body (first 4000 characters), location, csp, www_authenticate, content_type}."""
    results = []
    for call in calls:
        for _ in range(int(call.get("repeat", 1))):
            conn = http.client.HTTPSConnection(host, 443, context=_tls(cafile), timeout=20,
                                               source_address=(call["source"], 0))
            try:
                body = call.get("body")
                data = json.dumps(body).encode() if body is not None else None
                headers = {"Content-Type": "application/json", **call.get("headers", {})}
                conn.request(call.get("method", "GET"), call["path"], body=data, headers=headers)
                resp = conn.getresponse()
                text = resp.read().decode(errors="replace")
                results.append({"source": call["source"], "path": call["path"], "status": resp.status,
                                "retry_after": resp.getheader("Retry-After"), "location": resp.getheader("Location"),
                                "csp": resp.getheader("Content-Security-Policy"),
                                "www_authenticate": resp.getheader("WWW-Authenticate"),
                                "content_type": resp.getheader("Content-Type"), "body": text[:4000]})
            finally:
                conn.close()
    return results


def _handshake(host: str, cafile: str, source: str, timeout: float = 20.0) -> ssl.SSLSocket | str:
    """A TLS connection to host:443 from `source`, or the error that ended it."""
    raw = socket.create_connection((host, 443), timeout=timeout, source_address=(source, 0))
    try:
        return _tls(cafile).wrap_socket(raw, server_hostname=host)
    except (OSError, ssl.SSLError) as exc:
        raw.close()
        return f"{type(exc).__name__}: {exc}"


def _get_ok(host: str, cafile: str, source: str) -> str:
    return requests(host, cafile, [{"source": source, "path": "/"}])[0]["body"].strip()


def connections(host: str, cafile: str, source: str, other: str, count: int, wait_s: float = 30.0) -> dict[str, Any]:
    """Hold `count` TLS connections from `source`, then try one more from it and a request from
    `other`; release them and wait until `source` connects again."""
    held: list[ssl.SSLSocket] = []
    errors: list[str] = []
    t0 = time.monotonic()
    for _ in range(count):
        got = _handshake(host, cafile, source)
        if isinstance(got, str):
            errors.append(got)
        else:
            held.append(got)
    opened_s = time.monotonic() - t0
    extra = _handshake(host, cafile, source)
    extra_error = extra if isinstance(extra, str) else None
    if not isinstance(extra, str):
        extra.close()
    other_body = _get_ok(host, cafile, other)
    for sock in held:
        sock.close()
    again_after_s, again = None, None
    deadline = time.monotonic() + wait_s
    t1 = time.monotonic()
    while time.monotonic() < deadline:   # nginx counts a connection until it has seen the close
        got = _handshake(host, cafile, source)
        if not isinstance(got, str):
            got.close()
            again_after_s = round(time.monotonic() - t1, 2)
            again = _get_ok(host, cafile, source)
            break
        time.sleep(0.2)   # poll interval of the deadline loop
    return {"held": len(held), "errors": errors[:3], "opened_s": round(opened_s, 2), "extra_error": extra_error,
            "other_body": other_body, "again_after_s": again_after_s, "again_body": again}


def main() -> int:
    command, args = sys.argv[1], json.loads(sys.argv[2])
    result: Any
    if command == "requests":
        result = requests(args["host"], args["cafile"], args["calls"])
    elif command == "connections":
        result = connections(args["host"], args["cafile"], args["source"], args["other"], int(args["count"]))
    else:
        print(f"unknown command {command!r}; use requests or connections", file=sys.stderr)
        return 2
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
