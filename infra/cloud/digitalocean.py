"""DigitalOcean: droplets, cloud firewall, VPC, reserved IPs, DNS and a project for one spec.

Networking (README, "DigitalOcean networking"): media, TURN and SSH use each droplet's own
public IP, which is on eth0 (the `direct` model). One droplet keeps a reserved IP only as the
stable address of the LiveKit name (HTTPS/signalling): it arrives on the droplet's anchor IP on
eth0, where Caddy (80) and the SNI router (443) listen on every address. So there is no
default-route surgery, no anchor address the program cannot know, and media answers from the
address it was sent to. A cluster's LiveKit name is its load balancer instead (the spec's
`Balancer`: TCP passthrough with PROXY protocol to the droplets' VPC addresses, health-checked),
so a cluster has no reserved IPs.
"""
from __future__ import annotations

import pulumi
import pulumi_digitalocean as do

from infra.cloud.components import NodeAddresses, ProgramArgs, ProviderComponent, cloud_name, dns_slug, dns_targets
from infra.cloudinit import render_user_data
from infra.spec import WORLD, EnvSpec

IMAGE = "debian-12-x64"
DNS_TTL = 300
#: DigitalOcean firewalls deny egress that no rule allows (apt, ACME, STUN, speech APIs): allow all.
EGRESS = (("tcp", "1-65535"), ("udp", "1-65535"), ("icmp", None))
NAMESERVERS = ["ns1.digitalocean.com", "ns2.digitalocean.com", "ns3.digitalocean.com"]


class DigitalOceanStack(ProviderComponent):
    """Every DigitalOcean resource of one environment, children of one component."""

    def __init__(self, name: str, args: ProgramArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("DigitalOcean", name, args, opts)
        spec = args.spec
        cfg = spec.config

        key = do.SshKey(f"{name}-ssh-key", name=cloud_name(spec), public_key=cfg.ssh_public_key, opts=self._child())
        # The firewall applies by tag, so a droplet is covered from the moment it exists.
        self.tag = do.Tag(f"{name}-tag", name=cloud_name(spec), opts=self._child())
        # DigitalOcean's firewall filters traffic between droplets too, VPC included: the spec's
        # node-to-node flows are allowed from the environment's own droplets, by their tag.
        self.firewall = do.Firewall(
            f"{name}-firewall", name=cloud_name(spec), tags=[self.tag.name], opts=self._child(),
            inbound_rules=[*(do.FirewallInboundRuleArgs(protocol=r.protocol, port_range=r.port_range,
                                                        source_addresses=list(r.sources))
                             for r in spec.cloud_firewall),
                           *(do.FirewallInboundRuleArgs(protocol=r.protocol, port_range=r.port_range,
                                                        source_tags=[self.tag.name])
                             for r in spec.node_firewall)],
            outbound_rules=[do.FirewallOutboundRuleArgs(protocol=proto, port_range=ports,
                                                        destination_addresses=list(WORLD))
                            for proto, ports in EGRESS])

        self.vpc = None
        if spec.multi_node:
            self.vpc = do.Vpc(f"{name}-vpc", name=cloud_name(spec), region=cfg.region, ip_range=cfg.private_network,
                              description=f"voicestack {spec.env}: node-to-node traffic (Redis)", opts=self._child())

        self.droplets: dict[str, do.Droplet] = {}
        self.reserved_ips: dict[str, do.ReservedIp] = {}
        for node in spec.nodes:
            droplet = do.Droplet(
                f"{name}-{node.name}",
                name=cloud_name(spec, node),
                image=IMAGE,
                size=cfg.server_type,
                region=cfg.region,
                ssh_keys=[key.fingerprint],
                vpc_uuid=self.vpc.id if self.vpc else None,
                ipv6=False,
                monitoring=True,
                tags=[self.tag.name],
                user_data=render_user_data(spec, node, cfg.ssh_public_key),
                # user_data only runs at first boot; a changed template must not replace live droplets.
                opts=self._child(depends_on=[self.firewall], ignore_changes=["userData"]),
            )
            if spec.balancer is None:
                # The reserved IP outlives a droplet rebuild, so the LiveKit name keeps its address.
                rip = do.ReservedIp(f"{name}-{node.name}-ip", region=cfg.region, opts=self._child())
                do.ReservedIpAssignment(f"{name}-{node.name}-ip-assignment", ip_address=rip.ip_address,
                                        droplet_id=droplet.id.apply(int), opts=self._child())
                self.reserved_ips[node.name] = rip
            self.droplets[node.name] = droplet
            self.nodes.append(NodeAddresses(
                node=node, public_ip=droplet.ipv4_address,
                # DigitalOcean hands out VPC addresses itself; the deploy reads them from the outputs.
                private_ip=droplet.ipv4_address_private if self.vpc else None,
                server_id=droplet.id))

        self.load_balancer = None
        if spec.balancer is not None:
            self._balancer(name, spec)
            self._publish_balancer(self.load_balancer.ip)
        else:
            livekit = next(r for r in spec.dns_records if r.name == cfg.livekit_host)
            self.dns_overrides[livekit.name] = [self.reserved_ips[n].ip_address for n in livekit.nodes]
        self.domain = do.Domain(f"{name}-domain", name=cfg.domain, opts=self._child())
        self.records = [
            do.DnsRecord(f"{name}-dns-{dns_slug(rel)}-{i}", domain=self.domain.id, type=rec.type, name=rel,
                         value=ip, ttl=DNS_TTL, opts=self._child())
            for rel, rec, ips in dns_targets(spec, self.nodes, self.dns_overrides) for i, ip in enumerate(ips)]

        self.project = do.Project(
            f"{name}-project", name=cloud_name(spec), purpose="Service or API", environment="Production",
            description=f"voicestack environment {spec.env}", opts=self._child(),
            resources=[*(d.droplet_urn for d in self.droplets.values()),
                       *(r.reserved_ip_urn for r in self.reserved_ips.values()),
                       *([self.load_balancer.load_balancer_urn] if self.load_balancer else []),
                       self.domain.domain_urn])

        # Delegate the zone to these (docs/cloud.md).
        self.info.update({"dns_nameservers": NAMESERVERS})
        self._finish()

    def _balancer(self, name: str, spec: EnvSpec) -> None:
        """The spec's balancer in the VPC: TCP forwards with PROXY protocol to the droplets, an HTTP
        health check, and a firewall of its own that lets only this balancer reach the droplets'
        balancer ports (a second firewall on the tag: the first one exists before any droplet,
        the balancer only after them)."""
        lb = spec.balancer
        assert lb is not None and self.vpc is not None
        hc = lb.health
        self.load_balancer = do.LoadBalancer(
            f"{name}-lb", name=cloud_name(spec), region=spec.config.region, vpc_uuid=self.vpc.id,
            droplet_ids=[self.droplets[n].id.apply(int) for n in lb.targets],
            forwarding_rules=[do.LoadBalancerForwardingRuleArgs(entry_protocol="tcp", entry_port=svc.listen_port,
                                                                target_protocol="tcp", target_port=svc.target_port)
                              for svc in lb.services],
            # DigitalOcean writes PROXY v1 (its docs), not the v2 the spec names: the nodes' PROXY
            # listeners (Caddy's wrapper, nginx) read either version.
            enable_proxy_protocol=True,
            healthcheck=do.LoadBalancerHealthcheckArgs(
                protocol="http", port=hc.port, path=hc.path, check_interval_seconds=hc.interval_s,
                response_timeout_seconds=hc.timeout_s, unhealthy_threshold=hc.retries, healthy_threshold=hc.retries),
            opts=self._child())
        ports = sorted({svc.target_port for svc in lb.services} | {hc.port})
        self.lb_firewall = do.Firewall(
            f"{name}-lb-firewall", name=f"{cloud_name(spec)}-lb", tags=[self.tag.name], opts=self._child(),
            inbound_rules=[do.FirewallInboundRuleArgs(protocol="tcp", port_range=str(port),
                                                      source_load_balancer_uids=[self.load_balancer.id])
                           for port in ports])
