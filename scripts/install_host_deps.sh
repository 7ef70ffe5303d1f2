#!/usr/bin/env bash
# Install the Debian packages the operator machine needs for the local environment and tests.
# Idempotent: only missing packages are installed.
set -euo pipefail
pkgs=(make git openssl coturn)
missing=()
for p in "${pkgs[@]}"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p"); done
if ((${#missing[@]})); then
  [ "$(id -u)" = 0 ] || { echo "error: need root to install ${missing[*]} (or install them yourself)" >&2; exit 1; }
  echo "==> apt-get install ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
