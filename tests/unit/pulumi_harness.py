"""Run the real Pulumi program (infra/__main__.py main()) under Pulumi's mock runtime.

Each run gets fresh mocks, a fresh monitor, a fresh root stack and its own config, with
preview=False so that every output resolves and every assertion really executes. The mocks
fake only what a cloud computes (addresses, ids, URNs, generated passwords); everything else
is the program's own input, recorded as the engine would see it (camelCase wire names).
"""
from __future__ import annotations

import asyncio
import ipaddress
import json
import secrets
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

import pulumi
from pulumi.runtime import settings as pulumi_settings

from infra.config import PROJECT, parse
from infra.spec import EnvSpec, derive

SSH_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHVvaWNlc3RhY2t0ZXN0a2V5MDAwMDAwMDAwMDAw test@voicestack"
ADMIN = "198.51.100.7/32"
STACK = "test"
#: The mocks of the latest run, also when the program raised (to prove nothing was registered).
LAST: dict[str, "CloudMocks"] = {}


@dataclass
class Registered:
    typ: str
    name: str
    inputs: dict[str, Any]
    id: str
    state: dict[str, Any]
    custom: bool


class CloudMocks(pulumi.runtime.Mocks):
    """Answers like the clouds would: numeric ids, addresses, URNs, random passwords."""

    def __init__(self) -> None:
        self.registered: list[Registered] = []
        self.by_id: dict[str, dict[str, Any]] = {}
        # Pulumi calls the mocks from executor threads: ids must be handed out atomically.
        self._lock = threading.Lock()

    def new_resource(self, args: pulumi.runtime.MockResourceArgs):
        with self._lock:
            return self._new_resource(args)

    def _new_resource(self, args: pulumi.runtime.MockResourceArgs):
        n = len(self.registered) + 1
        rid = str(1000 + n)
        state = dict(args.inputs)
        typ = args.typ
        if typ == "hcloud:index/primaryIp:PrimaryIp":
            state["ipAddress"] = f"203.0.113.{n}"
        elif typ == "hcloud:index/server:Server":
            # The server answers on the primary IP it was created with.
            state["ipv4Address"] = self.by_id[str(int(args.inputs["publicNets"][0]["ipv4"]))]["ipAddress"]
            state["status"] = "running"
        elif typ == "hcloud:index/loadBalancer:LoadBalancer":
            state["ipv4"] = f"203.0.113.{200 + n % 50}"
        elif typ == "digitalocean:index/loadBalancer:LoadBalancer":
            state["ip"] = f"198.51.100.{200 + n % 50}"
            state["loadBalancerUrn"] = f"do:loadbalancer:{rid}"
        elif typ == "hcloud:index/zone:Zone":
            state["authoritativeNameservers"] = {"assigneds": ["hydrogen.ns.hetzner.com", "oxygen.ns.hetzner.com"]}
        elif typ == "digitalocean:index/droplet:Droplet":
            state["ipv4Address"] = f"198.51.100.{100 + n}"
            state["dropletUrn"] = f"do:droplet:{rid}"
            if args.inputs.get("vpcUuid"):
                net = ipaddress.ip_network(self.by_id[args.inputs["vpcUuid"]]["ipRange"])
                state["ipv4AddressPrivate"] = str(net.network_address + 2 + n % 200)
        elif typ == "digitalocean:index/reservedIp:ReservedIp":
            state["ipAddress"] = f"192.0.2.{n}"
            state["reservedIpUrn"] = f"do:floatingip:192.0.2.{n}"
        elif typ == "digitalocean:index/domain:Domain":
            state["domainUrn"] = f"do:domain:{args.inputs['name']}"
            rid = args.inputs["name"]  # DigitalOcean's domain id is its name
        elif typ == "digitalocean:index/sshKey:SshKey":
            state["fingerprint"] = "3b:16:bf:e4:8b:00:8b:b8:59:8c:a9:d3:f0:19:45:fa"
        elif typ == "random:index/randomPassword:RandomPassword":
            length = int(args.inputs["length"])
            state["result"] = secrets.token_hex(length)[:length]
        self.by_id[rid] = state
        self.registered.append(Registered(typ, args.name, dict(args.inputs), rid, state, args.custom))
        return rid, state

    def call(self, args: pulumi.runtime.MockCallArgs):
        return {}


@dataclass
class Run:
    mocks: CloudMocks
    outputs: dict[str, Any] = field(default_factory=dict)
    secret: dict[str, bool] = field(default_factory=dict)

    def custom(self) -> list[Registered]:
        return [r for r in self.mocks.registered if r.custom]

    def of(self, typ: str) -> list[Registered]:
        return [r for r in self.mocks.registered if r.typ == typ]

    def one(self, typ: str) -> Registered:
        found = self.of(typ)
        assert len(found) == 1, f"expected one {typ}, got {len(found)}"
        return found[0]

    def ip_of(self) -> dict[str, str]:
        return {n["name"]: n["public_ip"] for n in self.outputs["nodes"]}


def _config_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)  # structured values arrive as JSON text


def run_stack(config: Mapping[str, Any], secret_keys: Iterable[str] = (), stack: str = STACK) -> Run:
    """Run infra/__main__.py's main() for `config` (project keys without the `voicestack:` prefix)."""
    from infra.__main__ import main

    pulumi_settings.ROOT.set(None)  # a fresh root stack, so exports of earlier runs do not leak in
    # Pulumi's mock runtime uses the thread's current event loop; an earlier asyncio.run() in the
    # same process (other tests) leaves none behind.
    asyncio.set_event_loop(asyncio.new_event_loop())
    mocks = LAST["mocks"] = CloudMocks()
    pulumi.runtime.set_mocks(mocks, project=PROJECT, stack=stack, preview=False,
                             monitor=pulumi.runtime.mocks.MockMonitor(mocks))
    pulumi.runtime.set_all_config({f"{PROJECT}:{k}": _config_text(v) for k, v in config.items()},
                                  secret_keys=[f"{PROJECT}:{k}" for k in secret_keys])
    run = Run(mocks)

    @pulumi.runtime.test
    def _program():
        main()
        exported = dict(pulumi.runtime.get_root_resource().outputs)

        async def resolve():
            for key, value in exported.items():
                out = pulumi.Output.from_input(value)
                run.outputs[key] = await out.future()
                run.secret[key] = await out.is_secret()

        return resolve()

    _program()
    return run


def spec_for(config: Mapping[str, Any], stack: str = STACK) -> EnvSpec:
    """The expectation, computed independently of the program from the same config."""
    return derive(parse(dict(config), env=stack))


def assert_same(expected: Iterable[Any], actual: Iterable[Any], what: str) -> None:
    """Multiset equality: every expected item exactly once, nothing more."""
    exp, act = Counter(expected), Counter(actual)
    missing, extra = exp - act, act - exp
    if missing or extra:
        raise AssertionError(f"{what} differ: missing {sorted(missing.elements())}, "
                             f"unexpected {sorted(extra.elements())}")


def expected_rules(spec: EnvSpec) -> list[tuple]:
    return [r.key for r in spec.cloud_firewall]


def expected_dns(spec: EnvSpec, ip_of: Mapping[str, str], balancer_ip: str | None = None,
                 ) -> dict[tuple[str, str], list[str]]:
    """Each zone record's addresses: its nodes', a balanced record's the balancer's one."""
    return {(rel, rec.type): [balancer_ip] if rec.balancer else sorted(ip_of[n] for n in rec.nodes)
            for rel, rec in spec.dns_zone_records()}


def assert_same_dns(expected: Mapping[tuple[str, str], list[str]], actual: Mapping[tuple[str, str], list[str]]) -> None:
    assert_same([(k, tuple(sorted(v))) for k, v in expected.items()],
                [(k, tuple(sorted(v))) for k, v in actual.items()], "DNS records")
