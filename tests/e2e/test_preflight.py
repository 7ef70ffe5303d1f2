"""`make preflight`: UDP to the media ports from outside, before anything is deployed.

A fresh local machine answers the UDP echo on the TURN port and the ICE range; with the ICE
rule taken out of the cloud firewall the verdict turns to BLOCKED with the provider advice.
"""
from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e import envs

ENV = "e2epre"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def env():
    envs.require_host()
    envs.down(ENV)
    ctx = envs.up(ENV, 1)
    yield ctx
    envs.down(ENV)


def preflight() -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "infra.preflight", "--env", ENV], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def test_udp_reaches_turn_and_ice_ports(env) -> None:
    proc = preflight()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    ice = env.spec.port("livekit-ice-udp")
    for port in (env.spec.port("turn-udp").start, ice.start, ice.end):
        assert f"udp/{port}: ok" in proc.stdout
    assert "voice will work over UDP" in proc.stdout


def test_blocked_ice_range_is_reported_with_advice(env) -> None:
    from infra.local import firewall

    ice = env.spec.port("livekit-ice-udp")
    without_ice = dataclasses.replace(
        env.spec, cloud_firewall=tuple(r for r in env.spec.cloud_firewall if r.start != ice.start))
    firewall.apply(env.names, without_ice)
    try:
        proc = preflight()
    finally:
        firewall.apply(env.names, env.spec)
    assert proc.returncode == 1
    assert f"udp/{ice.start}: BLOCKED" in proc.stdout
    assert f"udp/{env.spec.port('turn-udp').start}: ok" in proc.stdout  # only the removed rule is blocked
    assert "OVH" in proc.stdout and "cloud firewall" in proc.stdout
