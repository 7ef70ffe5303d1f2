"""web/build.py: one output directory per set of inputs, integrity-pinned packages, no-op re-runs."""
from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("web_build", REPO / "web" / "build.py")
assert spec and spec.loader
build = importlib.util.module_from_spec(spec)
spec.loader.exec_module(build)


@pytest.fixture
def web(tmp_path: Path) -> Path:
    """A copy of web/ without node_modules."""
    dst = tmp_path / "web"
    shutil.copytree(REPO / "web", dst, ignore=shutil.ignore_patterns("node_modules", "dist"))
    return dst


def test_web_build_inputs_hash_follows_every_input(web: Path) -> None:
    first = build.inputs_hash(web)
    assert build.inputs_hash(web) == first
    (web / "src" / "app.css").write_text((web / "src" / "app.css").read_text() + "\n/* changed */\n")
    assert build.inputs_hash(web) != first


def test_web_build_lockfile_pins_every_package_by_sha512() -> None:
    versions = build.check_lockfile(REPO / "web")
    assert versions == {"livekit-client": "2.23.0", "esbuild": "0.28.2"}
    lock = json.loads((REPO / "web" / "package-lock.json").read_text())
    # No registry address is recorded: packages come through the host's own npm configuration.
    assert not any("resolved" in meta for meta in lock["packages"].values())


@pytest.mark.parametrize("change,needle", [
    (lambda lock: lock["packages"]["node_modules/livekit-client"].pop("integrity"), "without a sha512 integrity"),
    (lambda lock: lock["packages"]["node_modules/livekit-client"].update(version="2.22.0"), "lockfile has"),
], ids=["missing-integrity", "version-drift"])
def test_web_build_refuses_an_unpinned_lockfile(web: Path, change, needle: str) -> None:
    path = web / "package-lock.json"
    lock = json.loads(path.read_text())
    change(lock)
    path.write_text(json.dumps(lock))
    with pytest.raises(build.BuildError, match=needle):
        build.check_lockfile(web)


def test_web_build_rerun_with_same_inputs_is_a_noop(web: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    out_root = tmp_path / "cache"
    done = out_root / build.inputs_hash(web)[:16]
    done.mkdir(parents=True)
    (done / build.MANIFEST).write_text("{}")
    monkeypatch.setenv("PATH", "/nonexistent")   # any npm/esbuild call would now fail
    assert build.build(out_root, web) == done
    assert "already built" in capsys.readouterr().err


def test_web_build_without_npm_says_what_to_install(web: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(build.BuildError, match="install Node.js"):
        build.build(tmp_path / "cache", web)
    assert [p.name for p in (tmp_path / "cache").iterdir()] == []   # no half-built output left behind
