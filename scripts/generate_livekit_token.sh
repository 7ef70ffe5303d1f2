#!/usr/bin/env bash
# Mint a LiveKit access token, as the seed document describes:
#   scripts/generate_livekit_token.sh [room] [user] [--json] [--preset listener|speaker|admin] [--ttl S]
# Key/secret: LIVEKIT_API_KEY / LIVEKIT_API_SECRET, else .stack/$ENV/outputs.json (ENV defaults to local).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
py="$root/.venv/bin/python"
[ -x "$py" ] || py="$(command -v python3)"
cd "$root"
exec "$py" -m agent.token_cli "$@"
