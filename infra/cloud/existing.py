"""Bring-your-own hosts (`hosts` in the stack config): no cloud resources, outputs from the host list.

The cloud firewall (security group, provider panel) is the operator's job here; the spec says so
(`cloud_firewall_managed` is false) and the stack output `info.cloud_firewall_rules` lists the
rules to apply, from the same spec.
"""
from __future__ import annotations

import pulumi

from infra.cloud.components import NodeAddresses, ProgramArgs, ProviderComponent


class ExistingHosts(ProviderComponent):
    """The operator's hosts as nodes of the spec."""

    def __init__(self, name: str, args: ProgramArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("Existing", name, args, opts)
        spec = args.spec
        hosts = {h.name: h for h in spec.config.hosts}
        for node in spec.nodes:
            self.nodes.append(NodeAddresses(node=node, public_ip=hosts[node.name].public_ip,
                                            private_ip=node.private_ip, interface_ip=hosts[node.name].interface_ip))
        self.info.update({
            "cloud_firewall_rules": [{"protocol": r.protocol, "ports": r.port_range, "sources": list(r.sources),
                                      "description": r.description} for r in spec.cloud_firewall],
            # Where the provider's firewall also filters traffic between your hosts (a security group
            # around them): allow these from the hosts themselves.
            "node_firewall_rules": [{"protocol": r.protocol, "ports": r.port_range, "sources": "the hosts",
                                     "description": r.description} for r in spec.node_firewall],
            "warnings": list(spec.config.warnings),
        })
        self._finish()
