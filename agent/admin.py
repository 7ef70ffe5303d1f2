"""Operator CLI for a running LiveKit: rooms and participants over the Twirp RoomService.

    python -m agent.admin --env <env> rooms
    python -m agent.admin --env <env> room NAME
    python -m agent.admin --env <env> participants ROOM
    python -m agent.admin --env <env> remove ROOM IDENTITY
    python -m agent.admin --env <env> delete ROOM

Credentials: LIVEKIT_URL / LIVEKIT_API_KEY / LIVEKIT_API_SECRET, else `.stack/<env>/outputs.json`.
`--url` overrides the server URL, `--ca-bundle` the CA to trust (local envs: outputs.ca_bundle).
Runs in the operator venv (.venv). Errors are one line on stderr: exit 1 for a failed call,
2 for bad usage or missing credentials.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import ssl
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlparse

import aiohttp
from google.protobuf.json_format import MessageToDict
from livekit import api

from infra.outputs import OutputsError, read

TIMEOUT = 10.0  # seconds per call: an admin command should fail fast, not hang on a dead host


class AdminError(Exception):
    """A one-line, user-facing failure; `code` is the exit status."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Target:
    url: str
    api_key: str
    api_secret: str
    ca_bundle: str | None = None


def http_url(url: str) -> str:
    """wss://host -> https://host (the RoomService is plain HTTP POST on the same port)."""
    parsed = urlparse(url)
    scheme = {"wss": "https", "ws": "http"}.get(parsed.scheme, parsed.scheme)
    if scheme not in ("http", "https") or not parsed.netloc:
        raise AdminError(f"LiveKit URL {url!r} is not ws(s):// or http(s)://host; pass --url https://<livekit-domain>", 2)
    return parsed._replace(scheme=scheme).geturl().rstrip("/")


def resolve_target(env: str, url: str | None, ca_bundle: str | None) -> Target:
    key, secret = os.environ.get("LIVEKIT_API_KEY", ""), os.environ.get("LIVEKIT_API_SECRET", "")
    env_url = os.environ.get("LIVEKIT_URL", "")
    if key or secret:
        if not (key and secret):
            raise AdminError("set both LIVEKIT_API_KEY and LIVEKIT_API_SECRET, or neither to use the env's outputs", 2)
        target_url = url or env_url
        if not target_url:
            raise AdminError("LIVEKIT_API_KEY is set but no server URL: set LIVEKIT_URL or pass --url", 2)
        return Target(http_url(target_url), key, secret, ca_bundle)
    try:
        out = read(env)
    except OutputsError as exc:
        raise AdminError(f"no LIVEKIT_API_KEY/LIVEKIT_API_SECRET in the environment and {exc}", 2) from exc
    if not url and not env_url and os.geteuid() == 0:
        # A local environment's names resolve only on its emulated internet: go there first.
        from infra.local.shell import rerun_in_client_namespace
        rerun_in_client_namespace(out, "agent.admin", sys.argv[1:])
    return Target(http_url(url or env_url or out.livekit_url), out.api_key, out.api_secret,
                  ca_bundle or out.ca_bundle)


def _session(target: Target) -> aiohttp.ClientSession:
    connector = None
    if target.ca_bundle:
        try:
            # The local env's ACME CA is not in the system store; trust it for this session only.
            ctx = ssl.create_default_context(cafile=target.ca_bundle)
        except (OSError, ssl.SSLError) as exc:
            raise AdminError(f"failed to load CA bundle {target.ca_bundle}: {exc}", 2) from exc
        connector = aiohttp.TCPConnector(ssl=ctx)
    return aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=TIMEOUT))


def _when(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ") if epoch else "-"


def _room_row(room: Any) -> str:
    return (f"{room.name}\tsid={room.sid}\tparticipants={room.num_participants}\t"
            f"publishers={room.num_publishers}\tcreated={_when(room.creation_time)}")


def _participant_row(p: Any) -> str:
    kind = api.ParticipantInfo.Kind.Name(p.kind).lower() if p.kind in api.ParticipantInfo.Kind.values() else p.kind
    state = api.ParticipantInfo.State.Name(p.state).lower() if p.state in api.ParticipantInfo.State.values() else p.state
    return (f"{p.identity}\tsid={p.sid}\tkind={kind}\tstate={state}\ttracks={len(p.tracks)}\t"
            f"joined={_when(p.joined_at)}")


async def run(target: Target, command: str, args: argparse.Namespace) -> list[Any] | str:
    """Execute one command; return protobuf messages to print, or a confirmation line."""
    session = _session(target)
    # failover=False: region discovery is for LiveKit Cloud; here it only adds retries to a dead host.
    lk = api.LiveKitAPI(target.url, target.api_key, target.api_secret, session=session, failover=False)
    try:
        if command == "rooms":
            return list((await lk.room.list_rooms(api.ListRoomsRequest())).rooms)
        if command == "room":
            rooms = list((await lk.room.list_rooms(api.ListRoomsRequest(names=[args.name]))).rooms)
            if not rooms:
                raise AdminError(f"room {args.name!r} not found on {target.url}; list them with 'rooms'")
            return rooms
        if command == "participants":
            return list((await lk.room.list_participants(api.ListParticipantsRequest(room=args.room))).participants)
        if command == "remove":
            await lk.room.remove_participant(api.RoomParticipantIdentity(room=args.room, identity=args.identity))
            return f"removed {args.identity} from {args.room}"
        if command == "delete":
            await lk.room.delete_room(api.DeleteRoomRequest(room=args.room))
            return f"deleted room {args.room}"
        raise AdminError(f"unknown command {command!r}", 2)
    finally:
        await lk.aclose()
        await session.close()


def describe(args: argparse.Namespace) -> str:
    """The command as a verb phrase, for "failed to <verb> <thing>" errors."""
    return {
        "rooms": "list rooms",
        "room": f"show room {getattr(args, 'name', '')}",
        "participants": f"list participants of {getattr(args, 'room', '')}",
        "remove": f"remove {getattr(args, 'identity', '')} from {getattr(args, 'room', '')}",
        "delete": f"delete room {getattr(args, 'room', '')}",
    }.get(args.command, args.command)


def explain(exc: BaseException, target: Target, action: str) -> str:
    """One line saying what failed and what to try next."""
    what = f"failed to {action} on {target.url}"
    if isinstance(exc, api.TwirpError):
        if exc.status == 401 or exc.code == api.TwirpErrorCode.UNAUTHENTICATED:
            return (f"{what}: the server rejected API key {target.api_key!r} or its secret; check LIVEKIT_API_KEY/LIVEKIT_API_SECRET or .stack/<env>/outputs.json")
        if exc.code == api.TwirpErrorCode.NOT_FOUND:
            return f"{what}: not found ({exc.message})"
        return f"{what}: {exc.code} (HTTP {exc.status}): {exc.message}"
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return f"{what}: TLS certificate not trusted ({exc.certificate_error}); pass --ca-bundle <root.pem>"
    if isinstance(exc, aiohttp.ClientSSLError):
        return f"{what}: TLS handshake failed ({exc}); is it http:// rather than https://?"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"{what}: cannot reach the server ({exc.os_error or exc}); is livekit up and the URL right?"
    if isinstance(exc, asyncio.TimeoutError):
        return f"{what}: no answer within {TIMEOUT:.0f} s"
    return f"{what}: {type(exc).__name__}: {exc}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="lk-admin.sh", description="Inspect and manage LiveKit rooms.")
    ap.add_argument("--env", default=os.environ.get("ENV", "local"))
    ap.add_argument("--url", default=None, help="server URL (ws(s):// or http(s)://); default from env/outputs")
    ap.add_argument("--ca-bundle", default=None, help="PEM file of the CA to trust (default: outputs.ca_bundle)")
    ap.add_argument("--json", action="store_true", help="print JSON instead of tab-separated lines")
    sub = ap.add_subparsers(dest="command", required=True)
    sub.add_parser("rooms", help="list rooms")
    sub.add_parser("room", help="show one room").add_argument("name")
    sub.add_parser("participants", help="list a room's participants").add_argument("room")
    p_rm = sub.add_parser("remove", help="remove a participant from a room")
    p_rm.add_argument("room")
    p_rm.add_argument("identity")
    sub.add_parser("delete", help="delete a room (disconnects everyone)").add_argument("room")
    args = ap.parse_args(argv)
    try:
        target = resolve_target(args.env, args.url, args.ca_bundle)
        try:
            result = asyncio.run(run(target, args.command, args))
        except AdminError:
            raise
        except Exception as exc:  # every transport/server failure becomes one line, never a traceback
            raise AdminError(explain(exc, target, describe(args))) from exc
    except AdminError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.code
    if isinstance(result, str):
        print(json.dumps({"result": result}) if args.json else result)
        return 0
    if args.json:
        print(json.dumps([MessageToDict(m) for m in result], indent=2))
        return 0
    row = _participant_row if args.command == "participants" else _room_row
    for msg in result:
        print(row(msg))
    if not result:
        print(f"(no {'participants' if args.command == 'participants' else 'rooms'})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
