"""What a local environment changes on the host, and how the last `down` gives it back (hostsettings)."""
from __future__ import annotations

import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from infra.local import hostsettings
from infra.local.names import EnvNames
from tests.conftest import require


@pytest.fixture
def host_dirs(tmp_path: Path) -> tuple[Path, Path]:
    """(a stand-in for /run/voicestack, a stand-in for /proc/sys with ip_forward = 0)."""
    run, proc_sys = tmp_path / "run", tmp_path / "proc_sys"
    (proc_sys / "net" / "ipv4").mkdir(parents=True)
    (proc_sys / "net" / "ipv4" / "ip_forward").write_text("0\n")
    run.mkdir()
    return run, proc_sys


def forward(proc_sys: Path) -> str:
    return (proc_sys / "net" / "ipv4" / "ip_forward").read_text().strip()


def test_the_last_down_restores_forwarding_as_it_was_before_the_first_up(host_dirs) -> None:
    run, proc_sys = host_dirs
    a, b = EnvNames("enva"), EnvNames("envb")
    hostsettings.enable_forwarding(a, run, proc_sys)
    hostsettings.enable_forwarding(b, run, proc_sys)
    assert forward(proc_sys) == "1"
    # `down` of a: b still routes through the host.
    shutil.rmtree(run / "enva")
    assert hostsettings.restore_forwarding(a, run, proc_sys) is None and forward(proc_sys) == "1"
    shutil.rmtree(run / "envb")
    assert "= 0" in hostsettings.restore_forwarding(b, run, proc_sys)
    assert forward(proc_sys) == "0"
    # A repeated down changes nothing more.
    assert hostsettings.restore_forwarding(b, run, proc_sys) is None


def test_forwarding_that_was_on_before_stays_on(host_dirs) -> None:
    run, proc_sys = host_dirs
    (proc_sys / "net" / "ipv4" / "ip_forward").write_text("1\n")
    env = EnvNames("enva")
    hostsettings.enable_forwarding(env, run, proc_sys)
    shutil.rmtree(run / "enva")
    hostsettings.restore_forwarding(env, run, proc_sys)
    assert forward(proc_sys) == "1"


def test_an_env_from_before_the_record_means_the_original_value_is_unknown(host_dirs) -> None:
    run, proc_sys = host_dirs
    (run / "older").mkdir()  # up by a version that did not record; it turned forwarding on
    (proc_sys / "net" / "ipv4" / "ip_forward").write_text("1\n")
    env = EnvNames("enva")
    hostsettings.enable_forwarding(env, run, proc_sys)
    shutil.rmtree(run / "older")
    shutil.rmtree(run / "enva")
    assert hostsettings.restore_forwarding(env, run, proc_sys) is None and forward(proc_sys) == "1"


def test_other_envs_are_run_directories_with_env_names(tmp_path: Path) -> None:
    for d in ("local", "e2echaos", ".host", "Not_An_Env"):
        (tmp_path / d).mkdir()
    (tmp_path / "stray-file").write_text("")
    assert hostsettings.other_envs(EnvNames("local"), tmp_path) == ["e2echaos"]


def test_private_dirs_narrow_existing_modes_to_root_only(tmp_path: Path) -> None:
    wide = tmp_path / "state"
    wide.mkdir(mode=0o755)
    wide.chmod(0o755)
    hostsettings.private_dirs(wide, tmp_path / "run" / "env")
    for d in (wide, tmp_path / "run" / "env"):
        assert stat.S_IMODE(d.stat().st_mode) == 0o700, d


def test_packaged_daemons_are_disabled_and_a_rerun_changes_nothing(tmp_path: Path) -> None:
    """systemctl --root on a scratch root: the same calls `up` makes on the host."""
    require("systemctl")
    units = tmp_path / "lib" / "systemd" / "system"
    units.mkdir(parents=True)
    for name in ("coturn.service", "apt-cacher-ng.service"):
        (units / name).write_text("[Unit]\nDescription=x\n[Service]\nExecStart=/bin/true\n"
                                  "[Install]\nWantedBy=multi-user.target\n")
    subprocess.run(["systemctl", f"--root={tmp_path}", "enable", "coturn.service", "apt-cacher-ng.service"],
                   check=True, capture_output=True)

    def state(unit: str) -> str:
        return subprocess.run(["systemctl", f"--root={tmp_path}", "is-enabled", unit], capture_output=True,
                              text=True).stdout.strip()

    assert state("coturn.service") == "enabled"
    assert hostsettings.disable_packaged_daemons(root=tmp_path) == ["coturn.service", "apt-cacher-ng.service"]
    assert {state("coturn.service"), state("apt-cacher-ng.service")} == {"disabled"}
    assert hostsettings.disable_packaged_daemons(root=tmp_path) == []
    # A masked unit is left masked, and a unit that is not installed is no error.
    subprocess.run(["systemctl", f"--root={tmp_path}", "mask", "coturn.service"], check=True, capture_output=True)
    assert hostsettings.disable_packaged_daemons(("coturn.service", "absent.service"), root=tmp_path) == []
    assert state("coturn.service") == "masked"
