#!/usr/bin/env bash
# Install the Debian packages the operator machine needs: the local environment's tools
# (infra/local/requirements.sh) and what the tests run for real (coturn for the TURN probe;
# Debian's chromium + chromium-driver for the voice page's browser test, libnss3-tools so that
# test can make Chromium trust a local environment's CA).
# Idempotent: only missing packages are installed.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
read -r -a pkgs <<<"make git openssl coturn chromium chromium-driver libnss3-tools $(sh "$here/infra/local/requirements.sh")"
missing=()
for p in "${pkgs[@]}"; do
  # Go from /usr/local/go (newer than Debian's) satisfies golang-go.
  if [ "$p" = golang-go ] && [ -x /usr/local/go/bin/go ]; then continue; fi
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  [ "$(id -u)" = 0 ] || { echo "error: need root to install ${missing[*]} (or install them yourself)" >&2; exit 1; }
  echo "==> apt-get install ${missing[*]}"
  apt-get update -qq
  # No daemon may start from a package's postinst on the operator machine (coturn, apt-cacher-ng).
  printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
  trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
