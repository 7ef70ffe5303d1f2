#!/bin/sh
# Debian packages the host needs for the local environment (python -m infra.local up).
# Usage: sh infra/local/requirements.sh            -> prints the list
#        sh infra/local/requirements.sh --install  -> apt-get installs it (as root)
# Keep in sync with infra/local/host.py HOST_PACKAGES. A Go toolchain already in
# /usr/local/go/bin satisfies golang-go; it is only needed when livekit-server is not cached.
set -eu
PACKAGES="systemd-container debootstrap nftables iproute2 pebble apt-cacher-ng dnsmasq-base golang-go openssh-client curl ca-certificates"
if [ "${1:-}" = "--install" ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $PACKAGES
else
    echo $PACKAGES
fi
