"""The base image: a Debian 12 (bookworm) root file system close to a fresh cloud image.

Built once with debootstrap under /var/cache/voicestack/rootfs/ and rebuilt when missing or
when its package list changes. Machines mount it read-only as the lower layer of an overlay; nothing writes to it.
"""
from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

from infra.local import aptproxy, host
from infra.local.names import CACHE

# What a fresh Hetzner / DigitalOcean Debian 12 image has that the deploy may rely on
# (minus cloud-init itself, whose effect machines.py applies from the same user-data).
PACKAGES = ("systemd", "systemd-sysv", "dbus", "libpam-systemd", "openssh-server", "python3", "ca-certificates",
            "iproute2", "iputils-ping", "nftables", "curl", "gnupg", "procps", "less", "netbase", "sudo",
            "debian-archive-keyring", "apt-utils", "cron", "logrotate", "tzdata", "locales", "lsb-release")

IMAGE_DIR = CACHE / "rootfs"


def stamp() -> str:
    return hashlib.sha256(("bookworm minbase " + " ".join(PACKAGES)).encode()).hexdigest()[:16]


def path() -> Path:
    return IMAGE_DIR / f"bookworm-{stamp()}"


def ensure(log: Path) -> tuple[Path, bool]:
    """Return (base image path, built now?); builds it when missing (one builder at a time)."""
    with host.cache_lock("image"):
        return _ensure(log)


def _ensure(log: Path) -> tuple[Path, bool]:
    """Return (rootfs path, built now?)."""
    target = path()
    if (target / "etc" / "voicestack-image").is_file():
        return target, False
    mirrors = aptproxy.host_mirrors()
    tmp = target.with_name(target.name + ".tmp")
    host.stop_pids(host.pids_matching(f"{tmp} "))  # a debootstrap of an interrupted run
    if tmp.exists():
        shutil.rmtree(tmp)
    IMAGE_DIR.mkdir(parents=True, exist_ok=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    cmd = ["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}", aptproxy.SUITE, str(tmp),
           mirrors.debian]
    with open(log, "w") as out:
        import subprocess
        rc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT).returncode
    if rc != 0:
        raise host.LocalEnvError(f"failed to build the base image: {' '.join(cmd)} exited {rc}; see {log}")
    _finish(tmp, mirrors)
    tmp.rename(target)
    # Older images (other package lists) stay: machines may still use them as their lower layer.
    return target, True


def _finish(root: Path, mirrors: aptproxy.Mirrors) -> None:
    # Per-machine identity is made per copy (machines.py), as cloud-init does on first boot.
    for key in (root / "etc" / "ssh").glob("ssh_host_*"):
        key.unlink()
    (root / "etc" / "machine-id").write_text("")
    (root / "var" / "lib" / "dbus" / "machine-id").unlink(missing_ok=True)
    (root / "etc" / "apt" / "sources.list").unlink(missing_ok=True)
    (root / "etc" / "apt" / "sources.list.d" / "debian.sources").write_text(aptproxy.machine_sources(mirrors))
    (root / "etc" / "locale.gen").write_text("en_US.UTF-8 UTF-8\n")
    host.run(["chroot", str(root), "locale-gen"], check=False)
    (root / "etc" / "default" / "locale").write_text("LANG=C.UTF-8\n")
    # No console login prompt on the nspawn console (cloud servers have no console user either).
    for unit in ("console-getty.service", "getty@tty1.service"):
        (root / "etc" / "systemd" / "system" / unit).unlink(missing_ok=True)
        (root / "etc" / "systemd" / "system" / unit).symlink_to("/dev/null")
    host.run(["chroot", str(root), "apt-get", "clean"], check=False)
    (root / "etc" / "voicestack-image").write_text(stamp() + "\n")
