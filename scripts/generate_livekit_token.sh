#!/usr/bin/env bash
# Mint a LiveKit access token, as the seed document describes:
#   scripts/generate_livekit_token.sh [room] [user] [--json] [--preset listener|speaker|admin] [--ttl S]
# Key/secret: LIVEKIT_API_KEY / LIVEKIT_API_SECRET, else .stack/$ENV/outputs.json (ENV defaults to local).
exec "$(dirname "${BASH_SOURCE[0]}")/operator-python.sh" agent.token_cli "$@"
