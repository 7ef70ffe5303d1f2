#!/usr/bin/env bash
# Install the Debian packages the operator machine needs: the local environment's tools
# (infra/local/packages.txt) and what the tests run for real (coturn for the TURN probe;
# redis-server and redis-sentinel for the Sentinel failover test; Debian's chromium +
# chromium-driver for the voice page's browser test, libnss3-tools so that test can make Chromium
# trust a local environment's CA; nodejs + npm, with which the deploy builds the voice page,
# web/build.py); espeak-ng for the voice benchmark's second voice (bench/bench_voice.py).
# Idempotent: only missing packages are installed.
#
# The operator host runs no daemon of these packages: Debian's coturn config has no
# authentication (an open relay into private ranges and the cloud metadata address),
# apt-cacher-ng would listen on every address, and Redis/Sentinel would run unauthenticated. The tests and the local environment start their
# own instances with their own configs, so the packaged services are disabled, now and on every
# run (a package upgrade may enable them again).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
read -r -a pkgs <<<"make git openssl coturn redis-server redis-sentinel chromium chromium-driver libnss3-tools nodejs npm espeak-ng $(grep -v '^#' "$here/infra/local/packages.txt" | tr '\n' ' ')"
no_daemons=(coturn apt-cacher-ng redis-server redis-sentinel)
missing=()
for p in "${pkgs[@]}"; do
  # Go from /usr/local/go (newer than Debian's) satisfies golang-go.
  if [ "$p" = golang-go ] && [ -x /usr/local/go/bin/go ]; then continue; fi
  # A Node.js with its own npm (e.g. NodeSource's nodejs package) satisfies both; Debian's npm
  # would conflict with it.
  if { [ "$p" = nodejs ] || [ "$p" = npm ]; } && command -v npm >/dev/null; then continue; fi
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  [ "$(id -u)" = 0 ] || { echo "error: need root to install ${missing[*]} (or install them yourself)" >&2; exit 1; }
  echo "==> apt-get install ${missing[*]}"
  apt-get update -qq
  # No daemon may start from a package's postinst on the operator machine.
  printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
  trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
if [ "$(id -u)" = 0 ]; then
  for unit in "${no_daemons[@]}"; do
    state="$(systemctl is-enabled "$unit" 2>/dev/null || true)"
    case "$state" in
      disabled|masked|"") ;;
      *) echo "==> disabling the packaged $unit service on this host (the tests run their own)"
         systemctl disable "$unit" >/dev/null 2>&1 || true
         # With systemd as PID 1 it may be running too.
         if [ -d /run/systemd/system ]; then systemctl stop "$unit" 2>/dev/null || true; fi ;;
    esac
  done
fi
