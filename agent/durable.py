"""Replacing a file so that a crash leaves the old one or the new one, never a torn or empty one.

The data is fsynced before the rename and the directory after it (the rename is only durable
once the directory entry is on disk). Standard library only: the nodes' services use it, and
so does the operator side (infra/files.py), which may import agent/ but never the other way.
"""
from __future__ import annotations

import os
from pathlib import Path


def replace_file(path: Path, data: bytes, *, mode: int = 0o600, tmp: Path | None = None) -> None:
    """Atomically replace `path` with `data`, created with `mode` (less the umask).

    tmp: the temporary file, in the same directory (default `.<name>.tmp-<pid>`); it is removed
    when a step fails, and the OSError is raised.
    """
    tmp = tmp or path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with open(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def fsync_dir(path: Path) -> None:
    """Flush the directory `path` itself (its entries: a rename, a new or a deleted file)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
