"""Machines that behave like fresh VPSs: systemd-nspawn containers booted with systemd.

Each machine's root is an overlay mount of the base image under
/var/lib/voicestack/<env>/<node>/rootfs (its own changes in ./upper),
given the same cloud-init user-data a cloud server gets (infra/cloudinit.py), booted with
`systemd-nspawn -b` in its own network namespace, and ready when SSH answers.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import yaml

from infra import cloudinit
from infra.local import aptproxy, host
from infra.local.names import RUN, EnvNames
from infra.spec import EnvSpec, Node

BOOT_DEADLINE_S = 90
ACME_SERVER_CA_NAME = "voicestack-acme-server.crt"
ACME_ROOT_NAME = "voicestack-acme-root.crt"


# ---- the operator's key -----------------------------------------------------------------------

def ensure_ssh_key(names: EnvNames) -> tuple[Path, str]:
    """The env's project key (root on every machine authorises it)."""
    names.ssh_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    if not names.ssh_key.exists():
        host.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"voicestack-{names.env}",
                  "-f", str(names.ssh_key)], what="generate the env's SSH key")
    return names.ssh_key, names.ssh_key.with_suffix(".pub").read_text().strip()


def ssh_command(names: EnvNames, ip: str, *remote: str, timeout: int = 3) -> list[str]:
    return ["ssh", "-i", str(names.ssh_key), "-o", "BatchMode=yes", "-o", f"ConnectTimeout={timeout}",
            "-o", f"UserKnownHostsFile={names.known_hosts}", "-o", "StrictHostKeyChecking=yes",
            "-o", "LogLevel=ERROR", f"root@{ip}", *remote]


def ssh(names: EnvNames, ip: str, *remote: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
    return host.run(ssh_command(names, ip, *remote), check=check, timeout=timeout, what=f"run over SSH on {ip}")


# ---- root file systems ------------------------------------------------------------------------

def rootfs(names: EnvNames, node: Node) -> Path:
    return names.machine_dir(node.name) / "rootfs"


def is_mounted(path: Path) -> bool:
    with open("/proc/self/mountinfo") as fh:
        return any(line.split()[4] == str(path) for line in fh)


def ensure_rootfs(names: EnvNames, node: Node, base: Path) -> bool:
    """Mount `node`'s root: an overlay of its own upper layer on the base image (instant, and a
    machine's changes stay in its upper layer). Returns True when the machine is new."""
    mdir = names.machine_dir(node.name)
    target, upper, work, lower_file = mdir / "rootfs", mdir / "upper", mdir / "work", mdir / "lower"
    if is_mounted(target):
        return False
    if not upper.exists() and (target / "etc" / "voicestack-image").exists():
        return False  # a full copy made by an earlier version: keep using it as it is
    new = not upper.exists()
    lower = Path(lower_file.read_text().strip()) if lower_file.exists() else base
    if not (lower / "etc" / "voicestack-image").exists():
        lower = base  # the image it was made from is gone: the rebuilt one has the same packages
    for d in (target, upper, work):
        d.mkdir(parents=True, exist_ok=True)
    host.run(["mount", "-t", "overlay", f"vs-{names.env}-{node.name}", "-o",
              f"lowerdir={lower},upperdir={upper},workdir={work}", str(target)],
             what=f"mount the root of {node.name}")
    lower_file.write_text(f"{lower}\n")
    return new


def unmount_rootfs(names: EnvNames, node_name: str) -> None:
    target = names.machine_dir(node_name) / "rootfs"
    if is_mounted(target):
        host.run(["umount", str(target)], check=False)
        if is_mounted(target):
            host.run(["umount", "-l", str(target)], check=False)


def apply_user_data(root: Path, user_data: str) -> None:
    """Apply the cloud-config subset render_user_data() emits, as cloud-init would at first boot."""
    doc = yaml.safe_load(user_data)
    hostname = doc["hostname"]
    (root / "etc" / "hostname").write_text(hostname + "\n")
    if doc.get("manage_etc_hosts"):
        (root / "etc" / "hosts").write_text(cloudinit.etc_hosts(hostname, doc.get("fqdn", hostname)))
    ssh_dir = root / "root" / ".ssh"
    ssh_dir.mkdir(mode=0o700, exist_ok=True)
    (ssh_dir / "authorized_keys").write_text("".join(k + "\n" for k in doc.get("ssh_authorized_keys", [])))
    (ssh_dir / "authorized_keys").chmod(0o600)
    if doc.get("ssh_pwauth") is False:
        conf = root / "etc" / "ssh" / "sshd_config.d" / "50-cloud-init.conf"
        conf.parent.mkdir(parents=True, exist_ok=True)
        conf.write_text("PasswordAuthentication no\n")
    for f in doc.get("write_files", []):
        target = root / f["path"].lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(f["content"])
        target.chmod(int(f.get("permissions", "0644"), 8))


def first_boot_setup(names: EnvNames, spec: EnvSpec, node: Node, public_key: str, dns_server: str,
                     acme_server_ca: Path | None) -> None:
    """What a fresh cloud server has before anyone logs in (cloud-init + the cloud's network).

    Done once per machine, as cloud-init's first boot: a re-run of `up` must not change the
    identity (machine-id, host keys) of a machine the deploy already knows.
    """
    root = rootfs(names, node)
    done = names.machine_dir(node.name) / "first-boot.done"
    if done.exists():
        return
    apply_user_data(root, cloudinit.render_user_data(spec, node, public_key))
    # Host keys per machine (cloud-init regenerates them on first boot); trusted by the host.
    if not (root / "etc" / "ssh" / "ssh_host_ed25519_key").exists():
        host.run(["ssh-keygen", "-A", "-f", str(root)], what=f"generate SSH host keys for {node.name}")
    (root / "etc" / "machine-id").write_text(uuid.uuid4().hex + "\n")
    # The cloud's resolver and package mirror (through the host's proxy).
    resolv = root / "etc" / "resolv.conf"
    if resolv.is_symlink() or resolv.exists():
        resolv.unlink()
    resolv.write_text(f"nameserver {dns_server}\n")
    (root / "etc" / "apt" / "apt.conf.d" / "01voicestack-proxy").write_text(aptproxy.apt_proxy_conf(names))
    if acme_server_ca is not None:
        # Activated by update-ca-certificates in trust_acme_root(), right after the first boot.
        dest = root / "usr" / "local" / "share" / "ca-certificates" / ACME_SERVER_CA_NAME
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(acme_server_ca, dest)
    done.write_text("")


def write_known_hosts(names: EnvNames, spec: EnvSpec) -> Path:
    lines = []
    for node in spec.nodes:
        ip = names.node_public_ip(node.index)
        for pub in sorted((rootfs(names, node) / "etc" / "ssh").glob("ssh_host_*_key.pub")):
            kind, key = pub.read_text().split()[:2]
            lines.append(f"{ip} {kind} {key}\n")
            if node.private_ip:
                lines.append(f"{node.private_ip} {kind} {key}\n")
    names.known_hosts.write_text("".join(lines))
    return names.known_hosts


# ---- boot ------------------------------------------------------------------------------------
# A machine's host process is infra/local/supervisor.py, which runs systemd-nspawn (again after a
# reboot inside). The supervisor's pid is in the pid file; both command lines name the rootfs.

SUPERVISOR = Path(__file__).resolve().with_name("supervisor.py")


def _pidfile_name(node: Node) -> str:
    return f"machine-{node.name}"


def _is_supervisor(pid: int) -> bool:
    return "infra/local/supervisor.py" in host.cmdline(pid)  # any checkout's copy


def _machine_pids(names: EnvNames, node_names: list[str] | None = None) -> list[int]:
    """Supervisors and nspawn processes of the env's machines (all, or those of `node_names`)."""
    pids = [p for p in host.pids_matching(f"{names.state_dir}/") if "systemd-nspawn" in host.cmdline(p)]
    if node_names is not None:
        pids = [p for p in pids if any(f"{names.machine_dir(n)}/rootfs " in host.cmdline(p) for n in node_names)]
    return pids


def running_pid(names: EnvNames, node: Node) -> int | None:
    """The machine's host process: its supervisor, else (started by an older version) its nspawn."""
    pid = host.running(_pidfile_name(node), names.run_dir)
    if pid and str(rootfs(names, node)) in host.cmdline(pid):
        return pid
    found = _machine_pids(names, [node.name])
    found.sort(key=lambda p: not _is_supervisor(p))
    return found[0] if found else None


def nspawn_command(names: EnvNames, node: Node) -> list[str]:
    ns = names.node_netns(node.name)
    return ["systemd-nspawn", "-b", "-D", str(rootfs(names, node)), "-M", f"vs-{names.env}-{node.name}",
            f"--hostname={node.name}", "--register=no", "--keep-unit", f"--network-namespace-path=/run/netns/{ns}",
            "--resolv-conf=off", "--timezone=off", "--link-journal=no", "--console=read-only",
            "--capability=CAP_NET_ADMIN,CAP_NET_RAW,CAP_SYS_NICE"]


def boot(names: EnvNames, node: Node) -> int:
    """Start the machine (its supervisor, which runs nspawn); returns the supervisor's pid."""
    log = names.machine_dir(node.name) / "console.log"
    cgroups = [a for d in cgroup_dirs(names, node) for a in ("--cgroup", str(d))]
    cmd = [sys.executable, "-I", str(SUPERVISOR), *cgroups, "--", *nspawn_command(names, node)]
    return host.start_daemon(_pidfile_name(node), cmd, names.run_dir, log)


# ---- cgroups ---------------------------------------------------------------------------------
# nspawn puts a machine below the cgroup it starts in. Started from the same place, every machine
# on the host shared one cgroup tree: each machine's systemd saw the others' processes (as pid 0)
# in its units' cgroups and could no longer kill what a dead main process left behind (nginx
# workers holding 443 after `kill -9` of the master never went away). So each machine's nspawn
# starts in a cgroup of its own, in the name=systemd hierarchy (v1) and the unified one (v2).

CGROUP_V2_MOUNT = RUN / ".host" / "cgroup2"   # where the unified hierarchy is mounted when the host has no mount


def cgroup_mounts(mountinfo: str | None = None) -> tuple[Path | None, Path | None]:
    """(name=systemd v1 hierarchy, unified v2 hierarchy) mount points of this host, None when absent;
    `mountinfo`: the text of /proc/self/mountinfo (read when None)."""
    if mountinfo is None:
        with open("/proc/self/mountinfo") as fh:
            mountinfo = fh.read()
    v1 = v2 = None
    for line in mountinfo.splitlines():
        left, _, right = line.partition(" - ")
        fstype, _source, options = (right.split() + ["", "", ""])[:3]
        point = Path(left.split()[4])
        if fstype == "cgroup2" and v2 is None:
            v2 = point
        elif fstype == "cgroup" and "name=systemd" in options.split(",") and v1 is None:
            v1 = point
    return v1, v2


def _cgroup_roots(mount: bool) -> list[Path]:
    v1, v2 = cgroup_mounts()
    if v2 is None and mount:
        CGROUP_V2_MOUNT.mkdir(parents=True, exist_ok=True, mode=0o700)
        host.run(["mount", "-t", "cgroup2", "cgroup2", str(CGROUP_V2_MOUNT)], what="mount the unified cgroup hierarchy")
        v2 = CGROUP_V2_MOUNT
    return [r / "voicestack" for r in (v1, v2) if r is not None]


def cgroup_dirs(names: EnvNames, node: Node) -> list[Path]:
    """The cgroups the machine's nspawn starts in (the supervisor creates them)."""
    return [root / names.env / node.name for root in _cgroup_roots(mount=True)]


def remove_cgroups(names: EnvNames, node_names: list[str] | None = None) -> list[str]:
    """Remove the env's (or these machines') cgroup directories once their processes are gone."""
    removed = []
    for root in _cgroup_roots(mount=False):
        tops = [root / names.env / n for n in node_names] if node_names is not None else [root / names.env]
        for top in tops:
            if not top.is_dir():
                continue
            for d in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
                with contextlib.suppress(OSError):
                    d.rmdir()  # cgroups are removed with rmdir, leaves first; a busy one stays
            with contextlib.suppress(OSError):
                top.rmdir()
                removed.append(f"cgroup {top}")
    return removed


def container_init_pid(root: Path) -> int | None:
    """Host pid of the PID 1 of the container whose root is `root` (None when it is not running).

    Found by its namespace pid (1 in its own PID namespace) and its root directory (the same
    device and inode as the rootfs mount; readlink of /proc/<pid>/root says only "/" for a process
    in another mount namespace), so it is found even when its nspawn is gone: a killed nspawn
    leaves the container running (research G)."""
    try:
        want = os.stat(root)
    except OSError:
        return None
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
            nspid = next((line.split()[1:] for line in status.splitlines() if line.startswith("NSpid:")), [])
            if len(nspid) > 1 and nspid[-1] == "1":
                got = os.stat(entry / "root")
                if (got.st_dev, got.st_ino) == (want.st_dev, want.st_ino):
                    return int(entry.name)
        except OSError:
            continue
    return None


def ssh_ready(names: EnvNames, ip: str) -> bool:
    if not host.port_open_tcp(ip, 22, timeout=0.5):
        return False
    return host.run(ssh_command(names, ip, "true", timeout=2), check=False, timeout=10).returncode == 0


def wait_ssh(names: EnvNames, node: Node, pid: int | None = None, deadline_s: float = BOOT_DEADLINE_S,
             started: float | None = None) -> float:
    """Seconds from `started` (time.monotonic() when nspawn was started; default: now) to SSH."""
    ip = names.node_public_ip(node.index)
    started = time.monotonic() if started is None else started
    log = names.machine_dir(node.name) / "console.log"

    def probe() -> bool:
        if pid is not None and not host.pid_alive(pid):
            tail = log.read_text(errors="replace")[-1500:] if log.exists() else ""
            raise host.LocalEnvError(f"machine {node.name} stopped while booting; console log {log}:\n{tail}")
        return ssh_ready(names, ip)

    host.wait_until(f"SSH on {node.name} ({ip}); console log: {log}", probe, deadline_s, interval=0.2)
    return time.monotonic() - started


def trust_acme_root(names: EnvNames, node: Node, root_pem: Path) -> bool:
    """Put pebble's issuing root in the machine's trust store, as public CAs are on a cloud image.

    pebble makes a new root at each start, so this runs on every `up`; True when it changed.
    """
    dest = f"/usr/local/share/ca-certificates/{ACME_ROOT_NAME}"
    script = (f"cat > {dest}.new && if cmp -s {dest}.new {dest}; then rm {dest}.new; echo same; "
              f"else mv {dest}.new {dest} && update-ca-certificates >/dev/null && echo changed; fi")
    res = host.run(ssh_command(names, names.node_public_ip(node.index), script), input=root_pem.read_text(),
                   timeout=60, what=f"install the ACME root on {node.name}")
    return res.stdout.strip() == "changed"


def stale_nodes(names: EnvNames, spec: EnvSpec) -> list[str]:
    """Machines of the env that the spec no longer has (after `up --nodes` with fewer nodes)."""
    wanted = {n.name for n in spec.nodes}
    if not names.state_dir.exists():
        return []
    return sorted(d.name for d in names.state_dir.iterdir()
                  if (d / "upper").exists() and d.name not in wanted)


def remove(names: EnvNames, node_name: str) -> None:
    stop(names, [node_name])
    unmount_rootfs(names, node_name)
    shutil.rmtree(names.machine_dir(node_name), ignore_errors=True)


def running_machines(names: EnvNames) -> list[str]:
    """Names of the env's machines whose supervisor or nspawn runs (found by their root's path)."""
    found = []
    for pid in _machine_pids(names):
        line = host.cmdline(pid)
        if "/rootfs " in line:
            found.append(line.split("/rootfs ")[0].rsplit("/", 1)[-1])
    return sorted(set(found))


def stop(names: EnvNames, node_names: list[str] | None = None, grace_s: float = 15) -> list[str]:
    """Shut the env's machines down cleanly (all of them when node_names is None).

    SIGTERM goes to each supervisor, which passes it on to its nspawn once (nspawn then shuts the
    machine down); an nspawn without a supervisor (an older `up`) gets it directly. What is left
    after `grace_s` is killed, down to the PID 1 of a container whose nspawn is gone."""
    pids = _machine_pids(names, node_names)
    supervisors = [p for p in pids if _is_supervisor(p)]
    supervised = {c for p in supervisors for c in host.children(p)}
    direct = supervisors + [p for p in pids if p not in supervisors and p not in supervised]
    for pid in direct:
        host.signal_pid(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(host.pid_alive(p) for p in pids):
        time.sleep(0.1)  # poll interval of the shutdown deadline
    host.stop_pids([p for p in pids if host.pid_alive(p)], sig=signal.SIGKILL, grace_s=0)
    for name in node_names if node_names is not None else _node_dirs(names):
        init = container_init_pid(names.machine_dir(name) / "rootfs")
        if init is not None:
            host.stop_pids([init], sig=signal.SIGKILL, grace_s=0)
    return [f"machine pid {p}" for p in direct] + remove_cgroups(names, node_names)


def _node_dirs(names: EnvNames) -> list[str]:
    if not names.state_dir.exists():
        return []
    return sorted(d.name for d in names.state_dir.iterdir() if (d / "rootfs").is_dir())


# ---- power ------------------------------------------------------------------------------------

def power_off(names: EnvNames, node: Node, deadline_s: float = 30) -> bool:
    """Pull the plug: SIGKILL the machine's PID 1 (no shutdown inside, research G); nspawn then ends
    with a failure status and the supervisor does not start it again. False when it was off."""
    init = container_init_pid(rootfs(names, node))
    host_pid = running_pid(names, node)
    if init is None and host_pid is None:
        return False
    if init is not None:
        os.kill(init, signal.SIGKILL)
    try:
        host.wait_until(f"the host process of {node.name} to end after its power was cut",
                        lambda: running_pid(names, node) is None, deadline_s, interval=0.1)
    except host.LocalEnvError:
        # nspawn still setting up (no PID 1 yet) or stuck: a power cut stops it all the same.
        host.stop_pids(_machine_pids(names, [node.name]), sig=signal.SIGKILL, grace_s=0)
    return True


def power_on(names: EnvNames, node: Node, deadline_s: float = BOOT_DEADLINE_S) -> float | None:
    """Boot the machine when it is off; seconds to SSH (None when it was already on)."""
    if running_pid(names, node) is not None:
        return None
    started = time.monotonic()
    pid = boot(names, node)
    return wait_ssh(names, node, pid, deadline_s=deadline_s, started=started)
