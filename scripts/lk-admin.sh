#!/usr/bin/env bash
# Inspect and manage LiveKit rooms over the server API (Twirp RoomService):
#   scripts/lk-admin.sh [--env ENV] [--url URL] [--ca-bundle PEM] [--json] rooms|room NAME|participants ROOM|remove ROOM IDENTITY|delete ROOM
# Key/secret/URL: LIVEKIT_API_KEY / LIVEKIT_API_SECRET / LIVEKIT_URL, else .stack/$ENV/outputs.json (ENV defaults to local).
exec "$(dirname "${BASH_SOURCE[0]}")/operator-python.sh" agent.admin "$@"
