"""The cloud-init user-data every server starts from, cloud or local.

Pulumi programs pass `render_user_data(...)` as the server's user_data; the local machines
apply the same document to their root file system (infra/local/machines.py), so the deploy
always starts from the same state: root's authorized key, the hostname, /etc/hosts and a
small marker file. Nothing secret goes in here: user-data is readable from the metadata
service of a cloud server.
"""
from __future__ import annotations

import json

import yaml

from infra.spec import EnvSpec, Node

MARKER = "/etc/voicestack/node.json"


def node_fqdn(spec: EnvSpec, node: Node) -> str:
    return f"{node.name}.{spec.config.domain}"


def render_user_data(spec: EnvSpec, node: Node, ssh_public_key: str) -> str:
    """cloud-config YAML for `node`: SSH key for root, hostname, /etc/hosts, node marker."""
    key = ssh_public_key.strip()
    if not key or "\n" in key:
        raise ValueError("ssh_public_key must be one OpenSSH public key line")
    marker = {
        "env": spec.env,
        "node": node.name,
        "index": node.index,
        "roles": sorted(r.value for r in node.roles),
        "private_ip": node.private_ip,
        "domain": spec.config.domain,
    }
    doc = {
        "hostname": node.name,
        "fqdn": node_fqdn(spec, node),
        "preserve_hostname": False,
        "manage_etc_hosts": True,
        "disable_root": False,
        "ssh_pwauth": False,
        "ssh_authorized_keys": [key],
        "package_update": False,
        "package_upgrade": False,
        "write_files": [{
            "path": MARKER,
            "permissions": "0644",
            "owner": "root:root",
            "content": json.dumps(marker, indent=2, sort_keys=True) + "\n",
        }],
    }
    return "#cloud-config\n" + yaml.safe_dump(doc, sort_keys=False, default_flow_style=False)


def etc_hosts(hostname: str, fqdn: str) -> str:
    """What cloud-init's manage_etc_hosts writes on Debian."""
    return (f"127.0.1.1 {fqdn} {hostname}\n"
            "127.0.0.1 localhost\n\n"
            "# The following lines are desirable for IPv6 capable hosts\n"
            f"::1 {fqdn} {hostname}\n"
            "::1 localhost ip6-localhost ip6-loopback\n"
            "ff02::1 ip6-allnodes\n"
            "ff02::2 ip6-allrouters\n")
