"""The load generator binary and its speech loop, built on demand into a content-keyed cache.

    binary = loadgen_binary()   # /var/cache/voicestack/loadgen/<hash>/loadgen
    loop = speech_loop()        # /var/cache/voicestack/loadgen/audio-<hash>.ogg

Nothing built is committed: the key is the sha256 of go.mod, go.sum and the Go sources (or of
the audio script and the TTS module), so an edit rebuilds and a re-run reuses. Modules come
from the Go module proxy the host's Go is configured with (`go env GOPROXY`), pinned and
checked by go.sum (-mod=readonly).
"""
from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "bench" / "loadgen"
CACHE = Path(os.environ.get("VOICESTACK_LOADGEN_CACHE", "/var/cache/voicestack/loadgen"))
AGENT_PY = ROOT / ".venv-agent" / "bin" / "python"


class BuildError(Exception):
    pass


def _go() -> str:
    found = os.environ.get("GO") or shutil.which("go") or "/usr/local/go/bin/go"
    if not Path(found).exists():
        raise BuildError(f"no Go toolchain at {found}: install Go 1.26 (or set GO=/path/to/go)")
    return found


def _digest(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for p in sorted(paths):
        h.update(p.relative_to(ROOT).as_posix().encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()[:16]


@contextmanager
def _locked() -> Iterator[None]:
    """One build at a time on this machine (two bench runs would race on the same output)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def loadgen_binary(progress: Callable[[str], None] = print) -> Path:
    sources = [SRC / "go.mod", SRC / "go.sum", *sorted(p for p in SRC.glob("*.go") if not p.name.endswith("_test.go"))]
    out = CACHE / _digest(sources) / "loadgen"
    if out.exists():
        return out
    with _locked():
        if out.exists():
            return out
        progress(f"building the load generator into {out} (first build downloads the modules: a few minutes)")
        env = dict(os.environ, GOMODCACHE=str(CACHE / "gomod"), GOCACHE=str(CACHE / "gocache"),
                   GOFLAGS="-mod=readonly -buildvcs=false", CGO_ENABLED="0")
        tmp = out.with_suffix(".tmp")
        tmp.parent.mkdir(parents=True, exist_ok=True)
        argv = [_go(), "build", "-trimpath", "-o", str(tmp), "."]
        proc = subprocess.run(argv, cwd=SRC, env=env, capture_output=True, text=True, timeout=1800)
        if proc.returncode != 0:
            raise BuildError(f"failed to build the load generator: (cd {SRC} && {' '.join(argv)}) exited "
                             f"{proc.returncode}:\n{proc.stderr[-3000:]}")
        os.replace(tmp, out)
    return out


def speech_loop(progress: Callable[[str], None] = print) -> Path:
    script = SRC / "make_audio.py"
    out = CACHE / f"audio-{_digest([script, ROOT / 'agent' / 'speech' / 'tts.py'])}.ogg"
    if out.exists():
        return out
    with _locked():
        if out.exists():
            return out
        if not AGENT_PY.exists():
            raise BuildError(f"{AGENT_PY} is missing: the speech loop is synthesised with the agent venv's "
                             "piper (make venv)")
        progress(f"synthesising the speech loop into {out}")
        proc = subprocess.run([str(AGENT_PY), str(script), str(out)], cwd=ROOT, capture_output=True,
                              text=True, timeout=600)
        if proc.returncode != 0:
            raise BuildError(f"failed to make the speech loop: {AGENT_PY} {script} {out} exited "
                             f"{proc.returncode}:\n{proc.stderr[-3000:]}")
    return out


if __name__ == "__main__":
    print(loadgen_binary())
    print(speech_loop())
    sys.exit(0)
