"""Show participants that a room is being recorded: room metadata key "voicestack.recording".

The recorder is a hidden participant, so its own attributes are invisible to the others; room
metadata is what every participant sees (livekit-client: `room.metadata`, event
RoomMetadataChanged). The value is "true" while recording and "false" afterwards.
Set through the server API (LIVEKIT_URL, LIVEKIT_API_KEY/SECRET): job tokens cannot write
room metadata.
"""
from __future__ import annotations

import logging
import os

from livekit import api

from agent.recording_config import with_indicator

log = logging.getLogger("agent.recording_indicator")


async def set_indicator(room: str, recording: bool, *, url: str | None = None) -> bool:
    """Merge the indicator into the room's metadata; False (logged) if it could not be set."""
    url = url or os.environ.get("LIVEKIT_URL", "")
    try:
        async with api.LiveKitAPI(url=url) as lk:
            rooms = await lk.room.list_rooms(api.ListRoomsRequest(names=[room]))
            if not rooms.rooms:
                if recording:
                    log.warning("failed to show the recording indicator: room %s is not on %s", room, url)
                return False
            metadata = with_indicator(rooms.rooms[0].metadata, recording)
            await lk.room.update_room_metadata(api.UpdateRoomMetadataRequest(room=room, metadata=metadata))
        return True
    except Exception as exc:  # noqa: BLE001 - TwirpError, aiohttp errors, bad credentials: all mean "not shown"
        log.warning("failed to set %s=%s on room %s at %s: %s", "voicestack.recording",
                    str(recording).lower(), room, url, exc)
        return False
