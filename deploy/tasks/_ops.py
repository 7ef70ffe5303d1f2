"""Small operations the service tasks share (pyinfra ships none of these); facts are in _facts.py.

Restarts are decided on the node, not remembered by the deploy: a service restarts when it is
older than any of its inputs (binary, config, unit). So a deploy interrupted between writing a
config and restarting still restarts on the next run, and a second converge changes nothing.
"""
from __future__ import annotations

import shlex
from datetime import datetime, timedelta, timezone
from pathlib import PurePosixPath

from pyinfra import host
from pyinfra.api import operation
from pyinfra.facts.deb import DebPackages
from pyinfra.facts.files import File, Sha256File
from pyinfra.facts.server import Date
from pyinfra.operations import files

from deploy.tasks._facts import ServiceState, Sha512File

POLICY_RC_D = "/usr/sbin/policy-rc.d"
#: Digest algorithm -> the fact that reads a file's digest on the node.
HASH_FACTS = {"sha256": Sha256File, "sha512": Sha512File}


@operation()
def service_current(service: str, paths: tuple[str, ...] = (), check: str | None = None):
    """
    Start a unit that is not running; restart one older than its inputs (config, binary, unit).

    + service: unit name, e.g. "livekit.service"
    + paths: files whose change requires a restart, e.g. ("/etc/livekit/livekit.yaml",)
    + check: the daemon's own config check, run before any restart, e.g. "sshd -t"

    Example: service_current(name="Restart LiveKit if its config changed", service="livekit.service",
             paths=("/etc/livekit/livekit.yaml",))
    """
    state = host.get_fact(ServiceState, service=service, paths=tuple(paths))
    if state["masked"]:
        yield f"systemctl unmask {shlex.quote(service)}"
    if state["needs_daemon_reload"]:
        yield "systemctl daemon-reload"
    if state["active"] and not state["stale"]:
        return
    if check:
        yield check
    yield f"systemctl {'restart' if state['active'] else 'start'} {shlex.quote(service)}"


@operation()
def unmask(service: str):
    """
    Unmask a systemd unit (masked while its package was installed).

    + service: unit name, e.g. "coturn.service"
    """
    if host.get_fact(ServiceState, service=service)["masked"]:
        yield f"systemctl unmask {shlex.quote(service)}"


@operation()
def mask(service: str):
    """
    Mask a systemd unit so that nothing (package scripts, a reboot) can start it.

    + service: unit name, e.g. "coturn.service"
    """
    if not host.get_fact(ServiceState, service=service)["masked"]:
        yield f"systemctl mask {shlex.quote(service)}"


@operation()
def install_validated(src: str, dest: str, check: str | None = None, apply: str | None = None,
                      mode: str = "644", user: str = "root", group: str = "root"):
    """
    Copy a staged file over the live one when they differ, after a check of the staged file.

    + src: the staged file on the node, e.g. "/etc/nftables.conf.staged"
    + dest: the live file, e.g. "/etc/nftables.conf"
    + check: a command that validates {path}, e.g. "nft -c -f {path}"; on failure nothing changes
    + apply: a command that puts {path} into effect before it becomes the live file, e.g. "nft -f {path}";
      the live file is written last, so an interrupted run applies it again next time
    """
    if host.get_fact(Sha256File, path=src) == host.get_fact(Sha256File, path=dest):
        return
    if check:
        yield check.format(path=shlex.quote(src))
    if apply:
        yield apply.format(path=shlex.quote(src))
    tmp = shlex.quote(dest + ".new")
    yield (f"install -m {mode} -o {user} -g {group} {shlex.quote(src)} {tmp} && "
           f"mv -f {tmp} {shlex.quote(dest)}")


APT_INSTALL = ("DEBIAN_FRONTEND=noninteractive apt-get -y -o Dpkg::Options::=--force-confdef "
               "-o Dpkg::Options::=--force-confold install --no-install-recommends")
#: apt's own network timeouts do not cover every stall: in a CI run an `apt-get update` through the
#: apt proxy hung for 20 minutes with no connection open (apt-get and its http method each waiting
#: for the other), and the deploy with it. What apt fetches is therefore bounded per attempt (a
#: first deploy's largest download takes well under a minute here) and tried again: killing a
#: fetch loses nothing, apt resumes from its partial files. Installing (dpkg) is never killed:
#: apt_install downloads under the bound first, then installs from the local archive.
APT_FETCH_TIMEOUT = 300
#: The index alone is a few MB (a fresh node's refresh took ~1 s through the local apt proxy).
#: In a later CI run one of three nodes refreshing at once got a 235-byte answer for one
#: InRelease from apt-cacher-ng and hung until the bound; its second attempt took 1 s. A
#: shorter bound for the index turns that 5 min stall into 1.5 min.
APT_UPDATE_TIMEOUT = 90
APT_FETCH_ATTEMPTS = 3
APT_UPDATE_STAMP = "/var/lib/apt/periodic/update-success-stamp"   # what pyinfra's apt.update reads too


def bounded_fetch(command: str, what: str, timeout: int | None = None) -> str:
    """`command` (an apt fetch) in a shell loop: at most `timeout` (default APT_FETCH_TIMEOUT) s
    per attempt (then TERM, KILL 10 s later), APT_FETCH_ATTEMPTS attempts; fails with a line
    naming `what`."""
    n, t = APT_FETCH_ATTEMPTS, APT_FETCH_TIMEOUT if timeout is None else timeout
    return (f"for attempt in $(seq 1 {n}); do timeout -k 10 {t} {command} && exit 0; "
            f"echo \"{what}: attempt $attempt of {n} failed or took over {t} s\" >&2; "
            f"[ $attempt -lt {n} ] && sleep 5; done; exit 1")


@operation()
def apt_update(cache_time: int = 3600):
    """
    Refresh the apt index unless it was refreshed within `cache_time` seconds, each attempt bounded
    (bounded_fetch).

    + cache_time: seconds an index refresh stays fresh (the stamp pyinfra's apt.update keeps)
    """
    stamp = host.get_fact(File, path=APT_UPDATE_STAMP)
    if stamp and stamp.get("mtime"):
        # As pyinfra's apt.update: the node's clock, its stamp's mtime read as UTC.
        now = datetime.fromtimestamp(host.get_fact(Date).timestamp(), timezone.utc).replace(tzinfo=None)
        if stamp["mtime"] > now - timedelta(seconds=cache_time):
            host.noop("the apt index is fresh")
            return
    yield bounded_fetch("apt-get update", "apt-get update", APT_UPDATE_TIMEOUT)
    yield f"mkdir -p {shlex.quote(str(PurePosixPath(APT_UPDATE_STAMP).parent))} && touch {APT_UPDATE_STAMP}"


@operation()
def apt_install(packages: list[str], block_starts: bool = True, extra_install_args: str | None = None):
    """
    Install the Debian packages that are missing, with no daemon starting while apt runs.

    With block_starts, /usr/sbin/policy-rc.d exists only for that one command: the shell's trap
    removes it when apt ends, fails or the connection drops (an apt failure must not leave
    daemon starts blocked on the node until some later deploy, e.g. for unattended upgrades).

    + packages: Debian package names, e.g. ["coturn"]
    + block_starts: forbid daemon starts from the packages' scripts (policy-rc.d exit 101)
    + extra_install_args: more apt-get install arguments, e.g. "-t bookworm-backports"
    """
    installed = host.get_fact(DebPackages)
    missing = [p for p in packages if p not in installed]
    if not missing:
        return
    q = shlex.quote
    extra = [extra_install_args] if extra_install_args else []
    # The download is the part that can stall (bounded_fetch); the install then reads the archive.
    yield bounded_fetch(" ".join(["apt-get -y -q --download-only install --no-install-recommends", *extra,
                                  *map(q, missing)]), f"downloading {' '.join(missing)}")
    install = " ".join([APT_INSTALL, *extra, *map(q, missing)])
    if not block_starts:
        yield install
        return
    yield (f"trap 'rm -f {POLICY_RC_D}' EXIT HUP INT TERM; "
           f"printf '%s\\n' '#!/bin/sh' '# voicestack deploy: no daemon starts while packages install' 'exit 101' "
           f"> {POLICY_RC_D} && chmod 755 {POLICY_RC_D} && {install}")


def install_packages(packages: list[str], block_starts: bool = True, name: str | None = None,
                     masked: tuple[str, ...] = (), extra_install_args: str | None = None):
    """Install Debian packages without letting their daemons start with the package defaults.

    Daemon starts are blocked with policy-rc.d while apt runs (the default coturn config is an
    open relay, the default nginx site takes port 80 from Caddy). Units in `masked` are also
    masked first, so a reboot in the middle of an interrupted deploy cannot start them either;
    their task unmasks them once its own config is in place.
    """
    installed = host.get_fact(DebPackages)
    if block_starts and any(p not in installed for p in packages):
        for unit in masked:
            mask(name=f"Mask {unit} until it is configured", service=unit)
    apt_install(name=name or f"Install {', '.join(packages)}", packages=packages, block_starts=block_starts,
                extra_install_args=extra_install_args)


def allow_daemon_starts():
    """Remove a policy-rc.d that an older deploy interrupted mid-install may have left behind."""
    files.file(name="Allow daemon starts (no policy-rc.d left from an interrupted install)", path=POLICY_RC_D,
               present=False)


@operation()
def fetch_verified(url: str, dest: str, digest: str, algorithm: str = "sha256", mode: str = "644"):
    """
    Download a file to a staging name, check its digest, and only then move it to `dest`.

    A mismatch (or a failed download) removes the partial file and fails the host with the
    expected and actual digests; nothing else has been touched at that point.

    + url: where to download from, e.g. "https://github.com/.../livekit_1.13.5_linux_amd64.tar.gz"
    + dest: the verified file, e.g. "/var/cache/voicestack/artifacts/livekit_1.13.5_linux_amd64.tar.gz"
    + digest: the expected digest (hex)
    + algorithm: "sha256" or "sha512" (what the project publishes; checked with coreutils' <algorithm>sum)
    """
    if algorithm not in HASH_FACTS:
        raise ValueError(f"fetch_verified: unknown algorithm {algorithm!r}; use one of {', '.join(HASH_FACTS)}")
    if host.get_fact(HASH_FACTS[algorithm], path=dest) == digest:
        return
    q = shlex.quote
    yield (
        f"tmp=$(mktemp {q(dest)}.part.XXXXXX) || exit 1; "
        f"if ! curl -sSLf --connect-timeout 10 --retry 2 -o \"$tmp\" {q(url)}; then rm -f \"$tmp\"; "
        f"echo \"download failed: {url}; nothing was installed\" >&2; exit 1; fi; "
        f"got=$({algorithm}sum \"$tmp\" | cut -d' ' -f1); "
        f"if [ \"$got\" != {q(digest)} ]; then rm -f \"$tmp\"; "
        f"echo \"{algorithm} mismatch for {url}: expected {digest}, got $got; nothing was installed\" >&2; exit 1; fi; "
        f"chmod {mode} \"$tmp\" && mv -f \"$tmp\" {q(dest)}"
    )


@operation()
def extract_once(tarball: str, dest_dir: str, expect: str):
    """
    Extract a verified tarball into its own directory (atomically renamed into place), once.

    + tarball: the verified archive, e.g. "/var/cache/voicestack/artifacts/livekit_1.13.5_linux_amd64.tar.gz"
    + dest_dir: the directory to create, e.g. "/opt/voicestack/livekit-1.13.5-0123abcd"
    + expect: a file the archive must contain, e.g. "livekit-server"
    """
    from pyinfra.facts.files import File

    if host.get_fact(File, path=f"{dest_dir}/{expect}"):
        return
    q = shlex.quote
    yield (
        f"rm -rf {q(dest_dir)}; tmp=$(mktemp -d {q(dest_dir)}.part.XXXXXX) || exit 1; "
        f"tar -xzf {q(tarball)} -C \"$tmp\" || {{ rm -rf \"$tmp\"; exit 1; }}; "
        f"if [ ! -f \"$tmp\"/{q(expect)} ]; then rm -rf \"$tmp\"; "
        f"echo \"{tarball} has no {expect}; nothing was installed\" >&2; exit 1; fi; "
        f"chmod 755 \"$tmp\" && mv \"$tmp\" {q(dest_dir)}"
    )


def put_rendered(name: str, service: str, template: str, dest: str, variables: dict, mode: str,
                 user: str = "root", group: str = "root"):
    """Render templates/<service>/<template> locally (the same path the tests use) and upload it."""
    import io

    from deploy.render import render

    return files.put(name=name, src=io.StringIO(render(service, template, variables)), dest=dest,
                     user=user, group=group, mode=mode)
