"""A minimal STUN/TURN client for verification: binding, allocation, permissions.

Message encoding comes from aioice.stun (the library aiortc uses); this module only adds the
transports (UDP, TCP, TLS) and the long-term-credential dance of RFC 5766. It never sends data
to a peer: CreatePermission only asks coturn whether it *would* relay to an address.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import socket
import ssl
import struct
import time
from dataclasses import dataclass

from aioice import stun

UDP_TRANSPORT = 17 << 24  # REQUESTED-TRANSPORT value for UDP


def rest_credentials(secret: str, user: str = "verify", ttl: int = 600) -> tuple[str, str]:
    """coturn `use-auth-secret` credentials, the same formula LiveKit uses for its clients."""
    username = f"{int(time.time()) + ttl}:{user}"
    password = base64.b64encode(hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()).decode()
    return username, password


class _Conn:
    """One STUN transport: a datagram socket or a (TLS) stream with STUN framing."""

    def __init__(self, host: str, port: int, transport: str, timeout: float, server_name: str | None,
                 cafile: str | None):
        self.transport = transport
        self.addr = (host, port)
        self.timeout = timeout
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        if transport == "udp":
            self.sock = socket.socket(family, socket.SOCK_DGRAM)
            self.sock.settimeout(timeout)
        else:
            raw = socket.create_connection(self.addr, timeout=timeout)
            if transport == "tls":
                ctx = ssl.create_default_context(cafile=cafile)
                raw = ctx.wrap_socket(raw, server_hostname=server_name or host)
            self.sock = raw
            self.sock.settimeout(timeout)

    def request(self, msg: stun.Message, key: bytes | None = None) -> stun.Message:
        data = bytes(msg)
        if self.transport == "udp":
            deadline = time.monotonic() + self.timeout
            rto = 0.25
            while time.monotonic() < deadline:  # retransmit as RFC 5389 asks, until the deadline
                self.sock.sendto(data, self.addr)
                self.sock.settimeout(min(rto, max(deadline - time.monotonic(), 0.01)))
                try:
                    reply, _ = self.sock.recvfrom(4096)
                except socket.timeout:
                    rto *= 2
                    continue
                return stun.parse_message(reply, integrity_key=key)
            raise TimeoutError(f"no STUN answer from {self.addr[0]}:{self.addr[1]}/udp within {self.timeout}s")
        self.sock.sendall(data)
        header = self._read(20)
        length = struct.unpack("!H", header[2:4])[0]
        return stun.parse_message(header + self._read(length), integrity_key=key)

    def _read(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError(f"{self.addr[0]}:{self.addr[1]} closed the connection")
            buf += chunk
        return buf

    def close(self) -> None:
        self.sock.close()


def binding(host: str, port: int, transport: str = "udp", timeout: float = 3.0) -> tuple[str, int]:
    """STUN Binding request; returns the mapped address the server saw."""
    conn = _Conn(host, port, transport, timeout, None, None)
    try:
        reply = conn.request(stun.Message(stun.Method.BINDING, stun.Class.REQUEST))
        return reply.attributes["XOR-MAPPED-ADDRESS"]
    finally:
        conn.close()


@dataclass
class TurnResult:
    ok: bool
    code: int | None = None
    reason: str = ""
    relayed: tuple[str, int] | None = None


class TurnSession:
    """An authenticated TURN allocation, kept open to ask for permissions."""

    def __init__(self, host: str, port: int, username: str, password: str, *, transport: str = "udp",
                 server_name: str | None = None, cafile: str | None = None, timeout: float = 5.0):
        self.conn = _Conn(host, port, transport, timeout, server_name, cafile)
        self.username, self.password = username, password
        self.realm = self.nonce = None
        self.key: bytes | None = None

    def _signed(self, method: stun.Method, attrs: dict) -> stun.Message:
        msg = stun.Message(method, stun.Class.REQUEST)
        msg.attributes.update(attrs)
        msg.attributes["USERNAME"] = self.username
        msg.attributes["REALM"] = self.realm
        msg.attributes["NONCE"] = self.nonce
        msg.add_message_integrity(self.key)
        return msg

    def allocate(self) -> TurnResult:
        first = stun.Message(stun.Method.ALLOCATE, stun.Class.REQUEST)
        first.attributes["REQUESTED-TRANSPORT"] = UDP_TRANSPORT
        reply = self.conn.request(first)
        if reply.message_class != stun.Class.ERROR or reply.attributes.get("ERROR-CODE", (0,))[0] != 401:
            return TurnResult(False, None, "server did not challenge the unauthenticated allocation")
        self.realm, self.nonce = reply.attributes["REALM"], reply.attributes["NONCE"]
        self.key = hashlib.md5(f"{self.username}:{self.realm}:{self.password}".encode()).digest()
        reply = self.conn.request(self._signed(stun.Method.ALLOCATE, {"REQUESTED-TRANSPORT": UDP_TRANSPORT,
                                                                      "LIFETIME": 60}))
        return self._result(reply, relayed=True)

    def permit(self, peer_ip: str) -> TurnResult:
        """Ask for a permission to `peer_ip`; coturn answers 403 when its peer policy forbids it."""
        reply = self.conn.request(self._signed(stun.Method.CREATE_PERMISSION,
                                               {"XOR-PEER-ADDRESS": (peer_ip, 0)}))
        return self._result(reply)

    @staticmethod
    def _result(reply: stun.Message, relayed: bool = False) -> TurnResult:
        if reply.message_class == stun.Class.RESPONSE:
            return TurnResult(True, relayed=reply.attributes.get("XOR-RELAYED-ADDRESS") if relayed else None)
        code, reason = reply.attributes.get("ERROR-CODE", (None, "no error code"))
        return TurnResult(False, code, reason)

    def close(self) -> None:
        self.conn.close()
