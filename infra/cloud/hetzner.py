"""Hetzner Cloud: servers, cloud firewall, primary IPs, private network and Cloud DNS for one spec."""
from __future__ import annotations

import pulumi
import pulumi_hcloud as hcloud

from infra.cloud.components import NodeAddresses, ProgramArgs, ProviderComponent, cloud_name, dns_slug, dns_targets
from infra.cloudinit import render_user_data
from infra.spec import EnvSpec

IMAGE = "debian-12"
#: The network zone a location's servers can join (Hetzner networks are per zone).
NETWORK_ZONES = {"nbg1": "eu-central", "fsn1": "eu-central", "hel1": "eu-central",
                 "ash": "us-east", "hil": "us-west", "sin": "ap-southeast"}
DNS_TTL = 300
#: The smallest Hetzner load balancer (25 services, 25 targets, 10,000 connections): enough for
#: signalling, since media and TURN go to the nodes directly.
LB_TYPE = "lb11"


class HetznerStack(ProviderComponent):
    """Every Hetzner resource of one environment, children of one component."""

    def __init__(self, name: str, args: ProgramArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("Hetzner", name, args, opts)
        spec = args.spec
        cfg = spec.config
        labels = {"voicestack-env": cloud_name(spec)}

        key = hcloud.SshKey(f"{name}-ssh-key", name=cloud_name(spec), public_key=cfg.ssh_public_key,
                            labels=labels, opts=self._child())
        # One hcloud rule per spec rule: the spec decides what is open, nothing is added here.
        self.firewall = hcloud.Firewall(
            f"{name}-firewall", name=cloud_name(spec), labels=labels, opts=self._child(),
            rules=[hcloud.FirewallRuleArgs(direction="in", protocol=r.protocol, port=r.port_range,
                                           source_ips=list(r.sources), description=r.description[:255])
                   for r in spec.cloud_firewall])

        self.network = self.subnet = None
        if spec.multi_node:
            self.network = hcloud.Network(f"{name}-network", name=cloud_name(spec), ip_range=cfg.private_network,
                                          labels=labels, opts=self._child())
            self.subnet = hcloud.NetworkSubnet(f"{name}-subnet", network_id=self.network.id.apply(int),
                                               type="cloud", network_zone=NETWORK_ZONES[cfg.region],
                                               ip_range=cfg.private_network, opts=self._child())

        self.primary_ips: dict[str, hcloud.PrimaryIp] = {}
        self.servers: dict[str, hcloud.Server] = {}
        for node in spec.nodes:
            node_labels = {**labels, "voicestack-node": node.name}
            # auto_delete=False: the address outlives a server rebuild, so DNS and clients keep it.
            ip = hcloud.PrimaryIp(f"{name}-{node.name}-ipv4", name=cloud_name(spec, node), type="ipv4",
                                  location=cfg.region, assignee_type="server", auto_delete=False,
                                  labels=node_labels, opts=self._child())
            networks = None
            if self.network is not None:
                networks = [hcloud.ServerNetworkArgs(network_id=self.network.id.apply(int), ip=node.private_ip)]
            server = hcloud.Server(
                f"{name}-{node.name}",
                name=cloud_name(spec, node),
                server_type=cfg.server_type,
                image=IMAGE,
                location=cfg.region,
                ssh_keys=[key.id],
                firewall_ids=[self.firewall.id.apply(int)],  # attached before first boot
                public_nets=[hcloud.ServerPublicNetArgs(ipv4_enabled=True, ipv4=ip.id.apply(int),
                                                        ipv6_enabled=False)],
                networks=networks,
                user_data=render_user_data(spec, node, cfg.ssh_public_key),
                labels=node_labels,
                # user_data only runs at first boot; a changed template must not replace live servers.
                opts=self._child(depends_on=[self.subnet] if self.subnet else [], ignore_changes=["userData"]),
            )
            self.primary_ips[node.name] = ip
            self.servers[node.name] = server
            self.nodes.append(NodeAddresses(node=node, public_ip=ip.ip_address, private_ip=node.private_ip,
                                            server_id=server.id))

        self.load_balancer = None
        if spec.balancer is not None:
            self._balancer(name, spec, labels)

        self.zone = hcloud.Zone(f"{name}-zone", name=cfg.domain, mode="primary", ttl=3600, labels=labels,
                                opts=self._child())
        self.rrsets = [
            hcloud.ZoneRrset(f"{name}-dns-{dns_slug(rel)}", zone=self.zone.name, name=rel, type=rec.type,
                             ttl=DNS_TTL, records=[hcloud.ZoneRrsetRecordArgs(value=ip) for ip in ips],
                             labels=labels, opts=self._child())
            for rel, rec, ips in dns_targets(spec, self.nodes, self.dns_overrides)]

        # Delegate the zone to these (docs/cloud.md).
        self.info.update({
            "dns_nameservers": self.zone.authoritative_nameservers.apply(
                lambda ns: list(ns.assigneds or []) if ns else []),
        })
        self._finish()

    def _balancer(self, name: str, spec: EnvSpec, labels: dict[str, str]) -> None:
        """The spec's balancer: TCP services with PROXY v2 and HTTP health checks, the servers as
        targets on their private addresses (the nodes' balancer ports listen only there)."""
        lb = spec.balancer
        assert lb is not None and self.network is not None
        cfg = spec.config
        self.load_balancer = hcloud.LoadBalancer(
            f"{name}-lb", name=cloud_name(spec), load_balancer_type=LB_TYPE, location=cfg.region, labels=labels,
            # Calls last long: the target with the fewest connections gets the next one.
            algorithm=hcloud.LoadBalancerAlgorithmArgs(type="least_connections"), opts=self._child())
        lb_id = self.load_balancer.id.apply(int)
        attached = hcloud.LoadBalancerNetwork(
            f"{name}-lb-network", load_balancer_id=lb_id, network_id=self.network.id.apply(int), ip=lb.private_ip,
            opts=self._child(depends_on=[self.subnet] if self.subnet else []))
        hc = lb.health
        self.lb_services = [
            hcloud.LoadBalancerService(
                f"{name}-lb-{svc.name}", load_balancer_id=self.load_balancer.id, protocol="tcp",
                listen_port=svc.listen_port, destination_port=svc.target_port, proxyprotocol=True,
                health_check=hcloud.LoadBalancerServiceHealthCheckArgs(
                    protocol="http", port=hc.port, interval=hc.interval_s, timeout=hc.timeout_s, retries=hc.retries,
                    http=hcloud.LoadBalancerServiceHealthCheckHttpArgs(path=hc.path, status_codes=["200"])),
                opts=self._child())
            for svc in lb.services]
        self.lb_targets = [
            hcloud.LoadBalancerTarget(f"{name}-lb-target-{node}", load_balancer_id=lb_id, type="server",
                                      server_id=self.servers[node].id.apply(int), use_private_ip=True,
                                      opts=self._child(depends_on=[attached]))
            for node in lb.targets]
        self._publish_balancer(self.load_balancer.ipv4)
