"""Mint a LiveKit token from the command line (used by scripts/generate_livekit_token.sh).

Key and secret come from LIVEKIT_API_KEY / LIVEKIT_API_SECRET, else from
`.stack/<env>/outputs.json`. Errors are one line on stderr, exit status 2.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

from agent.tokens import DEFAULT_TTL, PRESETS, TokenError, mint
from infra.outputs import OutputsError, read


def credentials(env: str) -> tuple[str, str, str]:
    """(api_key, api_secret, ws_url) from the environment variables, else the env's outputs."""
    key, secret = os.environ.get("LIVEKIT_API_KEY", ""), os.environ.get("LIVEKIT_API_SECRET", "")
    url = os.environ.get("LIVEKIT_URL", "")
    if key and secret:
        return key, secret, url
    if key or secret:
        raise TokenError("set both LIVEKIT_API_KEY and LIVEKIT_API_SECRET, or neither to use the env's outputs")
    try:
        out = read(env)
    except OutputsError as exc:
        raise TokenError(f"no LIVEKIT_API_KEY/LIVEKIT_API_SECRET in the environment and {exc}") from exc
    return out.api_key, out.api_secret, url or out.livekit_url


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="generate_livekit_token.sh", description="Mint a LiveKit access token.")
    ap.add_argument("room", nargs="?", default="voice-test")
    ap.add_argument("user", nargs="?", default=None, help="identity (default user-<timestamp>)")
    ap.add_argument("--json", action="store_true", help="print {token, wsUrl, room, identity}")
    ap.add_argument("--preset", choices=sorted(PRESETS), default="speaker")
    ap.add_argument("--ttl", type=int, default=DEFAULT_TTL, help="seconds (default 3600)")
    ap.add_argument("--name", default=None)
    ap.add_argument("--agent", default=None, help="dispatch this agent name into the room")
    ap.add_argument("--env", default=os.environ.get("ENV", "local"))
    args = ap.parse_args(argv)
    identity = args.user or f"user-{int(time.time())}"
    try:
        key, secret, url = credentials(args.env)
        token = mint(key, secret, identity, args.room, preset=args.preset, name=args.name, ttl=args.ttl,
                     agent_name=args.agent)
    except TokenError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"token": token, "wsUrl": url, "room": args.room, "identity": identity}))
    else:
        print("Token generated.")
        print(f"Room:      {args.room}")
        print(f"Identity:  {identity}")
        print(f"Token:     {token}")
        print(f"WebSocket: {url or '(unknown: set LIVEKIT_URL or run make up)'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
