"""A LiveKit participant in its own process, for tests that need someone in a room (agent venv).

    python -m tests.rtc_participant   # stdin: one JSON line {"url", "token"}; then stays until stdin closes

Prints one JSON line when it has joined ({"joined": true, "identity": ...}) or failed to
({"joined": false, "error": ...}), leaves the room when stdin closes, prints {"left": true}.

Why a process of its own: in a pytest process that also runs aiohttp servers, livekit rtc
1.1.21's native runtime sometimes aborts the whole interpreter at exit ("panic in a function
that cannot unwind", about 1 run in 6 here) after a clean disconnect. Here it can only end this
helper, after its results are out; os._exit skips the interpreter teardown where it happens.
"""
from __future__ import annotations

import asyncio
import json
import os
import sys

from livekit import rtc


def say(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def main() -> None:
    args = json.loads(sys.stdin.readline())
    room = rtc.Room()
    try:
        await room.connect(args["url"], args["token"])
    except rtc.ConnectError as exc:
        say({"joined": False, "error": str(exc)})
        return
    say({"joined": True, "identity": room.local_participant.identity})
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)   # until stdin closes
    await room.disconnect()
    say({"left": True})


if __name__ == "__main__":
    asyncio.run(main())
    os._exit(0)
