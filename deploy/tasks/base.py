"""Host baseline: key-only SSH, automatic security updates, fail2ban, time sync, journald, sysctl."""
from __future__ import annotations

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.operations import server, systemd

from deploy.inventory import NodeVars
from deploy.tasks._facts import IsContainer
from deploy.tasks._lifecycle import WAIT_ADDRESS
from deploy.tasks._ops import allow_daemon_starts, apt_update, install_packages, put_rendered, service_current

PACKAGES = ["openssh-server", "unattended-upgrades", "apt-listchanges", "fail2ban", "python3-systemd",
            "nftables", "systemd-timesyncd", "curl", "ca-certificates"]
SSHD_DROPIN = "/etc/ssh/sshd_config.d/10-voicestack.conf"
SYSCTL_FILE = "/etc/sysctl.d/60-voicestack.conf"
APT_PROXY = "/etc/apt/apt.conf.d/01voicestack-proxy"
AUTO_UPGRADES = "/etc/apt/apt.conf.d/20auto-upgrades"
JAIL = "/etc/fail2ban/jail.d/voicestack.conf"
JOURNALD_DROPIN = "/etc/systemd/journald.conf.d/voicestack.conf"

# LiveKit wants large UDP socket buffers (it logs "UDP receive buffer is too small" below ~5 MB);
# values from LiveKit's performance-tuning guide.
SYSCTLS = {
    "net.core.rmem_max": 25165824,
    "net.core.wmem_max": 25165824,
    "net.core.rmem_default": 1048576,
    "net.core.wmem_default": 1048576,
    "net.core.netdev_max_backlog": 65535,
    "net.core.somaxconn": 65535,
    "net.ipv4.tcp_syncookies": 1,
    "net.ipv4.conf.all.accept_redirects": 0,
    "net.ipv4.conf.all.send_redirects": 0,
    "net.ipv4.conf.all.accept_source_route": 0,
    "net.ipv4.conf.all.log_martians": 1,
    "net.ipv4.icmp_echo_ignore_broadcasts": 1,
    "fs.protected_hardlinks": 1,
    "fs.protected_symlinks": 1,
    "kernel.kptr_restrict": 2,
}

JOURNALD = {"Storage": "persistent", "Compress": "yes", "SystemMaxUse": "500M", "MaxRetentionSec": "1month"}


def base_vars(vs: NodeVars) -> dict:
    """Template variables of the baseline (pure: used by the task and the unit tests)."""
    return {
        "ssh_port": vs.spec.port("ssh").start,
        "admin_cidrs": vs.cfg.admin_cidrs,
        "sysctls": SYSCTLS,
        "journald": JOURNALD,
        "apt_proxy": vs.apt_proxy,
    }


@deploy("Host baseline")
def base():
    vs: NodeVars = host.data.vs
    v = base_vars(vs)
    in_container = host.get_fact(IsContainer)
    allow_daemon_starts()

    if vs.apt_proxy:
        put_rendered(name=f"Render {APT_PROXY}", service="base", template="apt-proxy.conf.j2", dest=APT_PROXY,
                     mode="644", variables=v)
    apt_update(name="Refresh the apt index (at most hourly)", cache_time=3600)
    install_packages(PACKAGES, name="Install baseline packages")
    # Units that bind a non-loopback address wait for it with this (deploy/tasks/_lifecycle.py).
    put_rendered(name=f"Install {WAIT_ADDRESS}", service="base", template="wait-address.sh.j2", dest=WAIT_ADDRESS,
                 mode="755", variables=v)

    # --- SSH: keys only -----------------------------------------------------------------
    put_rendered(name=f"Render {SSHD_DROPIN}", service="base", template="sshd.conf.j2", dest=SSHD_DROPIN,
                 mode="600", variables=v)
    service_current(name="Restart sshd if its config changed (after sshd -t)", service="ssh.service",
                    paths=(SSHD_DROPIN, "/etc/ssh/sshd_config"), check="sshd -t")

    # --- updates --------------------------------------------------------------------------
    put_rendered(name=f"Render {AUTO_UPGRADES}", service="base", template="20auto-upgrades.j2", dest=AUTO_UPGRADES,
                 mode="644", variables=v)
    for timer in ("apt-daily.timer", "apt-daily-upgrade.timer"):
        systemd.service(name=f"Enable {timer}", service=timer, running=True, enabled=True)
    systemd.service(name="Enable unattended-upgrades", service="unattended-upgrades.service", enabled=True,
                    running=True)

    # --- fail2ban -------------------------------------------------------------------------
    put_rendered(name=f"Render {JAIL}", service="base", template="fail2ban-jail.conf.j2", dest=JAIL, mode="644",
                 variables=v)
    service_current(name="Restart fail2ban if its jail changed", service="fail2ban.service", paths=(JAIL,),
                    check="fail2ban-client -t")
    systemd.service(name="Enable fail2ban", service="fail2ban.service", enabled=True)

    # --- time -----------------------------------------------------------------------------
    # In a container the clock is the host's; timesyncd skips itself there (ConditionVirtualization).
    systemd.service(name="Enable systemd-timesyncd", service="systemd-timesyncd.service", enabled=True,
                    running=None if in_container else True)

    # --- journald -------------------------------------------------------------------------
    put_rendered(name=f"Render {JOURNALD_DROPIN}", service="base", template="journald.conf.j2",
                 dest=JOURNALD_DROPIN, mode="644", variables=v)
    service_current(name="Restart journald if its limits changed", service="systemd-journald.service",
                    paths=(JOURNALD_DROPIN,))

    # --- sysctl ---------------------------------------------------------------------------
    sysctl = put_rendered(name=f"Render {SYSCTL_FILE}", service="base", template="sysctl.conf.j2",
                          dest=SYSCTL_FILE, mode="644", variables=v)
    # In a container most of net.core is the host kernel's: -e skips keys this namespace lacks.
    server.shell(name="Apply kernel settings", commands=[f"sysctl -e -q -p {SYSCTL_FILE} || "
                                                         f"echo 'some keys are read-only here (container?)'"],
                 _if=sysctl.did_change)
