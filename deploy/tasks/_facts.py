"""Facts the tasks share: each a shell command and a pure parser of its output (unit-tested as data)."""
from __future__ import annotations

import shlex

from pyinfra.api import FactBase
from pyinfra.facts.files import HashFileFactBase


class ServiceState(FactBase):
    """`{"active": bool, "stale": bool, "masked": bool}` of a systemd unit given its input files.

    stale: the unit is active and one of `paths` changed after it (re)started.
    """

    def command(self, service: str, paths: tuple[str, ...] = ()) -> str:
        s = shlex.quote(service)
        checks = " ".join(shlex.quote(p) for p in paths)
        return (
            f"a=$(systemctl is-active {s} 2>/dev/null || true); e=$(systemctl is-enabled {s} 2>/dev/null || true); "
            f"t=$(systemctl show -p ActiveEnterTimestamp --value {s} 2>/dev/null); "
            'st=0; [ -n "$t" ] && st=$(date -d "$t" +%s 2>/dev/null || echo 0); stale=no; '
            f'for f in {checks}; do [ -e "$f" ] && [ "$(stat -c %Y "$f")" -gt "$st" ] && stale=yes; done; '
            'echo "active=$a"; echo "enabled=$e"; echo "stale=$stale"; '
            f'echo "reload=$(systemctl show -p NeedDaemonReload --value {s} 2>/dev/null)"'
        )

    def process(self, output):
        values = dict(line.split("=", 1) for line in output if "=" in line)
        active = values.get("active") == "active"
        return {"active": active, "masked": values.get("enabled") == "masked",
                "stale": active and values.get("stale") == "yes",
                "needs_daemon_reload": values.get("reload") == "yes"}


class IsContainer(FactBase):
    """True inside a container (systemd-nspawn, lxc...): some host settings belong to the host."""

    def command(self) -> str:
        return "systemd-detect-virt --container >/dev/null 2>&1 && echo yes || echo no"

    def process(self, output):
        return bool(output) and output[0].strip() == "yes"


class NewestFile(FactBase):
    """Path of the newest file matching a shell glob, or None."""

    def command(self, pattern: str) -> str:
        return f"ls -1t {pattern} 2>/dev/null | head -n1 || true"

    def process(self, output):
        return output[0].strip() if output and output[0].strip() else None


class Sha512File(HashFileFactBase, digits=128, cmds=["sha512sum", "shasum -a 512", "sha512"]):
    """sha512 of a file, or None when it does not exist (pyinfra ships sha1/256/384 and md5 only;
    Caddy publishes sha512 checksums)."""


class OpenFilesHardLimit(FactBase):
    """The hard RLIMIT_NOFILE of PID 1 (int; None: unlimited or unreadable). No unit can go above it:
    systemd sets a unit's LimitNOFILE= as close as it may (inside a container without
    CAP_SYS_RESOURCE that is the container's own limit, e.g. 20000 on the local machines)."""

    def command(self) -> str:
        return "awk '/^Max open files/ {print $5}' /proc/1/limits"

    def process(self, output):
        value = output[0].strip() if output else ""
        return int(value) if value.isdigit() else None
