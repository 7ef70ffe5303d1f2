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


def redis_cli(auth_file: str, host: str, port: int, *args: str, timeout: int = 5) -> str:
    """A redis-cli command that authenticates with the `requirepass` line of `auth_file` (a seed file
    the deploy keeps on the node) through REDISCLI_AUTH: the password is in no argv and no log."""
    q = shlex.quote
    return (f"REDISCLI_AUTH=\"$(sed -n 's/^requirepass //p' {q(auth_file)})\" timeout {timeout} "
            f"redis-cli --no-auth-warning -h {q(host)} -p {int(port)} " + " ".join(q(a) for a in args))


class SeedState(FactBase):
    """True when `dest` exists and was made from the current `seed` (the sha256 in `stamp` matches).

    For files a daemon rewrites itself (redis.conf, sentinel.conf): their content says nothing about
    whether the deploy's inputs changed, the seed's hash does."""

    def command(self, seed: str, dest: str, stamp: str) -> str:
        s, d, t = (shlex.quote(p) for p in (seed, dest, stamp))
        return (f'if [ -f {d} ] && [ -f {t} ] && [ -f {s} ] && '
                f'[ "$(sha256sum < {s} | cut -d" " -f1)" = "$(cat {t})" ]; then echo current; else echo stale; fi')

    def process(self, output):
        return bool(output) and output[0].strip() == "current"


class RedisPrimary(FactBase):
    """What the cluster's Sentinels say the current Redis primary is, asked from this node:
    `{"primary": "ip:port" | None, "answers": {sentinel ip: "ip:port" | None}, "agreed": bool}`.

    primary is the answer of a strict majority of the Sentinels that answered (None when none
    answered: a cluster not deployed yet); agreed is False when answers exist but no majority."""

    def command(self, sentinels: tuple[str, ...], port: int, master: str, auth_file: str) -> str:
        asks = " ".join(
            f"( r=$({redis_cli(auth_file, ip, port, 'SENTINEL', 'get-master-addr-by-name', master, timeout=3)} "
            f"2>/dev/null | tr '\\n' ' '); echo \"sentinel={ip} $r\" ) &" for ip in sentinels)
        return (f"command -v redis-cli >/dev/null 2>&1 && [ -r {shlex.quote(auth_file)} ] || exit 0; "
                f"{asks} wait")

    def process(self, output):
        answers: dict[str, str | None] = {}
        for line in output:
            if not line.startswith("sentinel="):
                continue
            who, *words = line.removeprefix("sentinel=").split()
            ok = len(words) == 2 and words[1].isdigit() and words[0].count(".") == 3
            answers[who] = f"{words[0]}:{words[1]}" if ok else None
        given = [a for a in answers.values() if a]
        best = max(set(given), key=given.count) if given else None
        agreed = best is not None and given.count(best) * 2 > len(given)
        return {"primary": best if agreed else None, "answers": answers, "agreed": agreed or not given}

    def default(self):
        return {"primary": None, "answers": {}, "agreed": True}


class SentinelMaster(FactBase):
    """A Sentinel's (by default the local one's) view of a monitored master (`SENTINEL MASTER <name>` as a dict of
    strings: quorum, down-after-milliseconds, failover-timeout, ip, port, flags...); {} if it does
    not answer."""

    def command(self, port: int, master: str, auth_file: str, host: str = "127.0.0.1") -> str:
        return (f"command -v redis-cli >/dev/null 2>&1 && [ -r {shlex.quote(auth_file)} ] || exit 0; "
                f"{redis_cli(auth_file, host, port, 'SENTINEL', 'MASTER', master)} 2>/dev/null || true")

    def process(self, output):
        lines = [line.strip() for line in output]
        if len(lines) < 2 or len(lines) % 2 or " " in lines[0]:
            return {}  # an error reply ("ERR No such master ..."), or nothing
        return dict(zip(lines[0::2], lines[1::2]))

    def default(self):
        return {}
