"""The one-SSH no-op check: it covers every path the deploy writes, and its digests react to changes."""
from __future__ import annotations

import ast
import dataclasses
import subprocess
from pathlib import Path

import pytest

from deploy import fastpath
from tests.unit.support import outputs_for, spec_of

TASKS = Path(fastpath.ROOT) / "deploy" / "tasks"
#: Absolute paths in the tasks that are not managed state (downloads, transient guards, the venv's
#: packages, which the requirements stamp stands for, the agent's cache and home).
NOT_STATE = ("/usr/sbin/policy-rc.d", "/var/cache/", "/opt/voicestack/livekit-", "/opt/voicestack/agent/venv",
             "/var/lib/voicestack", "/opt/voicestack", "/usr/sbin/nologin", "/var/lib/livekit",
             "/usr/local/share/ca-certificates", "/var/lib/caddy/.local/share/caddy",
             "/etc/ssh/sshd_config",  # read (a restart input), not written
             "/var/lib/redis",  # Redis' own working directory
             "/var/lib/apt/periodic/")  # when apt last refreshed its index: a clock, not a state
ROOTS = ("/etc/", "/usr/", "/opt/", "/srv/", "/var/")


def _paths_in_tasks() -> set[str]:
    found = set()
    for path in TASKS.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith(ROOTS) \
                    and " " not in node.value:
                found.add(node.value)
            elif isinstance(node, ast.JoinedStr):
                head = node.values[0] if node.values else None
                if isinstance(head, ast.Constant) and str(head.value).startswith(ROOTS):
                    found.add(str(head.value))
    return found


def test_every_path_the_tasks_write_is_in_the_managed_state() -> None:
    paths = _paths_in_tasks()
    assert len(paths) > 20
    missing = [p for p in sorted(paths) if not any(p == m or p.startswith(m.rstrip("/") + "/") or
                                                   m.startswith(p.rstrip("/") + "/") for m in fastpath.MANAGED_PATHS)
               and not p.startswith(NOT_STATE) and not p.endswith(".staged")]
    assert not missing, f"add these to deploy/fastpath.py MANAGED_PATHS (or NOT_STATE here): {missing}"


def test_desired_digest_follows_the_outputs_and_the_code(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = outputs_for(spec_of(env="unit"))
    first = fastpath.desired_digest(out, "node-1")
    assert fastpath.desired_digest(out, "node-1") == first
    assert fastpath.desired_digest(dataclasses.replace(out, api_secret="other" * 8), "node-1") != first
    moved = outputs_for(spec_of(env="unit", livekitTcpPort=17881))
    assert fastpath.desired_digest(moved, "node-1") != first
    # A change in the deploy code is a change too.
    root = tmp_path / "repo"
    (root / "deploy").mkdir(parents=True)
    (root / "deploy" / "task.py").write_text("x = 1\n")
    monkeypatch.setattr(fastpath, "ROOT", root)
    monkeypatch.setattr(fastpath, "INPUT_TREES", ("deploy",))
    before = fastpath.desired_digest(out, "node-1")
    (root / "deploy" / "task.py").write_text("x = 2\n")
    assert fastpath.desired_digest(out, "node-1") != before


def test_units_follow_the_roles() -> None:
    one = outputs_for(spec_of(env="unit"))
    assert {"livekit", "caddy", "nginx", "coturn", "voicestack-agent"} <= set(fastpath.units_for(one, "node-1"))
    assert "redis-server" not in fastpath.units_for(one, "node-1")
    no_sni = outputs_for(spec_of(env="unit", turnTlsPort=5349))
    assert "nginx" not in fastpath.units_for(no_sni, "node-1")


def test_the_state_script_sees_content_mode_and_links(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run the node-side script on this machine against a scratch tree: every kind of drift changes it."""
    managed = tmp_path / "etc-livekit"
    managed.mkdir()
    (managed / "livekit.yaml").write_text("port: 7880\n")
    monkeypatch.setattr(fastpath, "MANAGED_PATHS", (str(managed),))
    monkeypatch.setattr(fastpath, "PACKAGES", ("bash",))

    def digest() -> str:
        cmd = f"( {fastpath.state_script(['no-such-unit-here'])} ) | sha256sum"
        return subprocess.run(["sh", "-c", cmd], capture_output=True, text=True, check=True).stdout.split()[0]

    base = digest()
    assert digest() == base
    (managed / "livekit.yaml").write_text("port: 7881\n")
    changed = digest()
    assert changed != base
    (managed / "livekit.yaml").chmod(0o600)
    assert digest() != changed
    mode = digest()
    (managed / "link").symlink_to("/etc/hostname")
    assert digest() != mode


def test_the_probe_prints_the_record_then_the_digest() -> None:
    cmd = fastpath.probe_command(["ssh"])
    assert cmd.startswith(f"cat {fastpath.STATE_FILE} 2>/dev/null || echo '{{}}'; echo; ")
    assert cmd.endswith("| sha256sum | cut -d' ' -f1")
    rec = fastpath.record_command(["ssh"], "ab" * 32)
    assert "umask 077" in rec and f"> {fastpath.STATE_FILE}.new && mv -f" in rec
